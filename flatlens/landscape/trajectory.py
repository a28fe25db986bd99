"""A training run's trajectory on the plane of its top two PCA directions, over the loss surface of that plane (the
view of Li et al. 2018's plot_trajectory.py):

    M = [w_t - c]_t           one row per snapshot and the centre c (the measured weights, the run's checkpoint)
    PCA of M (centred; numpy's SVD of M - mean(M)):  d_1, d_2 the top right singular vectors (unit norm),
        explained variance ratio_i = s_i^2 / sum_j s_j^2,   explained variance_i = s_i^2 / (rows - 1)
    path      (x_t, y_t) = (d_1 . (w_t - c), d_2 . (w_t - c))      (orthonormal directions: the 'cos' projection)
    surface   F(c + x d_1 + y d_2) on a grid that spans the path, widened by `margin` of its extent on each side.

Each direction's sign is fixed so that the run's first snapshot lies at negative coordinates (the path runs towards
the centre from the lower left)."""
from __future__ import annotations

import numpy as np
import torch

from .._util import FlatlensError
from .curves import grid, surface_2d
from .results import TrajectoryResult


def _columns(obj, snaps) -> torch.Tensor:
    """The snapshots' flat weights (k, P) in the objective's parameter order (by name; shapes checked)."""
    offsets, start = {}, 0
    for n, s in zip(snaps.names, snaps.shapes):
        size = int(torch.Size(s).numel())
        offsets[n] = (start, start + size, tuple(s))
        start += size
    W = snaps.weights()
    parts = []
    for n, shape in zip(obj.names, obj.shapes):
        if n not in offsets:
            raise FlatlensError(f"the snapshots hold no parameter {n!r} (another architecture?)")
        a, b, s = offsets[n]
        if s != tuple(shape):
            raise FlatlensError(f"the snapshots' {n} has shape {s}, the model's {tuple(shape)}")
        parts.append(W[:, a:b])
    return torch.cat(parts, dim=1).to(torch.float64)


def pca_directions(obj, snaps) -> dict:
    """The top-2 PCA directions of the trajectory around `obj`'s centre (module docstring): d1, d2 (flat, the
    objective's dtype), the path's coordinates (snapshots, then the centre at (0, 0)), every component's explained
    variance ratio, explained variance and singular value."""
    W = _columns(obj, snaps)
    c = obj.flatten(obj.center).detach().double().cpu()
    M = torch.cat([W - c[None, :], torch.zeros(1, W.shape[1], dtype=torch.float64)]).numpy()
    if M.shape[0] < 3:
        raise FlatlensError("a trajectory needs at least two snapshots")
    Mc = M - M.mean(axis=0, keepdims=True)
    _, s, Vt = np.linalg.svd(Mc, full_matrices=False)
    if s.size < 2 or s[1] <= 1e-12 * max(s[0], 1e-300):
        raise FlatlensError("the snapshots span fewer than two directions (did the weights move?)")
    D = Vt[:2].copy()
    coords = M @ D.T                                  # (rows, 2): projections of w_t - c
    for i in range(2):
        if coords[0, i] > 0:
            D[i], coords[:, i] = -D[i], -coords[:, i]
    var = s ** 2
    d1, d2 = (torch.from_numpy(D[i]).to(obj.device, obj.dtype) for i in range(2))
    return {"d1": d1, "d2": d2,
            "x": coords[:, 0].tolist(), "y": coords[:, 1].tolist(), "ratio": (var / var.sum()).tolist(),
            "variance": (var / (M.shape[0] - 1)).tolist(), "singular": s.tolist()}


def _span(v, margin):
    lo, hi = float(np.min(v)), float(np.max(v))
    return lo - margin * (hi - lo), hi + margin * (hi - lo)


def trajectory(obj, snaps, *, points: int = 21, margin: float = 0.25, label: dict | None = None,
               **kw) -> TrajectoryResult:
    """The surface on the trajectory's top-2 PCA plane with the path projected on it (module docstring); `kw` go to
    `surface_2d` (strategy, precision, store, progress); `label` (the snapshot file, its hash) is recorded."""
    pca = pca_directions(obj, snaps)
    x0, x1 = _span(pca["x"], margin)
    y0, y1 = _span(pca["y"], margin)
    if y1 - y0 <= 1e-12 * (x1 - x0):  # a straight path: a square window on its line
        y0, y1 = -(x1 - x0) / 2, (x1 - x0) / 2
    res = surface_2d(obj, pca["d1"], pca["d2"], grid(x0, x1, points), grid(y0, y1, points), **kw)
    return TrajectoryResult(
        xs=res.xs, ys=res.ys, losses=res.losses, accuracies=res.accuracies, center_loss=res.center_loss,
        evaluator=res.evaluator, seconds=res.seconds, objective=res.objective,
        direction={"kind": "pca", "snapshots": len(snaps.steps), "dtype": snaps.dtype, "every": snaps.every,
                   "base_step": snaps.base_step, **(label or {})},
        path_x=pca["x"], path_y=pca["y"], path_steps=list(snaps.steps) + [None],
        explained_variance_ratio=pca["ratio"], explained_variance=pca["variance"], singular_values=pca["singular"])
