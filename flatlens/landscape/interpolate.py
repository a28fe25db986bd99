"""The loss along the straight line between two trained models, and its barrier (Frankle et al. 2020):

    w(a) = (1 - a) w_A + a w_B,        L(a) = F(w(a))                      (a = 0: model A, a = 1: model B)
    excess(a) = L(a) - [(1 - a) L(0) + a L(1)],      barrier = max_{a in [0, 1]} excess(a)

A barrier near 0 says the two models lie in one linearly connected basin; a positive one, that the straight path
between them climbs out of it. The grid extends beyond [0, 1] to show the walls; the barrier is read on [0, 1].

BatchNorm: an interpolated network's activations match neither endpoint's running statistics nor their average
(the variance of the interpolated channels collapses), so a curve evaluated with stale statistics shows a barrier
that is an artefact of the statistics (Jordan et al. 2022, REPAIR). At each a the running statistics are therefore
recomputed from `bn_data` (torch.optim.swa_utils.update_bn: a cumulative average over the given batches) unless
the caller asks for the naive rule (`bn="interpolate"`: the statistics interpolated with the weights), which is
recorded either way.

Quantized endpoints are interpolated in their latent weights; the weights evaluated at a follow one stated rule
(`deployment_rule`). Intervals come from the per-sample losses: every sample's excess at every grid point, and
`stats.max_of_means` over the points in [0, 1] (simultaneous, so the argmax picked on the same samples is covered).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .. import stats
from .._util import FlatlensError, check_number, timer
from ..objective import BN_TYPES, widen
from .results import InterpolationResult

BN_POLICIES = ("recompute", "interpolate")


def path_grid(lo: float, hi: float, points: int) -> np.ndarray:
    """The multiples of h = 1 / (points - 1) from lo to hi (lo <= 0, hi >= 1): `points` of them on [0, 1], a and 0
    and 1 exactly on the grid, the same spacing beyond."""
    check_number("points on [0, 1]", points, lo=2, hi=100_000, integer=True)
    check_number("lo", lo, hi=0)
    check_number("hi", hi, lo=1)
    k = int(points) - 1
    i0, i1 = math.ceil(lo * k - 1e-9), math.floor(hi * k + 1e-9)
    return np.arange(i0, i1 + 1, dtype=np.float64) / k


@dataclass
class Endpoint:
    """One end of the path: a state dict under the module's names (parameters and buffers; latent weights for a
    quantized model), its quantizer (a checkpoint's `quant`: {"bits", "steps": {weight name: step}}) or None,
    and what it is (recorded)."""
    state: dict
    quant: dict | None = None
    label: dict | None = None


def as_endpoint(x) -> Endpoint:
    """An Endpoint from an Endpoint, an nn.Module (its state dict) or a state dict."""
    if isinstance(x, Endpoint):
        return x
    if isinstance(x, nn.Module):
        return Endpoint({k: v.detach() for k, v in x.state_dict().items()})
    if isinstance(x, dict) and all(isinstance(v, torch.Tensor) for v in x.values()):
        return Endpoint(dict(x))
    raise FlatlensError(f"an endpoint is a model, a state dict or an Endpoint; got {type(x).__name__}")


def endpoint_of_checkpoint(ckpt, weights: str = "deployed") -> Endpoint:
    """A flatlens checkpoint as an endpoint: its latent weights and (unless `weights` is "latent") its quantizer."""
    from ..checkpoint import weights_label
    q = ckpt.quant if weights == "deployed" else None
    return Endpoint(dict(ckpt.state_dict), None if q is None else {"bits": q.bits, "steps": q.steps},
                    {"path": ckpt.path, "sha256": ckpt.sha256, "weights": weights_label(ckpt, weights)})


def deployment_rule(a: Endpoint, b: Endpoint) -> str:
    """Which weights are evaluated at each point: "full precision" (no quantizer at either end), "steps" (both ends
    quantized at one bit-width on the same layers: every point a quantized network, steps interpolated), or "mix"
    (otherwise: each end's own quantizer applied to the interpolated latent weights, weighted (1 - a), a)."""
    qa, qb = a.quant, b.quant
    if not qa and not qb:
        return "full precision"
    if qa and qb and qa["bits"] == qb["bits"] and set(qa["steps"]) == set(qb["steps"]) and all(
            qa["steps"][k].shape == qb["steps"][k].shape for k in qa["steps"]):
        return "steps"
    return "mix"


RULE_TEXT = {
    "full precision": "full-precision weights w(a) at every point",
    "steps": "latent weights interpolated, each point quantized at the shared bit-width with interpolated steps: "
             "s(a) = (1 - a) s_A + a s_B, w_q(a) = s(a) round(clip(w(a) / s(a)))",
    "mix": "latent weights interpolated, each end's own quantizer applied to them (the identity for a full-precision "
           "end): w_q(a) = (1 - a) Q_A(w(a)) + a Q_B(w(a)), exact at both ends",
}


def weights_at(alpha: float, a: Endpoint, b: Endpoint, rule: str) -> dict:
    """The state dict evaluated at `alpha` under `rule` (floating tensors interpolated; integer buffers, such as
    BatchNorm's batch counter, taken from the nearer end)."""
    from ..quant.lsq import fake_quantize
    out = {}
    for k, va in a.state.items():
        vb = b.state[k]
        out[k] = (1 - alpha) * va + alpha * vb if va.is_floating_point() else (va if alpha < 0.5 else vb)
    if rule == "steps":
        bits = a.quant["bits"]
        for k, sa in a.quant["steps"].items():
            out[k] = fake_quantize(out[k], (1 - alpha) * sa + alpha * b.quant["steps"][k], bits)
    elif rule == "mix":
        for k in set((a.quant or {}).get("steps", {})) | set((b.quant or {}).get("steps", {})):
            qa = fake_quantize(out[k], a.quant["steps"][k], a.quant["bits"]) if a.quant and k in a.quant["steps"] \
                else out[k]
            qb = fake_quantize(out[k], b.quant["steps"][k], b.quant["bits"]) if b.quant and k in b.quant["steps"] \
                else out[k]
            out[k] = (1 - alpha) * qa + alpha * qb
    return out


def _check_same_architecture(net: nn.Module, ends: list[Endpoint]) -> None:
    want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    for name, e in zip("AB", ends):
        have = {k: tuple(v.shape) for k, v in e.state.items()}
        if have != want:
            missing = sorted(set(want) - set(have))[:2]
            extra = sorted(set(have) - set(want))[:2]
            shapes = [f"{k} {have[k]} vs {want[k]}" for k in want if k in have and have[k] != want[k]][:2]
            raise FlatlensError(f"model {name} does not have the objective's architecture (interpolation needs one "
                                f"architecture): " + "; ".join(
                                    (["missing " + ", ".join(missing)] if missing else [])
                                    + (["unexpected " + ", ".join(extra)] if extra else [])
                                    + (["shape " + "; ".join(shapes)] if shapes else [])))


def _bn_batches(bn_data, device, dtype):
    """BatchNorm recalibration inputs: a list of input tensors (from an (x, y) pair, a tensor, or batches)."""
    if isinstance(bn_data, torch.Tensor):
        bn_data = [bn_data]
    elif isinstance(bn_data, tuple) and len(bn_data) == 2 and isinstance(bn_data[0], torch.Tensor):
        bn_data = [bn_data]
    out = []
    for b in bn_data:
        x = b[0] if isinstance(b, (tuple, list)) else b
        if not isinstance(x, torch.Tensor):
            raise FlatlensError("BatchNorm recalibration data are tensors or (x, y) batches")
        out.append(x.to(device, dtype if x.is_floating_point() else x.dtype))
    if not out:
        raise FlatlensError("BatchNorm recalibration needs at least one batch")
    return out


def _per_sample(obj, out: torch.Tensor, y: torch.Tensor, batch_loss: torch.Tensor):
    """The loss of each sample (loss_fn on one row at a time, vmapped), or None where their mean is not the batch's
    loss (a loss that does not average over samples)."""
    try:
        per = torch.func.vmap(lambda o, t: obj.loss_fn(o.unsqueeze(0), t.unsqueeze(0)))(out, y).reshape(-1)
    except (RuntimeError, NotImplementedError, ValueError, TypeError):  # a loss vmap cannot batch: one call each
        per = torch.stack([obj.loss_fn(out[i:i + 1], y[i:i + 1]).reshape(()) for i in range(out.shape[0])])
    if per.numel() != out.shape[0] or not torch.allclose(per.mean(), batch_loss, rtol=1e-5, atol=1e-7):
        return None
    return per


def interpolate(obj, a, b, alphas, *, bn: str = "recompute", bn_data=None, bn_label: str | None = None,
                seed: int = 0) -> InterpolationResult:
    """Loss (and accuracy) of `obj`'s loss over its data along (1 - alpha) w_A + alpha w_B, the barrier and where it
    peaks, each with its simultaneous 95 % interval over the samples (where the loss gives per-sample values).

    obj: the Objective whose data, loss and architecture (its model) are used; its own weights are not.
    a, b: the endpoints (an nn.Module, a state dict, or an `Endpoint` with a quantizer: `endpoint_of_checkpoint`).
    alphas: the grid (0 and 1 must be on it: `path_grid`).
    bn: "recompute" (every point's BatchNorm statistics from `bn_data`: an (x, y) pair, a tensor or batches;
        default the objective's own evaluation batches; `bn_label` says in words what they are, for the record) or
        "interpolate" (the naive rule).
    seed: recorded (the seed the caller chose the data with)."""
    elapsed = timer()
    if bn not in BN_POLICIES:
        raise FlatlensError(f"bn must be one of {', '.join(BN_POLICIES)}; got {bn!r}")
    if obj.group.enabled:
        raise FlatlensError("interpolation evaluates every point on one process's samples: measure it along the "
                            "points axis (--axis points or auto), not with a data-parallel objective")
    if obj.bn != "eval":
        raise FlatlensError("interpolation evaluates each point in eval mode with its own running statistics: give "
                            "an Objective with bn='eval'")
    alphas = np.asarray(alphas, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(alphas)) or 0.0 not in alphas or 1.0 not in alphas:
        raise FlatlensError("the interpolation grid must hold 0 and 1 exactly (and only finite values): use "
                            "landscape.path_grid")
    net = copy.deepcopy(obj.model).eval()
    A, B = as_endpoint(a), as_endpoint(b)
    _check_same_architecture(net, [A, B])
    A = Endpoint({k: v.to(obj.device) for k, v in A.state.items()}, A.quant, A.label)
    B = Endpoint({k: v.to(obj.device) for k, v in B.state.items()}, B.quant, B.label)
    rule = deployment_rule(A, B)
    has_bn = any(isinstance(m, BN_TYPES) for m in net.modules())
    recompute = bn == "recompute" and has_bn
    if recompute:
        inputs = _bn_batches(bn_data if bn_data is not None else obj.data.batches, obj.device, obj.dtype)
    losses, accs, per_point = [], [], []
    for alpha in alphas:
        net.load_state_dict(weights_at(float(alpha), A, B, rule))
        if recompute:
            torch.optim.swa_utils.update_bn(inputs, net)  # cumulative average over the batches (momentum None)
        net.eval()
        total, correct, per = 0.0, 0, []
        with torch.inference_mode():
            for w, batch in zip(obj.data.weights, obj.data.batches):
                if obj.custom_loss:
                    loss, _, c = obj.module_loss(net, batch)
                    per = None
                else:
                    x, y = batch
                    out = widen(net(x))
                    loss = obj.loss_fn(out, y).reshape(())
                    c = obj.count_correct(out, y)
                    if per is not None:
                        p = _per_sample(obj, out, y, loss)
                        per = None if p is None else per + [p.double()]
                total += float(w) * float(loss)
                correct = None if c is None or correct is None else correct + int(c)
        obj.tick("eval")
        if not math.isfinite(total):
            raise FlatlensError(f"the loss at a = {alpha:g} is not finite ({total}): narrow the range")
        losses.append(total)
        accs.append(None if correct is None else correct / obj.n_samples)
        per_point.append(None if per is None else torch.cat(per).cpu().numpy())
    L = np.asarray(losses)
    i0, i1 = int(np.flatnonzero(alphas == 0.0)[0]), int(np.flatnonzero(alphas == 1.0)[0])
    line = (1 - alphas) * L[i0] + alphas * L[i1]
    excess = L - line
    inside = np.flatnonzero((alphas >= 0) & (alphas <= 1))
    j = int(inside[np.argmax(excess[inside])])
    barrier, peak = float(excess[j]), float(alphas[j])
    ci = peak_range = stderr = None
    interval = ""
    if all(p is not None for p in per_point):
        X = np.stack(per_point, axis=1)                           # (n samples, points): every sample's loss
        E = X - (1 - alphas)[None, :] * X[:, [i0]] - alphas[None, :] * X[:, [i1]]   # its excess over the line
        stderr = (E.std(axis=0, ddof=1) / math.sqrt(E.shape[0])).tolist() if E.shape[0] > 1 else None
        mo = stats.max_of_means(E[:, inside])
        barrier, peak = mo.value, float(alphas[inside[mo.argmax]])
        if mo.ci95 is not None:
            ci = (float(mo.ci95[0]), float(mo.ci95[1]))
            where = alphas[inside[mo.argmax_set]]
            peak_range = (float(where.min()), float(where.max()))
            interval = (f"measurement: the evaluation samples (n = {mo.n}); simultaneous 95 % over the {mo.m} grid "
                        f"points of (0, 1) with spread (Student t, Bonferroni: t = {mo.crit:.3g} on {mo.n - 1} df), "
                        "so the barrier's interval covers the maximum although the peak was picked on the same "
                        "samples; the peak's range is the set of points that could be the maximum at that level")
    bn_rec = {"policy": ("recompute" if recompute else "interpolate" if has_bn else "none (no BatchNorm)"),
              "batches": len(inputs) if recompute else 0,
              "samples": int(sum(x.shape[0] for x in inputs)) if recompute else 0,
              "data": ("" if not recompute else "the evaluated samples" if bn_data is None
                       else bn_label or "given by the caller")}
    return InterpolationResult(
        alphas=alphas.tolist(), losses=L.tolist(), accuracies=None if any(x is None for x in accs) else accs,
        excess=excess.tolist(), excess_stderr=stderr, barrier=barrier, barrier_ci95=ci, barrier_alpha=peak,
        barrier_alpha_range=peak_range, endpoint_losses=(float(L[i0]), float(L[i1])), n_samples=obj.n_samples,
        interval=interval, bn=bn_rec, quantization=f"{rule}: {RULE_TEXT[rule]}",
        endpoints={"a": A.label or {}, "b": B.label or {}}, seed=int(seed), seconds=elapsed(),
        objective=obj.describe())
