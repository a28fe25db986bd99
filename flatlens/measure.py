"""From checkpoints to numbers: the data selection, the Objective of a checkpoint, and every metric as
summary rows (value, stderr, 95 % CI, n) plus the full result. `compare` and `reproduce` share this.

Lower is flatter for every metric here (eigenvalue, trace, mean eigenvalue, loss increases)."""
from __future__ import annotations

import dataclasses
import hashlib
import math

import numpy as np
import torch
from torch import nn

from . import __version__
from ._util import FlatlensError, mean_ci
from .checkpoint import build_model, weights_label
from .data import load as load_data
from .data import split_indices
from .data.domains import gather
from .objective import Objective

METRICS = ("hessian-eig", "hessian-trace", "hessian-density", "flatness", "curve", "surface", "sharpness",
           "qnoise")


@dataclasses.dataclass
class Settings:
    """Parameters of every metric (part of the cache key)."""
    samples: int = 512
    seed: int = 0
    radii: tuple = (0.0, 0.5, 1.0, 2.0, 3.0, 4.0)
    n_directions: int = 50
    trace_rtol: float = 0.05
    eig_tol: float = 1e-3
    density_iter: int = 40
    density_runs: int = 3
    curve_alphas: tuple = (-0.5, -0.4, -0.3, -0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
    curve_directions: int = 10
    surface_points: int = 11
    surface_range: float = 0.5
    rho: float = 0.5
    sharpness_steps: int = 10
    sharpness_batches: int = 5
    qnoise_samples: int = 100
    qnoise_probes: int = 50
    qnoise_bits: int = 7
    strategy: str = "auto"
    batch_size: int = 256


# --------------------------------------------------------------------------- data
def select_data(meta: dict, split: str, samples: int, seed: int):
    """The evaluation samples of a checkpoint's protocol: 'train' = the source domains' in-splits (the data
    it trained on), 'test' = the held-out domain(s). A seeded subset of `samples` (all if fewer)."""
    if split not in ("train", "test"):
        raise FlatlensError(f"split must be train or test; got {split!r}")
    data = load_data(meta["dataset"], meta.get("root"), seed=meta["split_seed"])
    pool = []
    if split == "train":
        for d in meta["train_domains"]:
            idx_in, _ = split_indices(data.size(d), data.index(d), meta["split_seed"], meta.get("holdout", 0.2))
            pool += [(d, int(i)) for i in idx_in]
    else:
        for d in meta["test_domains"]:
            pool += [(d, i) for i in range(data.size(d))]
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pool), generator=g)[: min(samples, len(pool))].sort().values
    chosen = [pool[i] for i in order]
    xs, ys = [], []
    for d in dict.fromkeys(c[0] for c in chosen):
        idx = torch.tensor([i for dd, i in chosen if dd == d])
        if d in data.tensors:
            xs.append(data.tensors[d][0][idx])
            ys.append(data.tensors[d][1][idx])
        else:
            x, y = gather(data.get(d, False), idx)
            xs.append(x)
            ys.append(y)
    digest = hashlib.sha256(repr(chosen).encode()).hexdigest()[:16]
    info = {"dataset": meta["dataset"], "split": split, "domains": sorted({c[0] for c in chosen}),
            "n": len(chosen), "seed": seed, "indices_sha256": digest}
    return torch.cat(xs), torch.cat(ys), info


def load_data_file(path: str):
    """--data override: a torch file holding {"x": tensor, "y": tensor} (loaded with weights_only)."""
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FlatlensError(f"{path}: no such file") from None
    except Exception as e:
        raise FlatlensError(f"{path}: not a data file ({type(e).__name__})") from None
    if not isinstance(d, dict) or not isinstance(d.get("x"), torch.Tensor) or not isinstance(d.get("y"), torch.Tensor):
        raise FlatlensError(f"{path}: a data file is a dict with tensors 'x' and 'y'")
    digest = hashlib.sha256(d["x"].numpy().tobytes() + d["y"].numpy().tobytes()).hexdigest()[:16]
    return d["x"], d["y"], {"dataset": "file", "path": path, "split": "custom", "n": len(d["y"]),
                            "indices_sha256": digest}


def objective_for(ckpt: dict, x, y, *, device="cpu", weights: str = "deployed", batch_size: int = 256,
                  params=None) -> Objective:
    model = build_model(ckpt, weights)
    batches = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]
    return Objective(model, nn.CrossEntropyLoss(), batches, device=device, bn="eval", params=params)


def qnoise_steps(ckpt: dict, obj: Objective, bits: int) -> tuple[dict, str]:
    """The checkpoint's learned steps, or (full precision) LSQ-initial steps at `bits` on the same layers."""
    from .quant import default_layers, init_step
    if ckpt.get("quant"):
        return {k: v for k, v in ckpt["quant"]["steps"].items()}, f"learned {ckpt['quant']['bits']}-bit steps"
    layers = default_layers(obj.model)
    steps = {f"{n}.weight": init_step(obj.center[f"{n}.weight"], bits, True) for n in layers
             if f"{n}.weight" in obj.center}
    return steps, f"LSQ-initial {bits}-bit per-channel steps (full-precision model)"


# --------------------------------------------------------------------------- metrics
def _row(label, value, stderr=None, ci=None, n=None, **extra):
    if ci is None and stderr is not None and math.isfinite(stderr):
        ci = (value - 1.96 * stderr, value + 1.96 * stderr)
    return {"label": label, "value": float(value), "stderr": None if stderr is None else float(stderr),
            "ci95": None if ci is None else [float(ci[0]), float(ci[1])], "n": n, **extra}


def compute_metric(metric: str, obj: Objective, ckpt: dict, s: Settings, *, progress=False) -> dict:
    """One metric on one objective: {"rows": [...], "result": full result dict, "weights": label}."""
    from . import hessian, landscape, sharpness
    if metric == "hessian-eig":
        r = hessian.top_eigenvalues(obj, 1, tol=s.eig_tol, seed=s.seed, return_vectors=True)
        vec = r.vectors[0]
        resid = float((obj.hvp(vec) - r.values[0] * vec).norm())
        r.residuals = [resid / max(abs(r.values[0]), 1e-30)]
        del r.vectors
        neg = hessian.top_eigenvalues(obj, 1, which="SA", tol=s.eig_tol, seed=s.seed)
        rows = [_row("top eigenvalue", r.values[0], ci=(r.values[0] - resid, r.values[0] + resid), n=r.n_hvp,
                     ci_source="Lanczos residual bound, data held fixed"),
                _row("most negative eigenvalue", neg.values[0], n=neg.n_hvp)]
        return {"rows": rows, "result": {"top": r.to_dict(), "bottom": neg.to_dict()}}
    if metric == "hessian-trace":
        r = hessian.trace(obj, rtol=s.trace_rtol, seed=s.seed)
        return {"rows": [_row("Hessian trace", r.value, r.stderr, r.ci95, n=r.n_hvp)], "result": r.to_dict()}
    if metric == "hessian-density":
        r = hessian.density(obj, n_iter=s.density_iter, n_runs=s.density_runs, seed=s.seed)
        per_run = [float(np.dot(w, v)) for w, v in zip(r.weights, r.nodes)]
        m, se, lo, hi = mean_ci(per_run)
        rows = [_row("mean eigenvalue tr(H)/d (SLQ)", m, se, (lo, hi), n=r.n_runs)]
        return {"rows": rows, "result": r.to_dict()}
    if metric == "flatness":
        r = sharpness.local_flatness(obj, list(s.radii), n_directions=s.n_directions, seed=s.seed,
                                     strategy=s.strategy, progress=progress)
        inc = np.asarray(r.increases)
        rows = [_row(f"local flatness r={rad:g}", m, se, ci, n=r.n_directions, samples=inc[:, j].tolist())
                for j, (rad, m, se, ci) in enumerate(zip(r.radii, r.mean, r.stderr, r.ci95)) if rad > 0]
        return {"rows": rows, "result": r.to_dict()}
    if metric == "curve":
        r = landscape.random_curves(obj, list(s.curve_alphas), kind="filter", n_directions=s.curve_directions,
                                    seed=s.seed, strategy=s.strategy, progress=progress)
        L = np.asarray(r.losses) - r.center_loss
        edge = 0.5 * (L[:, 0] + L[:, -1])  # mean increase at the ends alpha = +-max (filter-normalized)
        m, se, lo, hi = mean_ci(edge)
        return {"rows": [_row(f"filter-normalized curve increase at |a|={max(abs(a) for a in s.curve_alphas):g}", m, se, (lo, hi), n=r.n_directions,
                              samples=edge.tolist())],
                "result": r.to_dict()}
    if metric == "surface":
        n = s.surface_points
        xs = landscape.grid(-s.surface_range, s.surface_range, n)
        r = landscape.random_surface(obj, xs, xs, kind="filter", seed=s.seed, strategy=s.strategy,
                                     progress=progress)
        inc = np.asarray(r.losses) - r.center_loss
        return {"rows": [_row("2D slice mean increase (one slice, no CI)", float(inc.mean()), n=inc.size)],
                "result": r.to_dict()}
    if metric == "sharpness":
        # worst-case sharpness per data batch (as in tml-epfl's protocol), mean and CI over the batches
        B = max(2, s.sharpness_batches)
        n = obj.n_samples
        xs = torch.cat([b[0] for b in obj.batches]).cpu()
        ys = torch.cat([b[1] for b in obj.batches]).cpu()
        parts = torch.tensor_split(torch.arange(n), B)
        vals, adapt, results = [], [], []
        for idx in parts:
            sub = Objective(obj.model, nn.CrossEntropyLoss(), (xs[idx], ys[idx]), device=obj.device,
                            params=obj.names)
            w = sharpness.worst_case(sub, s.rho, steps=s.sharpness_steps, seed=s.seed)
            a = sharpness.worst_case(sub, s.rho / 10, adaptive=True, steps=s.sharpness_steps, seed=s.seed)
            vals.append(w.increase)
            adapt.append(a.increase)
            results.append({"worst_case": w.to_dict(), "adaptive": a.to_dict()})
        m, se, lo, hi = mean_ci(vals)
        am, ase, alo, ahi = mean_ci(adapt)
        rows = [_row(f"worst-case sharpness rho={s.rho:g}", m, se, (lo, hi), n=B, samples=vals),
                _row(f"adaptive sharpness rho={s.rho / 10:g}", am, ase, (alo, ahi), n=B, samples=adapt)]
        return {"rows": rows, "result": {"batches": results}}
    if metric == "qnoise":
        steps, how = qnoise_steps(ckpt, obj, s.qnoise_bits)
        r = sharpness.quantization_noise(obj, steps, n_samples=s.qnoise_samples, n_probes=s.qnoise_probes,
                                         seed=s.seed, strategy=s.strategy, progress=progress)
        d = r.to_dict()
        d["steps"] = how
        rows = [_row("quantization noise: measured increase", r.measured, r.measured_stderr, r.measured_ci95,
                     n=r.n_samples),
                _row("quantization noise: predicted (1/24) sum s^2 H_ii", r.predicted, r.predicted_stderr,
                     r.predicted_ci95, n=r.n_probes)]
        return {"rows": rows, "result": d}
    raise FlatlensError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)} or all")


def versions() -> dict:
    import platform
    import scipy
    return {"flatlens": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "python": platform.python_version()}


def measure(ckpt: dict, metric: str, split: str, s: Settings, *, cache=None, device="cpu", data=None,
            progress=False, weights="deployed") -> dict:
    """A metric on a checkpoint and split, through the cache. `data`: (x, y, info) overrides the data."""
    x, y, info = data if data is not None else select_data(ckpt["data"], split, s.samples, s.seed)
    parts = {"ckpt": ckpt["sha256"], "metric": metric, "settings": dataclasses.asdict(s), "data": info,
             "weights": weights, "version": __version__, "device_type": torch.device(device).type}
    if cache is not None:
        hit = cache.get(parts)
        if hit is not None:
            hit["cached"] = True
            return hit
    torch.manual_seed(s.seed)
    obj = objective_for(ckpt, x, y, device=device, weights=weights, batch_size=s.batch_size)
    out = compute_metric(metric, obj, ckpt, s, progress=progress)
    out.update({"metric": metric, "split": split, "data": info, "weights": weights_label(ckpt, weights),
                "checkpoint": ckpt.get("path"), "checkpoint_sha256": ckpt["sha256"], "bn": obj.bn,
                "center_loss": obj.loss(), "objective": obj.describe(), "seed": s.seed, "cached": False})
    if cache is not None:
        cache.put(parts, out)
    return out


def difference(a: dict, b: dict) -> dict:
    """b - a with a 95 % CI, and the verdict. Rows measured on the same directions / data batches carry their
    per-sample values: then the CI is the paired t-interval of the differences (both models saw the same
    seeded directions), otherwise it combines the two standard errors as independent estimates."""
    diff = b["value"] - a["value"]
    rel = diff / abs(a["value"]) if a["value"] else math.nan
    sa, sb = a.get("samples"), b.get("samples")
    if sa is not None and sb is not None and len(sa) == len(sb) and len(sa) >= 2:
        d = np.asarray(sb, float) - np.asarray(sa, float)
        m, se, lo, hi = (float(x) for x in mean_ci(d))
        paired = True
    elif a.get("stderr") is None or b.get("stderr") is None:
        return {"diff": diff, "rel": rel, "ci95": None, "verdict": "no CI (not tested)", "paired": False}
    else:
        se = math.hypot(a["stderr"], b["stderr"])
        lo, hi = diff - 1.96 * se, diff + 1.96 * se
        paired = False
    if lo > 0:
        verdict = "sharper"
    elif hi < 0:
        verdict = "flatter"
    else:
        verdict = "no significant difference"
    return {"diff": diff, "rel": rel, "ci95": [lo, hi], "verdict": verdict, "paired": paired}
