"""Result dataclasses of the curvature estimators."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..results import Result, register


@register
@dataclass
class EigenResult(Result):
    values: list[float]
    which: str
    method: str
    n_hvp: int
    converged: bool
    seconds: float
    seed: int
    tol: float
    backend: str = "flatlens"
    residuals: list[float] = field(default_factory=list)  # ||H v - theta v|| / |theta| per value
    bounds: list[float] = field(default_factory=list)     # per value, the bound of kind `bound`: an eigenvalue lies within
    bound: str = "residual"      # "residual" (||H v - theta v||, always a bound) or "gap" (min(that, that^2 / gap))
    residual_bounds: list[float] = field(default_factory=list)  # ||H v - theta v|| per value, whatever `bound` is
    gaps: list = field(default_factory=list)  # per value, the gap estimated from the other Ritz values (None: none)
    stopped_on: str = ""         # "ritz residual" / "ritz residual^2/gap" (<= tol |theta|), "invariant subspace", ...
    objective: dict = field(default_factory=dict)


@register
@dataclass
class TraceResult(Result):
    value: float
    stderr: float
    ci95: tuple[float, float]
    n_hvp: int
    n_probes: int
    converged: bool
    seconds: float
    seed: int
    method: str
    rtol: float
    sketch_size: int = 0
    per_layer: dict = field(default_factory=dict)  # name -> {"value", "stderr", "ci95"}
    backend: str = "flatlens"
    objective: dict = field(default_factory=dict)


@register
@dataclass
class DensityResult(Result):
    grid: list[float]
    density: list[float]
    nodes: list[list[float]]      # Ritz values per run
    weights: list[list[float]]    # quadrature weights per run
    sigma: float
    n_iter: int
    n_runs: int
    n_hvp: int
    seconds: float
    seed: int
    objective: dict = field(default_factory=dict)

    @property
    def mean(self) -> float:
        """Estimated mean eigenvalue, tr(H)/d (exact quadrature mean, no broadening error)."""
        import numpy as np
        return float(np.mean([np.dot(w, v) for w, v in zip(self.weights, self.nodes)]))


@register
@dataclass
class DiagonalResult(Result):
    values: list[float] = dataclasses.field(repr=False)  # flat, in the objective's parameter order
    stderr: list[float] = dataclasses.field(repr=False)
    names: list[str] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    n_probes: int = 0
    n_hvp: int = 0
    seconds: float = 0.0
    seed: int = 0
    objective: dict = field(default_factory=dict)


@register
@dataclass
class ExtremeEigenvalues(Result):
    """Extreme eigenvalues of H: the asked end (`main`) and, optionally, the most negative one (`bottom`)."""
    main: EigenResult
    bottom: EigenResult | None = None


@register
@dataclass
class DiagonalSummary(Result):
    """The Hessian diagonal and its per-probe sums g'Hg (the trace's Hutchinson samples)."""
    diagonal: DiagonalResult
    probe_sums: list[float]


@register
@dataclass
class FisherTraces(Result):
    """Traces of the Fisher with labels drawn from the model (type 2, Monte Carlo) and with the observed labels."""
    sampled: TraceResult
    empirical: TraceResult
    mc_samples: int
