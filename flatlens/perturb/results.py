"""The fields that every measurement made by the perturbation engine carries, as bases of its results."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..results import Result


@dataclass(kw_only=True)
class PerturbedResult(Result):
    """F at the centre, how the evaluator ran (its `describe()`), the wall time and the objective's record."""
    center_loss: float
    evaluator: dict
    seconds: float
    objective: dict = field(default_factory=dict)


@dataclass(kw_only=True)
class DirectionMeansResult(PerturbedResult):
    """Means over seeded random directions, one per step along them, with their standard errors and 95 %
    t-intervals (directions are the unit of replication)."""
    mean: list[float]
    stderr: list[float]
    ci95: list[tuple[float, float]]
    n_directions: int
    seed: int
    direction: dict
