"""Result dataclasses of landscape measurements."""
from __future__ import annotations

from dataclasses import dataclass

from ..perturb.results import DirectionMeansResult, PerturbedResult
from ..results import register


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
