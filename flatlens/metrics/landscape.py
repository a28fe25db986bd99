"""Landscape entries of the registry: 1D loss curves and 2D slices along random directions, along the Hessian's
top eigenvectors (--kind eigen), along directions read from a file (--directions-file: the same directions for every
model, their hash recorded), or, for a slice, on the plane of a training run's trajectory (--trajectory)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .._util import FlatlensError
from .flatness import EvalSettings
from .registry import Metric, Row, RowSpec, register_metric, setting, t_row

if TYPE_CHECKING:
    from ..checkpoint import Checkpoint


def _kind(default):
    from ..perturb.directions import KINDS
    return setting(default, "direction kind (eigen: the top Hessian eigenvectors, unit norm, eigenvalues recorded)",
                   "--kind", choices=KINDS)


@dataclass
class GridSettings(EvalSettings):
    """A grid of steps along random directions (curves and slices)."""
    kind: str = _kind("filter")
    ignore: str | None = setting(None, "bias/BN policy (default: biasbn for filter/layer kinds)", "--ignore",
                                 choices=("biasbn", "none"))
    range: tuple = setting((-1.0, 1.0), "step range LO HI along each direction", "--range", nargs=2,
                           increasing=True)
    points: int = setting(21, "grid points per axis (0 is always on the grid)", "--points", min=2, max=1001)
    eig_tol: float = setting(1e-3, "--kind eigen: the eigenvectors' relative Lanczos tolerance", "--eigen-tol", gt=0,
                             max=0.5)
    directions_file: str | None = setting(None, "an HDF5 direction file (loss-landscape's layout; flatlens landscape "
                                          "--save-directions writes one) whose directions are used as they are, for "
                                          "every model, instead of drawing them (--kind is then ignored)",
                                          "--directions-file")
    directions_sha256: str = setting("", "sha256 of the direction file (set when it is read)")


@dataclass
class CurveSettings(GridSettings):
    n_directions: int = setting(10, "random directions (curves) / directions (flatness)", "--directions", min=2)


def _read_directions(settings: list, name: str):
    """A direction file named by the settings, read once per call (its hash written into the settings)."""
    own = settings[0].of(name) if settings else None
    if own is None or not own.directions_file:
        return None
    from ..landscape.h5 import file_sha256
    sha = file_sha256(own.directions_file) if _exists(own.directions_file) else None
    if sha is None:
        raise FlatlensError(f"--directions-file {own.directions_file}: no such file")
    for s in settings:
        s.of(name).directions_sha256 = sha
    return own.directions_file


def _exists(path) -> bool:
    import os
    return os.path.isfile(path)


def _given(obj, path):
    """The directions of a file over this objective's parameters (curves.GivenDirections)."""
    import torch

    from ..landscape.curves import GivenDirections
    from ..landscape.h5 import read_directions
    rows, meta = read_directions(path, obj.names, [tuple(x) for x in obj.shapes])
    written = {k: v for k, v in meta.items() if k not in ("file", "sha256", "count")}
    return GivenDirections(obj, torch.from_numpy(rows), {"file": path, "sha256": meta["sha256"],
                                                         "count": meta["count"], "written_as": written or None})


def _curve_prepare(ckpts, settings):
    return {"directions": _read_directions(settings, "curve")}


def _curve_compute(obj, s: CurveSettings, ctx):
    from .. import landscape
    path = (ctx.prepared or {}).get("directions")
    return landscape.random_curves(obj, landscape.grid(s.range[0], s.range[1], s.points), kind=s.kind,
                                   ignore=s.ignore, n_directions=s.n_directions, seed=ctx.seed, strategy=s.strategy,
                                   precision=s.precision, store=ctx.store, progress=ctx.progress, eig_tol=s.eig_tol,
                                   given=_given(obj, path) if path else None)


def _curve_rows(r, s) -> list[Row]:
    L = np.asarray(r.losses) - r.center_loss
    edge = 0.5 * (L[:, 0] + L[:, -1])  # mean increase at the two ends of each curve
    if r.direction.get("kind") in ("eigen", "file"):  # chosen directions, not drawn ones: no interval over them
        return [Row("edge", float(edge.mean()), n=int(edge.size))]
    pairing = f"{r.direction.get('kind')}:{r.n_directions}:{r.seed}:{r.objective.get('num_params')}:{r.alphas}"
    return [t_row("edge", edge, pairing=pairing)]


register_metric(Metric(
    name="curve", summary="1D loss curves along random (filter-normalized) directions",
    command="landscape", dim=1, role="illustrative", settings=CurveSettings, compute=_curve_compute,
    rows=_curve_rows, specs=(RowSpec("edge", "curve increase at the range's ends", "nats"),),
    brief=lambda r: f"{r.n_directions} directions x {len(r.alphas)} points",
    cost="about 1.5 s", prepare=_curve_prepare,
    plans={"full": lambda: CurveSettings(range=(-0.5, 0.5), points=11, n_directions=6),
           "quick": lambda: CurveSettings(range=(-0.5, 0.5), points=7, n_directions=3)},
    figures=("fig4_filter_normalized_curves",)))


@dataclass
class SurfaceSettings(GridSettings):
    trajectory: str | None = setting(None, "a training run's snapshot file (flatlens train --snapshot-every N), or its "
                                     "checkpoint: the slice on the top-2 PCA directions of the run's snapshots, the "
                                     "path projected on it (the grid spans the path: --range, --kind and "
                                     "--directions-file do not apply)", "--trajectory")
    trajectory_sha256: str = setting("", "sha256 of the snapshot file (set when it is read)")
    trajectory_margin: float = setting(0.25, "--trajectory: the grid spans the path plus this fraction of its extent "
                                       "on each side", "--trajectory-margin", min=0, max=10)

    def check(self) -> None:
        if self.trajectory and self.directions_file:
            raise FlatlensError("--trajectory and --directions-file both name the slice's directions: give one")


def _surface_prepare(ckpts, settings):
    """--trajectory: the snapshot file read once, checked to belong to every checkpoint measured (its hash written
    into the settings); --directions-file: read once."""
    own = settings[0].of("surface") if settings else None
    out = {"directions": _read_directions(settings, "surface"), "snapshots": None}
    if own is not None and own.trajectory:
        from ..landscape.h5 import file_sha256
        from ..train.snapshots import load_snapshots
        snaps = load_snapshots(own.trajectory)
        path = snaps.path
        for c in ckpts:
            if snaps.checkpoint_sha256 and c.sha256 != snaps.checkpoint_sha256:
                raise FlatlensError(f"--trajectory {own.trajectory}: its snapshots were taken by the run that wrote "
                                    f"checkpoint {snaps.checkpoint_sha256[:12]}..., not by {c.path}")
        sha = file_sha256(path)
        for s in settings:
            s.of("surface").trajectory_sha256 = sha
        out["snapshots"] = (snaps, {"file": path, "sha256": sha})
    return out


def _surface_compute(obj, s: SurfaceSettings, ctx):
    from .. import landscape
    prepared = ctx.prepared or {}
    kw = dict(strategy=s.strategy, precision=s.precision, store=ctx.store, progress=ctx.progress)
    if prepared.get("snapshots") is not None:
        snaps, label = prepared["snapshots"]
        return landscape.trajectory(obj, snaps, points=s.points, margin=s.trajectory_margin, label=label, **kw)
    xs = landscape.grid(s.range[0], s.range[1], s.points)
    path = prepared.get("directions")
    return landscape.random_surface(obj, xs, xs, kind=s.kind, ignore=s.ignore, seed=ctx.seed, eig_tol=s.eig_tol,
                                    given=_given(obj, path) if path else None, **kw)


def _surface_rows(r, s) -> list[Row]:
    from ..landscape.results import TrajectoryResult
    inc = np.asarray(r.losses) - r.center_loss
    rows = [Row("mean-increase", float(inc.mean()), n=int(inc.size))]  # one slice: no CI, no test
    if isinstance(r, TrajectoryResult):  # exact for these snapshots: no interval
        rows += [Row("pc1", r.explained_variance_ratio[0], n=len(r.path_x)),
                 Row("pc2", r.explained_variance_ratio[1], n=len(r.path_x))]
    return rows


register_metric(Metric(
    name="surface", summary="a 2D loss slice along an orthogonalized pair of random directions",
    command="landscape", dim=2, role="illustrative", settings=SurfaceSettings, compute=_surface_compute,
    rows=_surface_rows, specs=(RowSpec("mean-increase", "2D slice mean increase (one slice, no CI)", "nats"),
                               RowSpec("pc1", "trajectory: explained variance of the 1st PCA direction", "", None),
                               RowSpec("pc2", "trajectory: explained variance of the 2nd PCA direction", "", None)),
    brief=lambda r: f"{len(r.xs)} x {len(r.ys)} grid, {r.direction.get('kind')} directions",
    cost="about 3 s (21 x 21 points)", prepare=_surface_prepare,
    plans={"full": lambda: SurfaceSettings(range=(-0.5, 0.5), points=17),
           "quick": lambda: SurfaceSettings(range=(-0.5, 0.5), points=7)},
    figures=("fig5_surfaces_2d", "fig5b_surface_3d")))


def directions_used(ckpt: Checkpoint, x, y, name: str, settings, *, device="cpu"):
    """The directions a landscape entry's measurement of `ckpt` on the samples (x, y) goes along, made again by the
    same rule (the seeded stream, the eigen solver, the file, or the trajectory's PCA): rows of a (k, P) matrix
    over the objective's parameters, that objective, and what they are (for `flatlens landscape --save-directions`)."""
    import torch

    from ..checkpoint import objective_for
    from ..perturb.directions import DirectionSpace
    common, s = settings.common, settings.of(name)
    obj = objective_for(ckpt, x, y, device=device, weights=common.weights, batch_size=common.batch_size)
    if name == "surface" and s.trajectory:
        from ..landscape.trajectory import pca_directions
        from ..train.snapshots import load_snapshots
        pca = pca_directions(obj, load_snapshots(s.trajectory))
        return torch.stack([pca["d1"], pca["d2"]]), obj, {"kind": "pca", "explained_variance_ratio": pca["ratio"][:2]}
    n = s.n_directions if name == "curve" else 2
    if s.directions_file:
        given = _given(obj, s.directions_file)
        return given.make(common.seed, range(n)), obj, {"kind": "file", **given.describe()}
    space = DirectionSpace(obj, s.kind, s.ignore, n=n, eig_tol=s.eig_tol)
    rows = space.make(common.seed, range(n)) if name == "curve" else torch.stack(space.orthogonal_pair(common.seed))
    return rows, obj, {"kind": s.kind, "ignore": space.ignore, "seed": common.seed, **space.describe()}
