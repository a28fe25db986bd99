"""Result dataclasses of landscape measurements."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..perturb.results import DirectionMeansResult, PerturbedResult
from ..results import Result, register


@register
@dataclass
class CurveResult(PerturbedResult):
    alphas: list[float]
    losses: list[float]
    accuracies: list[float] | None
    direction: dict


@register
@dataclass
class CurvesResult(DirectionMeansResult):
    """Many random directions: per-direction curves and their mean with a 95 % CI per alpha."""
    alphas: list[float]
    losses: list[list[float]]       # (n_directions, n_alphas)
    accuracies: list[list[float]] | None


@register
@dataclass
class SurfaceResult(PerturbedResult):
    xs: list[float]
    ys: list[float]
    losses: list[list[float]]       # (len(ys), len(xs))
    accuracies: list[list[float]] | None
    direction: dict


@register
@dataclass
class TrajectoryResult(SurfaceResult):
    """A 2D slice on the top two PCA directions of a training run's snapshots (landscape.trajectory), with the run's
    path projected on it: path_x / path_y per snapshot (step in path_steps) and the centre last (step None)."""
    path_x: list[float] = field(default_factory=list)
    path_y: list[float] = field(default_factory=list)
    path_steps: list[int | None] = field(default_factory=list)
    explained_variance_ratio: list[float] = field(default_factory=list)   # every component, descending
    explained_variance: list[float] = field(default_factory=list)
    singular_values: list[float] = field(default_factory=list)


@register
@dataclass
class InterpolationResult(Result):
    """The loss along (1 - a) w_A + a w_B (landscape.interpolate): the curve, its excess over the straight line
    between the endpoint losses, the barrier max_{a in [0, 1]} excess(a) and where it peaks, each with its
    simultaneous 95 % interval over the evaluation samples (None where the loss gives no per-sample values), the
    BatchNorm policy and the quantization rule that made every point, and what the endpoints were."""
    alphas: list[float]
    losses: list[float]
    accuracies: list[float] | None
    excess: list[float]                     # L(a) - [(1 - a) L(0) + a L(1)]
    excess_stderr: list[float] | None       # per point, over the samples (pointwise; for bands, not for the max)
    barrier: float
    barrier_ci95: tuple[float, float] | None
    barrier_alpha: float
    barrier_alpha_range: tuple[float, float] | None
    endpoint_losses: tuple[float, float]
    n_samples: int
    interval: str                           # how the intervals were made, in words ("" where there are none)
    bn: dict                                # policy, batches and samples of the recomputation, their source
    quantization: str                       # the rule that made each point's weights
    endpoints: dict                         # {"a": ..., "b": ...}: path, sha256, weights of each end
    seed: int
    seconds: float
    objective: dict = field(default_factory=dict)


def write_npz(path: str, records) -> None:
    """The grids of landscape records as one .npz (atomically): `xs` (the steps along the first axis), and per
    split `{split}_losses` and `{split}_accuracies` (where the loss has an accuracy)."""
    import io

    import numpy as np

    from .._util import atomic_write_bytes
    arrays = {}
    for rec in records:
        r = rec.result
        arrays["xs"] = np.asarray(r.alphas if isinstance(r, CurvesResult) else r.xs)
        arrays[f"{rec.split}_losses"] = np.asarray(r.losses)
        if r.accuracies is not None:
            arrays[f"{rec.split}_accuracies"] = np.asarray(r.accuracies)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())
