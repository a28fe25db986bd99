"""1D curves and 2D slices of the loss along directions:  F(w + a dx)  and  F(w + a dx + b dy)."""
from __future__ import annotations

import numpy as np
import torch

from .._util import FlatlensError, mean_ci
from .._util import timer
from ..objective import Objective
from ..perturb import DirectionSpace, Evaluator, as_flat_direction, max_points, run_chunks, tensor_digest
from .results import CurveResult, CurvesResult, SurfaceResult


def grid(lo: float, hi: float, n: int) -> np.ndarray:
    """n evenly spaced values from lo to hi with 0 snapped exactly onto the grid when lo < 0 < hi
    (an odd n on a symmetric range lands on 0 itself)."""
    if n < 1:
        raise FlatlensError("a grid needs at least one point")
    g = np.linspace(lo, hi, n)
    if lo < 0 < hi:
        g[np.argmin(np.abs(g))] = 0.0
    return g


def _check_grid(values, name) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64).reshape(-1)
    if a.size == 0:
        raise FlatlensError(f"{name} is empty: give at least one point")
    if not np.all(np.isfinite(a)):
        raise FlatlensError(f"{name} holds non-finite values")
    return a


def _evaluator(obj, evaluator, strategy, precision):
    return evaluator if evaluator is not None else Evaluator(obj, strategy=strategy, precision=precision)


def curve_1d(obj: Objective, direction, alphas, *, strategy: str = "auto", precision: str = "fp32",
             evaluator: Evaluator | None = None, store: str | None = None, progress: bool = False,
             chunk: int = 64) -> CurveResult:
    """F(w + a d) for each a in alphas; `direction` is a dict name -> tensor or a flat vector."""
    elapsed = timer()
    alphas = _check_grid(alphas, "alphas")
    d = as_flat_direction(obj, direction)
    ev = _evaluator(obj, evaluator, strategy, precision)
    a_t = torch.as_tensor(alphas, dtype=obj.dtype, device=obj.device)
    chunk = min(chunk, max_points(obj))
    n_chunks = -(-len(alphas) // chunk)

    def compute(i):
        a = a_t[i * chunk:(i + 1) * chunk]
        lo, acc = ev(a[:, None] * d[None, :])
        return {"loss": lo, "acc": acc if acc is not None else torch.empty(0)}

    def rows(i):  # the points of chunk i, accuracies where the loss has them
        m = min(len(alphas), (i + 1) * chunk) - i * chunk
        return {"loss": (m,), "acc": (m,) if ev.reports_accuracy else (0,)}

    parts = run_chunks(n_chunks, compute, store=store, progress=progress,
                       evaluator=ev, desc="curve", shapes=rows,
                       args={"m": "curve", "alphas": alphas.tolist(), "d": tensor_digest(d),
                             "obj": obj.identity(), "chunk": chunk})
    losses = torch.cat([p["loss"] for p in parts]).tolist()
    accs = torch.cat([p["acc"] for p in parts]).tolist() if ev.reports_accuracy else None
    return CurveResult(alphas=alphas.tolist(), losses=losses, accuracies=accs, center_loss=obj.loss(),
                       direction={"kind": "custom", "norm": float(d.double().norm())}, evaluator=ev.describe(),
                       seconds=elapsed(), objective=obj.describe())


class GivenDirections:
    """Directions given as rows of a (k, P) matrix (a direction file: `perturb.direction_files`), used as they are,
    in the place of a `DirectionSpace`."""

    def __init__(self, obj: Objective, rows: torch.Tensor, label: dict):
        self.rows = rows.to(obj.device, obj.dtype)
        self.kind, self.ignore, self.label = "file", "none", dict(label)

    def make(self, seed: int, indices) -> torch.Tensor:
        if max(indices, default=0) >= self.rows.shape[0]:
            raise FlatlensError(f"the direction file holds {self.rows.shape[0]} directions; {max(indices) + 1} asked "
                                f"(--directions {self.rows.shape[0]} reads them all)")
        return self.rows[list(indices)].clone()

    def orthogonal_pair(self, seed: int):
        D = self.make(seed, [0, 1])
        return D[0], D[1]

    def describe(self) -> dict:
        return self.label


def _space(obj, kind, ignore, n, eig_tol, given):
    return given if given is not None else DirectionSpace(obj, kind, ignore, n=n, eig_tol=eig_tol)


def random_curves(obj: Objective, alphas, *, kind: str = "filter", n_directions: int = 10, seed: int = 0,
                  ignore: str | None = None, strategy: str = "auto", precision: str = "fp32",
                  evaluator: Evaluator | None = None, store: str | None = None, progress: bool = False,
                  directions_per_chunk: int = 1, eig_tol: float = 1e-3,
                  given: GivenDirections | None = None) -> CurvesResult:
    """Curves along n seeded random directions of `kind` (eigen: the n top Hessian eigenvectors; `given`: the rows
    of a direction file); mean and 95 % CI of F per alpha over the random directions (eigen and given directions are
    not a random sample: their mean carries no interval, stderr and ci95 are NaN)."""
    elapsed = timer()
    alphas = _check_grid(alphas, "alphas")
    if n_directions < 1:
        raise FlatlensError("n_directions must be >= 1")
    space = _space(obj, kind, ignore, n_directions, eig_tol, given)
    kind = space.kind
    ev = _evaluator(obj, evaluator, strategy, precision)
    a_t = torch.as_tensor(alphas, dtype=obj.dtype, device=obj.device)
    k = min(directions_per_chunk, max_points(obj))
    n_chunks = -(-n_directions // k)

    def compute(i):
        idx = list(range(i * k, min(n_directions, (i + 1) * k)))
        D = space.make(seed, idx)
        per_alpha = [ev(a * D) for a in a_t]  # one (k, P) matrix at a time
        lo = torch.stack([p[0] for p in per_alpha], dim=1)
        acc = torch.stack([p[1] for p in per_alpha], dim=1) if ev.reports_accuracy else torch.empty(0)
        return {"loss": lo, "acc": acc}

    def rows(i):  # the directions of chunk i x the grid, accuracies where the loss has them
        m = min(n_directions, (i + 1) * k) - i * k
        return {"loss": (m, len(alphas)), "acc": (m, len(alphas)) if ev.reports_accuracy else (0,)}

    parts = run_chunks(n_chunks, compute, store=store, progress=progress,
                       evaluator=ev, desc=f"{kind} curves", shapes=rows,
                       args={"m": "curves", "alphas": alphas.tolist(), "kind": kind, "n": n_directions,
                             "seed": seed, "ignore": space.ignore, "obj": obj.identity(), "k": k,
                             **({"given": space.describe().get("sha256")} if given is not None else {}),
                             **({"eig_tol": eig_tol} if kind == "eigen" else {})})
    L = torch.cat([p["loss"] for p in parts]).numpy()
    A = torch.cat([p["acc"] for p in parts]).tolist() if ev.reports_accuracy else None
    m, se, lo, hi = mean_ci(L, axis=0)
    if kind in ("eigen", "file"):  # not a random sample of directions: a mean, no interval over them
        se, lo, hi = (np.full_like(m, np.nan) for _ in range(3))
    return CurvesResult(alphas=alphas.tolist(), mean=m.tolist(), stderr=se.tolist(),
                        ci95=list(zip(lo.tolist(), hi.tolist())), losses=L.tolist(), accuracies=A,
                        center_loss=obj.loss(), n_directions=n_directions, seed=seed,
                        direction={"kind": kind, "ignore": space.ignore, "seed": seed, **space.describe()},
                        evaluator=ev.describe(), seconds=elapsed(), objective=obj.describe())


def surface_2d(obj: Objective, dx, dy, xs, ys, *, strategy: str = "auto", precision: str = "fp32",
               evaluator: Evaluator | None = None, store: str | None = None, progress: bool = False,
               chunk: int = 64) -> SurfaceResult:
    """F(w + a dx + b dy) on the grid xs x ys; losses[j][i] is at (xs[i], ys[j])."""
    elapsed = timer()
    xs, ys = _check_grid(xs, "xs"), _check_grid(ys, "ys")
    fx, fy = as_flat_direction(obj, dx), as_flat_direction(obj, dy)
    ev = _evaluator(obj, evaluator, strategy, precision)
    A, B = np.meshgrid(xs, ys)  # (ny, nx)
    a_t = torch.as_tensor(A.reshape(-1), dtype=obj.dtype, device=obj.device)
    b_t = torch.as_tensor(B.reshape(-1), dtype=obj.dtype, device=obj.device)
    n = a_t.numel()
    chunk = min(chunk, max_points(obj))
    n_chunks = -(-n // chunk)

    def compute(i):
        s = slice(i * chunk, min(n, (i + 1) * chunk))
        lo, acc = ev(a_t[s, None] * fx[None] + b_t[s, None] * fy[None])
        return {"loss": lo, "acc": acc if acc is not None else torch.empty(0)}

    def rows(i):  # the grid points of chunk i, accuracies where the loss has them
        m = min(n, (i + 1) * chunk) - i * chunk
        return {"loss": (m,), "acc": (m,) if ev.reports_accuracy else (0,)}

    parts = run_chunks(n_chunks, compute, store=store, progress=progress,
                       evaluator=ev, desc="surface", shapes=rows,
                       args={"m": "surface", "xs": xs.tolist(), "ys": ys.tolist(),
                             "dx": tensor_digest(fx), "dy": tensor_digest(fy),
                             "obj": obj.identity(), "chunk": chunk})
    L = torch.cat([p["loss"] for p in parts]).reshape(len(ys), len(xs))
    acc = torch.cat([p["acc"] for p in parts]).reshape(len(ys), len(xs)).tolist() if ev.reports_accuracy else None
    return SurfaceResult(xs=xs.tolist(), ys=ys.tolist(), losses=L.tolist(), accuracies=acc,
                         center_loss=obj.loss(), direction={"kind": "custom"}, evaluator=ev.describe(),
                         seconds=elapsed(), objective=obj.describe())


def random_surface(obj: Objective, xs, ys, *, kind: str = "filter", seed: int = 0, ignore: str | None = None,
                   eig_tol: float = 1e-3, given: GivenDirections | None = None, **kw) -> SurfaceResult:
    """surface_2d along a seeded, orthogonalized pair of `kind` directions (eigen: the two top Hessian eigenvectors;
    `given`: the first two rows of a direction file), recorded in the result."""
    space = _space(obj, kind, ignore, 2, eig_tol, given)
    dx, dy = space.orthogonal_pair(seed)
    res = surface_2d(obj, dx, dy, xs, ys, **kw)
    res.direction = {"kind": space.kind, "ignore": space.ignore, "seed": seed,
                     "orthogonalized": space.kind not in ("eigen", "file"), **space.describe()}
    return res
