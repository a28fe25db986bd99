"""Result dataclasses of landscape measurements."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..results import Result, register


@register
@dataclass
class CurveResult(Result):
    alphas: list[float]
    losses: list[float]
    accuracies: list[float] | None
    center_loss: float
    direction: dict
    evaluator: dict
    seconds: float
    objective: dict = field(default_factory=dict)


@register
@dataclass
class CurvesResult(Result):
    """Many random directions: per-direction curves and their mean with a 95 % CI per alpha."""
    alphas: list[float]
    mean: list[float]
    stderr: list[float]
    ci95: list[tuple[float, float]]
    losses: list[list[float]]       # (n_directions, n_alphas)
    accuracies: list[list[float]] | None
    center_loss: float
    n_directions: int
    seed: int
    direction: dict
    evaluator: dict
    seconds: float
    objective: dict = field(default_factory=dict)


@register
@dataclass
class SurfaceResult(Result):
    xs: list[float]
    ys: list[float]
    losses: list[list[float]]       # (len(ys), len(xs))
    accuracies: list[list[float]] | None
    center_loss: float
    direction: dict
    evaluator: dict
    seconds: float
    objective: dict = field(default_factory=dict)
