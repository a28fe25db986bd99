"""Files other tools read: HDF5 in the layout of loss-landscape (Li et al. 2018, github.com/tomgoldstein/
loss-landscape), under its key names, so its plot_1D.py, plot_2D.py and h52vtp.py (ParaView) read flatlens's files:

  surface / curve file   xcoordinates (nx,), ycoordinates (ny,) for 2D, {split}_loss and {split}_acc (accuracy in
                         %, as its evaluation.py reports it) for split train / test: shape (nx,) in 1D; in 2D shape
                         (nx, ny) holding the values in its raveled order, point k at (x[k % nx], y[k // nx]), which
                         is flatlens's (ny, nx) array with row j at y[j] (its files carry that order; for square grids
                         Z[j, i] is the loss at (x[i], y[j]), what its plot_2D.py contours), and dir_file (a string)
  direction file         groups xdirection, ydirection (its net_plotter.load_directions), each one dataset per
                         parameter tensor, named "0", "1", ... in parameter order; further directions (curves along
                         many) as groups direction2, direction3, ...
  trajectory             proj_xcoord, proj_ycoord (its projection.py) and explained_variance_ratio_,
                         explained_variance_, singular_values_ (its PCA direction file)

One file may hold all of these (pass it as surf_file, dir_file and proj_file to plot_2D.py). flatlens adds what the
layout lacks under keys of its own (`flatlens` attribute: JSON of what was measured; {split}_loss_directions: every
curve; {split}_excess, {split}_barrier for an interpolation). Writes are atomic (the file is built in memory)."""
from __future__ import annotations

import hashlib
import io
import json
import os

import numpy as np
import torch

from .._util import FlatlensError, atomic_write_bytes

GROUPS = ("xdirection", "ydirection")


def _h5py():
    try:
        import h5py
    except ImportError:  # a dependency; one line if an environment lacks it
        raise FlatlensError("HDF5 files need h5py (pip install h5py)") from None
    return h5py


def direction_group(i: int) -> str:
    return GROUPS[i] if i < len(GROUPS) else f"direction{i}"


def _write(path: str, fill) -> None:
    h5py = _h5py()
    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        fill(f)
    atomic_write_bytes(path, buf.getvalue())


def _put_directions(f, rows: np.ndarray, names, shapes) -> None:
    for i, row in enumerate(rows):
        g = f.create_group(direction_group(i))
        start = 0
        for j, shape in enumerate(shapes):
            n = int(np.prod(shape)) if len(shape) else 1
            g.create_dataset(str(j), data=row[start:start + n].reshape(shape))
            start += n
    f.attrs["flatlens_names"] = json.dumps(list(names))


def write_directions(path: str, rows, names, shapes, meta: dict | None = None) -> None:
    """Directions (rows of a (k, P) matrix over the parameters `names` of `shapes`, in that order) as a direction
    file; `meta` (what they are) goes into the `flatlens` attribute."""
    R = np.asarray(torch.as_tensor(rows).detach().cpu().numpy() if isinstance(rows, torch.Tensor) else rows)
    if R.ndim != 2 or R.shape[1] != sum(int(np.prod(s)) if len(s) else 1 for s in shapes):
        raise FlatlensError(f"directions of shape {R.shape} do not fit {len(names)} parameters")

    def fill(f):
        _put_directions(f, R, names, [tuple(s) for s in shapes])
        f.attrs["flatlens"] = json.dumps(meta or {}, default=str)
    _write(path, fill)


def file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_directions(path: str, names, shapes) -> tuple[np.ndarray, dict]:
    """The directions of a direction file (flatlens's, or loss-landscape's `dir_type weights` files) as rows of a
    (k, P) float64 matrix over `names` of `shapes`, and what the file says of them (its `flatlens` attribute, its
    sha256). Tensors are matched by name where the file records names, else by position; every shape is checked."""
    h5py = _h5py()
    if not os.path.isfile(path):
        raise FlatlensError(f"{path}: no such direction file")
    try:
        f = h5py.File(path, "r")
    except OSError:
        raise FlatlensError(f"{path}: not an HDF5 file") from None
    with f:
        groups = [direction_group(i) for i in range(len(f)) if direction_group(i) in f]
        if not groups:
            raise FlatlensError(f"{path}: no direction groups (xdirection, ydirection, ...) in the file")
        file_names = json.loads(f.attrs["flatlens_names"]) if "flatlens_names" in f.attrs else None
        meta = json.loads(f.attrs["flatlens"]) if "flatlens" in f.attrs else {}
        rows = []
        for gname in groups:
            g = f[gname]
            tensors = [np.asarray(g[str(j)][()], dtype=np.float64) for j in range(len(g))]
            if file_names is not None:
                if sorted(file_names) != sorted(names) or len(file_names) != len(tensors):
                    missing = sorted(set(names) - set(file_names))[:3]
                    raise FlatlensError(f"{path}: its directions are over other parameters (missing "
                                        f"{', '.join(missing)}{'' if missing else '; others extra'})")
                by_name = dict(zip(file_names, tensors))
                tensors = [by_name[n] for n in names]
            elif len(tensors) != len(names):
                raise FlatlensError(f"{path}: {gname} holds {len(tensors)} tensors; the model has {len(names)} "
                                    "parameters")
            for n, t, s in zip(names, tensors, shapes):
                if tuple(t.shape) != tuple(s):
                    raise FlatlensError(f"{path}: {gname} entry for {n} has shape {tuple(t.shape)}, the parameter "
                                        f"{tuple(s)}")
            rows.append(np.concatenate([t.reshape(-1) for t in tensors]))
    return np.stack(rows), {**meta, "file": path, "sha256": file_sha256(path), "count": len(rows)}


def _grid(values, nx, ny) -> np.ndarray:
    """flatlens's (ny, nx) grid in loss-landscape's (nx, ny) dataset (the same raveled order)."""
    return np.asarray(values, dtype=np.float64).reshape(ny, nx).reshape(nx, ny)


def write_landscape(path: str, records, *, directions=None, names=None, shapes=None) -> None:
    """The landscape records of one command (one per split: curves, a slice, a trajectory or an interpolation) as
    one file in loss-landscape's layout; with `directions` (rows over `names` / `shapes`), the file is also their
    direction file."""
    from .results import CurvesResult, InterpolationResult, SurfaceResult, TrajectoryResult
    if not records:
        raise FlatlensError("nothing to write: no landscape records")
    first = records[0].result

    def fill(f):
        meta = {"records": [{"split": r.split, "metric": r.metric, "checkpoint": r.checkpoint,
                             "checkpoint_sha256": r.checkpoint_sha256, "weights": r.weights_label,
                             "direction": getattr(r.result, "direction", None),
                             "samples": r.data.get("n"), "seed": r.seed} for r in records]}
        f["dir_file"] = os.path.basename(path) if directions is not None else ""
        if isinstance(first, SurfaceResult):
            xs, ys = np.asarray(first.xs), np.asarray(first.ys)
            f["xcoordinates"], f["ycoordinates"] = xs, ys
            for r in records:
                f[f"{r.split}_loss"] = _grid(r.result.losses, len(xs), len(ys))
                if r.result.accuracies is not None:
                    f[f"{r.split}_acc"] = 100 * _grid(r.result.accuracies, len(xs), len(ys))
            if isinstance(first, TrajectoryResult):
                f["proj_xcoord"], f["proj_ycoord"] = np.asarray(first.path_x), np.asarray(first.path_y)
                f["explained_variance_ratio_"] = np.asarray(first.explained_variance_ratio)
                f["explained_variance_"] = np.asarray(first.explained_variance)
                f["singular_values_"] = np.asarray(first.singular_values)
        elif isinstance(first, CurvesResult):
            f["xcoordinates"] = np.asarray(first.alphas)
            for r in records:
                L = np.asarray(r.result.losses)
                f[f"{r.split}_loss"] = np.asarray(r.result.mean)
                f[f"{r.split}_loss_directions"] = L
                if r.result.accuracies is not None:
                    f[f"{r.split}_acc"] = 100 * np.asarray(r.result.accuracies).mean(axis=0)
            meta["note"] = "{split}_loss is the mean over the directions; {split}_loss_directions every curve"
        elif isinstance(first, InterpolationResult):
            f["xcoordinates"] = np.asarray(first.alphas)
            for r in records:
                f[f"{r.split}_loss"] = np.asarray(r.result.losses)
                if r.result.accuracies is not None:
                    f[f"{r.split}_acc"] = 100 * np.asarray(r.result.accuracies)
                f[f"{r.split}_excess"] = np.asarray(r.result.excess)
                f[f"{r.split}_barrier"] = np.asarray([r.result.barrier, r.result.barrier_alpha])
            meta["note"] = "xcoordinates: a in (1 - a) w_A + a w_B; {split}_barrier: [barrier, the a where it peaks]"
        else:
            raise FlatlensError(f"no HDF5 layout for a {type(first).__name__}")
        if directions is not None:
            R = directions.detach().cpu().numpy() if isinstance(directions, torch.Tensor) else np.asarray(directions)
            _put_directions(f, R, names, [tuple(s) for s in shapes])
        f.attrs["flatlens"] = json.dumps(meta, default=str)
    _write(path, fill)
