"""The metric registry: every measurement flatlens can take of a checkpoint, in one place.

A `Metric` entry says what the metric is called, its settings (a dataclass: defaults, valid ranges, the CLI
flag of each), how it is computed from an `Objective`, its typed result, its summary rows (stable keys,
display labels, units, and whether lower is flatter), its role in `flatlens reproduce` (measured on every
seed, on one seed, or not at all) and what its defaults cost. The CLI's choices and flags, `measure`,
`compare`, `reproduce`, the report and the figures all read `REGISTRY`; adding a metric is one entry here
plus its estimator. Consumers find rows by key, never by label.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from . import stats
from ._util import FlatlensError, check_number
from .hessian.results import DensityResult, DiagonalResult, EigenResult, TraceResult
from .landscape.results import CurvesResult, SurfaceResult
from .objective import Objective
from .perturb.evaluator import PRECISIONS, STRATEGIES
from .results import Result, register
from .sharpness.results import FlatnessResult, QuantNoiseResult, WorstCaseResult

LOWER = "lower"   # lower is flatter


# --------------------------------------------------------------------------- settings
def setting(default, help: str, flag: str | None = None, **meta):
    """A metric setting: its default, a help line, its CLI flag (None: API only) and its valid range
    (`min` inclusive, `gt` exclusive, `max` inclusive, `choices`, `nargs`; tuples are checked per entry)."""
    return field(default=default, metadata={"help": help, "flag": flag, **meta})


def check_settings(s, where: str = "") -> None:
    """Every numeric setting finite and in its range, every choice known: one FlatlensError otherwise."""
    for f in dataclasses.fields(s):
        v = getattr(s, f.name)
        m = f.metadata
        name = m.get("flag") or f.name
        if v is None:
            continue
        if "choices" in m and v not in m["choices"]:
            raise FlatlensError(f"{where}{name} must be one of {', '.join(map(str, m['choices']))}; got {v!r}")
        values = v if isinstance(v, (tuple, list)) else (v,)
        if "nargs" in m and isinstance(m["nargs"], int) and len(values) != m["nargs"]:
            raise FlatlensError(f"{where}{name} takes {m['nargs']} values; got {len(values)}")
        if isinstance(v, (tuple, list)) and not values and m.get("nargs") == "+":
            raise FlatlensError(f"{where}{name} needs at least one value")
        lo, lo_open = (m["gt"], True) if "gt" in m else (m.get("min"), False)
        integer = f.type in ("int", int)  # an int setting stays whole
        for x in values:
            if not isinstance(x, bool) and isinstance(x, (int, float)):
                check_number(f"{where}{name}", x, lo=lo, hi=m.get("max"), lo_open=lo_open, integer=integer)
        if m.get("increasing") and len(values) == 2 and not values[0] < values[1]:
            raise FlatlensError(f"{where}{name} needs LO < HI; got {values[0]!r} {values[1]!r}")
    if callable(getattr(s, "check", None)):  # what one setting needs of another
        try:
            s.check()
        except FlatlensError as e:
            raise FlatlensError(f"{where}{e}") from None


@dataclass
class Common:
    """Settings every metric shares (part of every cache key)."""
    samples: int = setting(512, "evaluation samples per split (a seeded subset; all if fewer)", "--samples", min=1)
    seed: int = setting(0, "seed of the data subset and of every probe, direction and noise draw", "--seed",
                        min=0, max=2 ** 62)
    batch_size: int = setting(256, "samples per evaluation batch", None, min=1)
    weights: str = setting("deployed", "quantized checkpoints: the deployed weights s*round(clip(w/s)) or the "
                           "latent ones", "--weights", choices=("deployed", "latent"))


# --------------------------------------------------------------------------- rows
@dataclass(frozen=True)
class RowSpec:
    """How a summary row reads: `key` exact, or a prefix when `prefix` (label's {rest} = the key's rest)."""
    key: str
    label: str
    unit: str
    direction: str | None = LOWER      # LOWER: lower is flatter; None: not read as flat / sharp
    prefix: bool = False

    def matches(self, key: str) -> bool:
        return key.startswith(self.key) if self.prefix else key == self.key

    def label_for(self, key: str) -> str:
        return self.label.replace("{rest}", key[len(self.key):]) if self.prefix else self.label


BOUND_KINDS = ("bound", "gap-bound")  # interval kinds that are bounds, not confidence intervals


def interval_label(kind: str | None) -> str:
    """How a table names an interval kind: "95% CI", "bound" or "gap bound" ("" for none)."""
    return {"ci95": "95% CI", "bound": "bound", "gap-bound": "gap bound"}.get(kind, "")


@dataclass
class Row:
    """One number of a metric record, found by its stable `key`.

    interval_kind: "ci95" (a 95 % t-interval, `df` degrees of freedom), "bound" (a deterministic residual
    bound, not a probability statement), "gap-bound" (residual^2 / an estimated gap: a bound when that estimate
    holds) or None. `samples`: the per-draw values behind a CI (directions,
    probes, data batches); rows of two checkpoints with equal `pairing` strings were drawn identically, so
    their difference is tested paired."""
    key: str
    value: float
    stderr: float | None = None
    df: float | None = None
    interval: tuple[float, float] | None = None
    interval_kind: str | None = None
    n: int | None = None
    samples: list[float] | None = None
    pairing: str | None = None
    source: str = stats.MEASUREMENT

    def estimate(self) -> stats.Estimate | None:
        if self.stderr is None or self.df is None or not math.isfinite(self.stderr):
            return None
        return stats.estimate(self.value, self.stderr, self.df, self.n or 0, source=self.source)


def _t_row(key, values, pairing=None, n=None) -> Row:
    e = stats.t_interval(values)
    return Row(key, e.value, e.stderr, e.df, e.ci95, "ci95", n if n is not None else e.n,
               [float(v) for v in np.asarray(values, float).reshape(-1)], pairing)


# --------------------------------------------------------------------------- the registry's shape
@dataclass
class Context:
    """What a computation may need beyond the Objective and its settings (not part of any key)."""
    seed: int = 0                      # the common seed (every probe, direction and noise draw)
    ckpt: dict | None = None
    progress: bool = False
    store: str | None = None
    qnoise_steps: dict | None = None   # explicit steps for the quantization-noise test (one per comparison)


@dataclass(frozen=True)
class Metric:
    name: str
    summary: str
    family: str                      # "hessian", "landscape" or "sharpness" (which CLI command shows it)
    role: str                        # reproduce: "headline" (every seed), "illustrative" (one seed), "extra"
    settings: type
    result_type: type
    compute: Callable[[Objective, Any, Context], Result]
    rows: Callable[[Result, Any], list[Row]]
    specs: tuple[RowSpec, ...]
    brief: Callable[[Result], str]
    cost: str                        # what the defaults cost per checkpoint and split, shown in --help (measured
                                     # on `flatlens train`'s default model, 512 samples, 2 CPU threads)
    summary_row: Callable[[Any], str] | None = None   # settings -> the row key shown in summary tables
    axis: str = "points"             # under torchrun: "data" (HVP / gradient metrics) or "points" (perturbations)

    def spec(self, key: str) -> RowSpec:
        for s in self.specs:
            if s.matches(key):
                return s
        raise KeyError(f"{self.name} has no row {key!r}")

    def label(self, key: str) -> str:
        return self.spec(key).label_for(key)

    def defaults(self):
        return self.settings()


ROLES = ("headline", "illustrative", "extra")
REGISTRY: dict[str, Metric] = {}


def register_metric(m: Metric) -> Metric:
    if m.role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    REGISTRY[m.name] = m
    return m


def get(name: str) -> Metric:
    try:
        return REGISTRY[name]
    except KeyError:
        raise FlatlensError(f"unknown metric {name!r}; choose from {', '.join(REGISTRY)} or all") from None


def names(family: str | None = None) -> list[str]:
    return [n for n, m in REGISTRY.items() if family is None or m.family == family]


# --------------------------------------------------------------------------- Hessian metrics
@dataclass
class EigSettings:
    k: int = setting(1, "number of eigenvalues", "--k", min=1)
    which: str = setting("LA", "which end: LA largest, SA smallest (algebraic), LM largest magnitude", "--which",
                         choices=("LA", "SA", "LM"))
    bottom: bool = setting(False, "also the most negative eigenvalue (which=SA; slow to converge: about 10x the "
                           "HVPs of the top one on the digits model)", "--bottom")
    method: str = setting("lanczos", "eigenvalue method", "--eig-method", choices=("lanczos", "power"))
    tol: float = setting(1e-3, "eigenvalue tolerance (relative)", "--tol", gt=0, max=1)
    bound: str = setting("residual", "what Lanczos stops on and reports: residual (always a bound) or gap "
                         "(residual^2 / the Ritz values' gap: fewer HVPs, a bound when that gap estimate holds)",
                         "--eig-bound", choices=("residual", "gap"))
    max_hvp: int = setting(2000, "at most this many Hessian-vector products per estimate", "--max-hvp", min=1)
    backend: str = setting("flatlens", "flatlens, or pyhessian as a cross-check", "--backend",
                           choices=("flatlens", "pyhessian"))

    def check(self) -> None:
        """The gap bound needs flatlens's Lanczos (checked before any work, by the estimator's own rule)."""
        from .hessian.eigen import check_bound
        check_bound(self.bound, self.method, self.backend)


@register
@dataclass
class ExtremeEigenvalues(Result):
    """Extreme eigenvalues of H: the asked end (`main`) and, optionally, the most negative one (`bottom`)."""
    main: EigenResult
    bottom: EigenResult | None = None


def _eig_compute(obj, s: EigSettings, ctx):
    from . import hessian
    kw = dict(method=s.method, tol=s.tol, max_hvp=s.max_hvp, seed=ctx.seed, backend=s.backend, bound=s.bound)
    main = hessian.top_eigenvalues(obj, s.k, which=s.which, **kw)
    bottom = hessian.top_eigenvalues(obj, 1, which="SA", **kw) if s.bottom and s.which != "SA" else None
    return ExtremeEigenvalues(main=main, bottom=bottom)


def _eig_rows(r: ExtremeEigenvalues, s) -> list[Row]:
    out = []
    for res in ([r.main] + ([r.bottom] if r.bottom is not None else [])):
        for i, v in enumerate(res.values):
            b = res.bounds[i] if i < len(res.bounds) else None
            kind = "gap-bound" if res.bound == "gap" else "bound"
            out.append(Row(f"{res.which}{i + 1}", float(v), interval=None if b is None else (v - b, v + b),
                           interval_kind=None if b is None else kind))
    return out


register_metric(Metric(
    name="hessian-eig", summary="extreme Hessian eigenvalues (Lanczos) with residual bounds",
    family="hessian", role="headline", settings=EigSettings, result_type=ExtremeEigenvalues,
    compute=_eig_compute, rows=_eig_rows,
    specs=(RowSpec("LA", "top eigenvalue λ{rest}", "nats/w²", LOWER, prefix=True),
           RowSpec("SA", "smallest eigenvalue #{rest}", "nats/w²", None, prefix=True),
           RowSpec("LM", "largest-magnitude eigenvalue #{rest}", "nats/w²", None, prefix=True)),
    brief=lambda r: (f"{r.main.n_hvp + (r.bottom.n_hvp if r.bottom else 0)} HVPs, converged "
                     f"{r.main.converged and (r.bottom is None or r.bottom.converged)}"),
    axis="data", cost="about 4 s", summary_row=lambda s: "LA1"))


@dataclass
class TraceSettings:
    method: str = setting("hutch++", "trace estimator", "--trace-method", choices=("hutch++", "hutchinson"))
    rtol: float = setting(0.05, "stop when the 95 % CI half-width <= rtol * |trace|", "--rtol", gt=0, max=1)
    max_hvp: int = setting(2000, "at most this many Hessian-vector products per estimate", "--max-hvp", min=2)
    backend: str = setting("flatlens", "flatlens, or pyhessian as a cross-check", "--backend",
                           choices=("flatlens", "pyhessian"))


def _trace_compute(obj, s: TraceSettings, ctx):
    from . import hessian
    return hessian.trace(obj, method=s.method, rtol=s.rtol, max_hvp=s.max_hvp, seed=ctx.seed, backend=s.backend)


def _trace_rows(r, s) -> list[Row]:
    # Welch against another checkpoint: Hutch++'s residual probes (I - QQ')g differ between models
    df = max(r.n_probes - 1, 0)
    return [Row("trace", r.value, r.stderr, df, tuple(r.ci95) if df else None, "ci95" if df else None,
                r.n_probes)]


register_metric(Metric(
    name="hessian-trace", summary="Hessian trace (Hutch++, stopped on its 95 % CI)", family="hessian",
    role="headline", settings=TraceSettings, result_type=TraceResult, compute=_trace_compute, rows=_trace_rows,
    specs=(RowSpec("trace", "Hessian trace tr(H)", "nats/w²"),),
    brief=lambda r: f"{r.n_hvp} HVPs, converged {r.converged}",
    axis="data", cost="about 3 s", summary_row=lambda s: "trace"))


@dataclass
class DensitySettings:
    n_iter: int = setting(40, "Lanczos steps per SLQ run", "--density-iter", min=1)
    n_runs: int = setting(3, "SLQ runs (random starts)", "--density-runs", min=2)
    sigma: float | None = setting(None, "Gaussian broadening (default 1 % of the spectrum's span)", gt=0)


def _density_compute(obj, s: DensitySettings, ctx):
    from . import hessian
    return hessian.density(obj, n_iter=s.n_iter, n_runs=s.n_runs, sigma=s.sigma, seed=ctx.seed)


def _density_rows(r, s) -> list[Row]:
    per_run = [float(np.dot(w, v)) for w, v in zip(r.weights, r.nodes)]
    return [_t_row("mean", per_run, pairing=f"slq:{r.n_runs}x{r.n_iter}:{r.seed}:{r.objective.get('num_params')}")]


register_metric(Metric(
    name="hessian-density", summary="Hessian spectral density (stochastic Lanczos quadrature)",
    family="hessian", role="illustrative", settings=DensitySettings, result_type=DensityResult,
    compute=_density_compute, rows=_density_rows,
    specs=(RowSpec("mean", "mean eigenvalue tr(H)/d (SLQ)", "nats/w²"),),
    brief=lambda r: f"{r.n_runs} runs x {r.n_iter} steps, {r.n_hvp} HVPs",
    axis="data", cost="about 10 s"))


@dataclass
class DiagSettings:
    n_probes: int = setting(50, "Hutchinson probes of the diagonal", "--probes", min=2)


@register
@dataclass
class DiagonalSummary(Result):
    diagonal: DiagonalResult
    probe_sums: list[float]         # per probe g'Hg (the trace's Hutchinson samples)


def _diag_compute(obj, s: DiagSettings, ctx):
    from . import hessian
    res, sums = hessian.diagonal(obj, n_probes=s.n_probes, seed=ctx.seed, return_samples=True,
                                 weights=torch.ones(obj.num_params, dtype=obj.dtype, device=obj.device))
    return DiagonalSummary(diagonal=res, probe_sums=[float(x) for x in sums])


register_metric(Metric(
    name="hessian-diag", summary="Hessian diagonal (Hutchinson); its sum estimates the trace",
    family="hessian", role="extra", settings=DiagSettings, result_type=DiagonalSummary,
    compute=_diag_compute,
    rows=lambda r, s: [_t_row("sum", r.probe_sums,
                              pairing=f"rademacher:{len(r.probe_sums)}:{r.diagonal.objective.get('num_params')}")],
    specs=(RowSpec("sum", "sum of the diagonal (Hutchinson trace)", "nats/w²"),),
    brief=lambda r: f"{r.diagonal.n_probes} probes",
    axis="data", cost="about 5 s"))


# --------------------------------------------------------------------------- landscape metrics
def _kind(default):
    from .perturb.directions import KINDS
    return setting(default, "direction kind", "--kind", choices=KINDS)


@dataclass
class EvalSettings:
    """How perturbed models are evaluated (every perturbation metric)."""
    strategy: str = setting("auto", "how perturbed models are evaluated", "--strategy", choices=STRATEGIES)
    precision: str = setting("fp32", "evaluation precision", "--precision", choices=PRECISIONS)


@dataclass
class FlatnessSettings(EvalSettings):
    radii: tuple = setting((0.0, 0.5, 1.0, 2.0, 3.0, 4.0), "radii (L2 norm of the perturbation)", "--radii",
                           nargs="+", min=0)
    n_directions: int = setting(50, "random unit directions (flatness) / directions (curves)", "--directions",
                                min=2)
    kind: str = setting("sphere", "direction kind (SWAD: uniform on the unit sphere)")


def _flatness_compute(obj, s: FlatnessSettings, ctx):
    from . import sharpness
    return sharpness.local_flatness(obj, list(s.radii), n_directions=s.n_directions, seed=ctx.seed, kind=s.kind,
                                    strategy=s.strategy, precision=s.precision, store=ctx.store,
                                    progress=ctx.progress)


def _flatness_rows(r, s) -> list[Row]:
    inc = np.asarray(r.increases)
    pairing = f"{r.direction.get('kind')}:{r.n_directions}:{r.seed}:{r.objective.get('num_params')}"
    return [_t_row(f"r={rad:g}", inc[:, j], pairing=pairing) for j, rad in enumerate(r.radii) if rad > 0]


register_metric(Metric(
    name="flatness", summary="SWAD-style local flatness E_u[F(w + r u)] - F(w) per radius",
    family="sharpness", role="headline", settings=FlatnessSettings, result_type=FlatnessResult,
    compute=_flatness_compute, rows=_flatness_rows,
    specs=(RowSpec("r=", "local flatness r={rest}", "nats", LOWER, prefix=True),),
    brief=lambda r: f"{r.n_directions} directions, strategy {r.evaluator.get('strategy')}",
    cost="about 2 s (50 directions x 6 radii)", summary_row=lambda s: f"r={max(s.radii):g}"))


@dataclass
class GridSettings(EvalSettings):
    """A grid of steps along random directions (curves and slices)."""
    kind: str = _kind("filter")
    ignore: str | None = setting(None, "bias/BN policy (default: biasbn for filter/layer kinds)", "--ignore",
                                 choices=("biasbn", "none"))
    range: tuple = setting((-1.0, 1.0), "step range LO HI along each direction", "--range", nargs=2,
                           increasing=True)
    points: int = setting(21, "grid points per axis (0 is always on the grid)", "--points", min=2, max=1001)


@dataclass
class CurveSettings(GridSettings):
    n_directions: int = setting(10, "random directions (curves) / directions (flatness)", "--directions", min=2)


def _curve_compute(obj, s: CurveSettings, ctx):
    from . import landscape
    return landscape.random_curves(obj, landscape.grid(s.range[0], s.range[1], s.points), kind=s.kind,
                                   ignore=s.ignore, n_directions=s.n_directions, seed=ctx.seed, strategy=s.strategy,
                                   precision=s.precision, store=ctx.store, progress=ctx.progress)


def _curve_rows(r, s) -> list[Row]:
    L = np.asarray(r.losses) - r.center_loss
    edge = 0.5 * (L[:, 0] + L[:, -1])  # mean increase at the two ends of each curve
    pairing = f"{r.direction.get('kind')}:{r.n_directions}:{r.seed}:{r.objective.get('num_params')}:{r.alphas}"
    return [_t_row("edge", edge, pairing=pairing)]


register_metric(Metric(
    name="curve", summary="1D loss curves along random (filter-normalized) directions",
    family="landscape", role="illustrative", settings=CurveSettings, result_type=CurvesResult,
    compute=_curve_compute, rows=_curve_rows,
    specs=(RowSpec("edge", "curve increase at the range's ends", "nats"),),
    brief=lambda r: f"{r.n_directions} directions x {len(r.alphas)} points",
    cost="about 1.5 s"))


@dataclass
class SurfaceSettings(GridSettings):
    pass


def _surface_compute(obj, s: SurfaceSettings, ctx):
    from . import landscape
    xs = landscape.grid(s.range[0], s.range[1], s.points)
    return landscape.random_surface(obj, xs, xs, kind=s.kind, ignore=s.ignore, seed=ctx.seed, strategy=s.strategy,
                                    precision=s.precision, store=ctx.store, progress=ctx.progress)


def _surface_rows(r, s) -> list[Row]:
    inc = np.asarray(r.losses) - r.center_loss
    return [Row("mean-increase", float(inc.mean()), n=int(inc.size))]  # one slice: no CI, no test


register_metric(Metric(
    name="surface", summary="a 2D loss slice along an orthogonalized pair of random directions",
    family="landscape", role="illustrative", settings=SurfaceSettings, result_type=SurfaceResult,
    compute=_surface_compute, rows=_surface_rows,
    specs=(RowSpec("mean-increase", "2D slice mean increase (one slice, no CI)", "nats"),),
    brief=lambda r: f"{len(r.xs)} x {len(r.ys)} grid",
    cost="about 3 s (21 x 21 points)"))


# --------------------------------------------------------------------------- sharpness metrics
@dataclass
class SharpnessSettings:
    rho: float = setting(0.5, "L2 radius of the worst-case ball (the adaptive ball uses rho/10)", "--rho", gt=0)
    steps: int = setting(10, "projected-gradient ascent steps", "--sharpness-steps", min=1)
    batches: int = setting(5, "data batches, each optimized separately (the CI is over batches)",
                           "--sharpness-batches", min=2)


@register
@dataclass
class SharpnessResult(Result):
    """Worst-case sharpness per data batch (tml-epfl's protocol), plain and adaptive."""
    worst_case: list[WorstCaseResult]
    adaptive: list[WorstCaseResult]
    batches: int


def _sharpness_compute(obj, s: SharpnessSettings, ctx):
    from . import sharpness
    n = obj.n_samples
    xs = torch.cat([b[0] for b in obj.data.batches]).cpu()
    ys = torch.cat([b[1] for b in obj.data.batches]).cpu()
    wc, ad = [], []
    for idx in torch.tensor_split(torch.arange(n), s.batches):
        # the same loss, BatchNorm mode and parameter set as the measured objective, on a slice of its data
        sub = Objective(obj.model, obj.loss_fn, (xs[idx], ys[idx]), device=obj.device, params=obj.names, bn=obj.bn)
        sub.on_progress = obj.on_progress
        wc.append(sharpness.worst_case(sub, s.rho, steps=s.steps, seed=ctx.seed))
        ad.append(sharpness.worst_case(sub, s.rho / 10, adaptive=True, steps=s.steps, seed=ctx.seed))
    return SharpnessResult(worst_case=wc, adaptive=ad, batches=s.batches)


def _sharpness_rows(r, s) -> list[Row]:
    pairing = f"batches:{r.batches}:{r.worst_case[0].objective.get('num_params')}"
    return [_t_row("worst-case", [w.increase for w in r.worst_case], pairing=pairing),
            _t_row("adaptive", [a.increase for a in r.adaptive], pairing=pairing)]


register_metric(Metric(
    name="sharpness", summary="worst-case and adaptive (ASAM) sharpness by projected gradient ascent",
    family="sharpness", role="illustrative", settings=SharpnessSettings, result_type=SharpnessResult,
    compute=_sharpness_compute, rows=_sharpness_rows,
    specs=(RowSpec("worst-case", "worst-case sharpness (L2 ball rho)", "nats"),
           RowSpec("adaptive", "adaptive sharpness (ball rho/10, scaled by |w|)", "nats")),
    brief=lambda r: f"{r.batches} batches",
    cost="about 1 s"))


@dataclass
class QnoiseSettings(EvalSettings):
    n_samples: int = setting(100, "noise draws (antithetic pairs: two evaluations each)", "--qnoise-samples",
                             min=2)
    pred_rtol: float = setting(0.05, "the prediction (1/24) tr(S H S) by Hutch++, stopped at this relative 95 % CI "
                               "half-width", "--qnoise-rtol", gt=0, max=1)
    pred_max_hvp: int = setting(500, "at most this many HVPs for the prediction", None, min=12)
    bits: int = setting(7, "bit-width of the LSQ-initial steps (steps=lsq-init)", "--qnoise-bits", min=2, max=8)
    steps: str = setting("lsq-init", "lsq-init: the LSQ-initial per-channel steps s = 2 mean|w| / sqrt(Q_P) of "
                         "every model's own weights (one rule for all); learned: the learned steps of the "
                         "(first) quantized checkpoint, applied to every model compared", "--qnoise-steps",
                         choices=("lsq-init", "learned"))
    estimator: str = setting("antithetic", "antithetic pairs or plain Monte Carlo", "--qnoise-estimator",
                             choices=("antithetic", "plain"))
    steps_source: str = setting("", "sha256 of the checkpoint whose learned steps are applied (set by compare)")


def qnoise_steps(ckpt: dict | None, obj: Objective, s: QnoiseSettings, given: dict | None = None):
    """(steps, description) for the quantization-noise test, by the settings' one rule."""
    from .quant import default_layers, init_step
    if given is not None:
        return given, f"learned {s.bits if not ckpt else ((ckpt.get('quant') or {}).get('bits'))}-bit steps of " \
                      f"checkpoint {s.steps_source[:12] or '(given)'} applied to every model"
    if s.steps == "learned":
        if not ckpt or not ckpt.get("quant"):
            raise FlatlensError("--qnoise-steps learned needs a quantized checkpoint's steps; this one is full "
                                "precision (use lsq-init, or compare it with a quantized one)")
        return dict(ckpt["quant"]["steps"]), f"its own learned {ckpt['quant']['bits']}-bit steps"
    layers = default_layers(obj.model)
    steps = {f"{n}.weight": init_step(obj.center[f"{n}.weight"], s.bits, True) for n in layers
             if f"{n}.weight" in obj.center}
    if not steps:
        raise FlatlensError("the quantization-noise test found no conv/linear layer (but the classifier) to perturb")
    return steps, f"LSQ-initial {s.bits}-bit per-channel steps of the measured weights (all conv/linear but the last)"


def _qnoise_compute(obj, s: QnoiseSettings, ctx):
    from . import sharpness
    steps, how = qnoise_steps(ctx.ckpt, obj, s, ctx.qnoise_steps)
    return sharpness.quantization_noise(obj, steps, n_samples=s.n_samples, pred_rtol=s.pred_rtol,
                                        pred_max_hvp=s.pred_max_hvp, seed=ctx.seed,
                                        estimator=s.estimator, strategy=s.strategy, precision=s.precision,
                                        store=ctx.store, progress=ctx.progress, steps_rule=how)


def _qnoise_rows(r, s) -> list[Row]:
    P = r.objective.get("num_params")
    return [_t_row("measured", r.samples, pairing=f"qnoise:{r.estimator}:{len(r.samples)}:{r.seed}:{P}"),
            Row("predicted", r.predicted, r.predicted_stderr, r.predicted_df, r.predicted_ci95,
                "ci95" if r.predicted_ci95 else None, r.prediction_hvp),
            Row("ratio", r.ratio, interval=r.ratio_ci95, interval_kind="ci95" if r.ratio_bounded else None,
                source="measurement (Fieller)")]


register_metric(Metric(
    name="qnoise", summary="the quantization-noise test: E[F(w+D)] - F(w) vs (1/24) sum s^2 H_ii",
    family="sharpness", role="headline", settings=QnoiseSettings, result_type=QuantNoiseResult,
    compute=_qnoise_compute, rows=_qnoise_rows,
    specs=(RowSpec("measured", "quantization noise: measured increase", "nats"),
           RowSpec("predicted", "quantization noise: predicted (1/24) Σ s² H_ii", "nats"),
           RowSpec("ratio", "quantization noise: measured / predicted", "", None)),
    brief=lambda r: (f"{r.n_samples} {r.estimator} draws, prediction {r.prediction_hvp} HVPs; steps: "
                     f"{r.steps_rule}"),
    cost="about 4 s"))


# --------------------------------------------------------------------------- settings of a run
@register
@dataclass
class Settings(Result):
    """The common settings and each metric's own (defaults where absent)."""
    common: Common = field(default_factory=Common)
    metrics: dict[str, Any] = field(default_factory=dict)

    def of(self, name: str):
        s = self.metrics.get(name)
        return s if s is not None else get(name).settings()

    def key(self, name: str) -> dict:
        """What a cached measurement of `name` depends on (its own settings, not the other metrics')."""
        return {"common": dataclasses.asdict(self.common), name: dataclasses.asdict(self.of(name))}

    def check(self) -> None:
        check_settings(self.common)
        for name, s in self.metrics.items():
            if name not in REGISTRY:
                raise FlatlensError(f"settings of an unknown metric {name!r}; known: {', '.join(REGISTRY)}")
            check_settings(s, f"{name}: ")

    @classmethod
    def from_dict(cls, d: dict):
        from .results import from_plain
        if not isinstance(d, dict):
            raise ValueError("settings must be an object")
        common = from_plain(Common, d.get("common", {}))
        metrics = {}
        for name, v in (d.get("metrics") or {}).items():
            if name not in REGISTRY:  # a metric this flatlens does not register: kept as read, never used
                metrics[name] = v
                continue
            metrics[name] = from_plain(REGISTRY[name].settings, v)
            for f in dataclasses.fields(metrics[name]):  # JSON lists back to tuples
                if isinstance(getattr(metrics[name], f.name), list):
                    setattr(metrics[name], f.name, tuple(getattr(metrics[name], f.name)))
        return cls(common=common, metrics=metrics)
