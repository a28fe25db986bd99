"""Landscape entries of the registry: 1D loss curves and 2D slices along random directions."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .flatness import EvalSettings
from .registry import Metric, Row, RowSpec, register_metric, setting, t_row


def _kind(default):
    from ..perturb.directions import KINDS
    return setting(default, "direction kind", "--kind", choices=KINDS)


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
    from .. import landscape
    return landscape.random_curves(obj, landscape.grid(s.range[0], s.range[1], s.points), kind=s.kind,
                                   ignore=s.ignore, n_directions=s.n_directions, seed=ctx.seed, strategy=s.strategy,
                                   precision=s.precision, store=ctx.store, progress=ctx.progress)


def _curve_rows(r, s) -> list[Row]:
    L = np.asarray(r.losses) - r.center_loss
    edge = 0.5 * (L[:, 0] + L[:, -1])  # mean increase at the two ends of each curve
    pairing = f"{r.direction.get('kind')}:{r.n_directions}:{r.seed}:{r.objective.get('num_params')}:{r.alphas}"
    return [t_row("edge", edge, pairing=pairing)]


register_metric(Metric(
    name="curve", summary="1D loss curves along random (filter-normalized) directions",
    command="landscape", dim=1, role="illustrative", settings=CurveSettings, compute=_curve_compute,
    rows=_curve_rows, specs=(RowSpec("edge", "curve increase at the range's ends", "nats"),),
    brief=lambda r: f"{r.n_directions} directions x {len(r.alphas)} points",
    cost="about 1.5 s",
    plans={"full": lambda: CurveSettings(range=(-0.5, 0.5), points=11, n_directions=6),
           "quick": lambda: CurveSettings(range=(-0.5, 0.5), points=7, n_directions=3)},
    figures=("fig4_filter_normalized_curves",)))


@dataclass
class SurfaceSettings(GridSettings):
    pass


def _surface_compute(obj, s: SurfaceSettings, ctx):
    from .. import landscape
    xs = landscape.grid(s.range[0], s.range[1], s.points)
    return landscape.random_surface(obj, xs, xs, kind=s.kind, ignore=s.ignore, seed=ctx.seed, strategy=s.strategy,
                                    precision=s.precision, store=ctx.store, progress=ctx.progress)


def _surface_rows(r, s) -> list[Row]:
    inc = np.asarray(r.losses) - r.center_loss
    return [Row("mean-increase", float(inc.mean()), n=int(inc.size))]  # one slice: no CI, no test


register_metric(Metric(
    name="surface", summary="a 2D loss slice along an orthogonalized pair of random directions",
    command="landscape", dim=2, role="illustrative", settings=SurfaceSettings, compute=_surface_compute,
    rows=_surface_rows, specs=(RowSpec("mean-increase", "2D slice mean increase (one slice, no CI)", "nats"),),
    brief=lambda r: f"{len(r.xs)} x {len(r.ys)} grid",
    cost="about 3 s (21 x 21 points)",
    plans={"full": lambda: SurfaceSettings(range=(-0.5, 0.5), points=17),
           "quick": lambda: SurfaceSettings(range=(-0.5, 0.5), points=7)},
    figures=("fig5_surfaces_2d", "fig5b_surface_3d")))
