"""The pair entry of the registry: the loss along the straight line from a partner checkpoint (a = 0) to the measured
one (a = 1), and the barrier on it (landscape.interpolate).

Partner: the checkpoint named by the settings' `partner` hash where the caller set one (`flatlens interpolate A B`:
A), else the full-precision checkpoint of the call that records the same seed and shared prefix (`pairing`; a
reproduce seed's full-precision model for each of its QAT models), else the call's first checkpoint (compare's
reference). Its hash enters the measured checkpoint's settings, so the cache tells pairs apart."""
from __future__ import annotations

from dataclasses import dataclass

from .._util import FlatlensError
from .registry import Metric, Row, RowSpec, register_metric, setting


@dataclass
class InterpolateSettings:
    range: tuple = setting((-0.5, 1.5), "span of a along (1 - a) w_A + a w_B (LO <= 0, HI >= 1; the barrier is read on "
                           "[0, 1])", "--interp-range", nargs=2, increasing=True)
    points: int = setting(11, "grid points on [0, 1]; their spacing 1/(N-1) continues over the range",
                          "--interp-points", min=3, max=1001)
    bn_stats: str = setting("recompute", "BatchNorm statistics at each point: recompute (on --bn-batches batches of "
                            "the training split) or interpolate (with the weights: the naive rule)", "--bn-stats",
                            choices=("recompute", "interpolate"))
    bn_batches: int = setting(4, "training-split batches (of the evaluation batch size) on which each point's "
                              "BatchNorm statistics are recomputed", "--bn-batches", min=1, max=10_000)
    partner: str = setting("", "sha256 of the checkpoint at a = 0 (set by the pipeline or the interpolate command)")

    def check(self) -> None:
        lo, hi = self.range
        if lo > 0 or hi < 1:
            raise FlatlensError(f"--interp-range must span [0, 1] (LO <= 0, HI >= 1); got {lo:g} {hi:g}")


def partner_of(ckpt, ckpts: list, preset: str = ""):
    """The checkpoint `ckpt` is measured against (module docstring)."""
    if preset:
        for c in ckpts:
            if c.sha256 == preset:
                return c
        raise FlatlensError(f"the partner checkpoint {preset[:12]}... of {ckpt.path} is not among the "
                            "checkpoints measured together")
    p = ckpt.pairing
    if p is not None and p.prefix_sha256:
        for c in ckpts:
            if c.quant is None and c.pairing == p:
                return c
    return ckpts[0]


def _prepare(ckpts: list, settings: list) -> dict:
    """Every checkpoint's partner, checked to share its architecture (one line otherwise), its hash written into
    that checkpoint's own settings; with what the computation needs of the common settings."""
    out = {}
    for c, s in zip(ckpts, settings):
        own = s.of("interpolate")
        p = partner_of(c, ckpts, own.partner)
        if p.arch != c.arch:
            raise FlatlensError(f"{p.path} is a {p.arch.name} {p.arch.kwargs}, {c.path} a {c.arch.name} "
                                f"{c.arch.kwargs}: interpolation needs one architecture")
        own.partner = p.sha256
        out[c.sha256] = {"partner": p, "weights": s.common.weights, "batch_size": s.common.batch_size}
    return out


def _compute(obj, s: InterpolateSettings, ctx):
    from ..landscape.interpolate import endpoint_of_checkpoint, interpolate, path_grid
    from ..data import select_data
    info = (ctx.prepared or {}).get(ctx.ckpt.sha256) if ctx.ckpt else None
    if info is None:
        raise FlatlensError("interpolate measures a checkpoint against a partner: run it through the measurement "
                            "pipeline (pipeline.measure_all), or call landscape.interpolate")
    a = endpoint_of_checkpoint(info["partner"], info["weights"])
    b = endpoint_of_checkpoint(ctx.ckpt, info["weights"])
    bn_data, label = None, None
    meta = ctx.ckpt.data
    if s.bn_stats == "recompute" and meta is not None:  # the training split (a protocol-less import: the samples)
        n = s.bn_batches * info["batch_size"]
        x, y, sel = select_data(meta, "train", n, ctx.seed)
        bs = info["batch_size"]
        bn_data = [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(y), bs)]
        label = (f"the training split: {sel['n']} samples (seed {ctx.seed}, indices {sel['indices_sha256']}) in "
                 f"{len(bn_data)} batches")
    return interpolate(obj, a, b, path_grid(s.range[0], s.range[1], s.points), bn=s.bn_stats, bn_data=bn_data,
                       bn_label=label, seed=ctx.seed)


SOURCE = "measurement (simultaneous over the grid)"


def _rows(r, s) -> list[Row]:
    kind = "ci95" if r.barrier_ci95 is not None else None
    return [Row("barrier", r.barrier, interval=r.barrier_ci95, interval_kind=kind, n=r.n_samples, source=SOURCE),
            Row("peak", r.barrier_alpha, interval=r.barrier_alpha_range, interval_kind=kind, n=r.n_samples,
                source=SOURCE)]


register_metric(Metric(
    name="interpolate", summary="the loss barrier on the straight line from a partner checkpoint (linear mode "
                                "connectivity, BatchNorm recomputed at each point)",
    command="interpolate", role="exploratory", pair=True, settings=InterpolateSettings, compute=_compute, rows=_rows,
    specs=(RowSpec("barrier", "loss barrier from its partner, max_a L(a) - line", "nats", None),
           RowSpec("peak", "where the barrier peaks (a)", "", None)),
    brief=lambda r: (f"{len(r.alphas)} points, a = {r.alphas[0]:g}..{r.alphas[-1]:g}; BatchNorm: {r.bn['policy']}; "
                     f"{r.quantization.split(':')[0]}"),
    cost="about 4 s (21 points, BatchNorm recomputed on 4 x 256 training samples at each; measured on a shared "
         "machine)", prepare=_prepare,
    plans={"full": lambda: InterpolateSettings(range=(-0.25, 1.25), points=9, bn_batches=4),
           "quick": lambda: InterpolateSettings(range=(-0.25, 1.25), points=5, bn_batches=1)},
    figures=("fig13_loss_barriers",)))
