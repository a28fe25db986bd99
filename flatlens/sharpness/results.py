"""Result dataclasses of sharpness measures."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..perturb.results import DirectionMeansResult, PerturbedResult
from ..results import Result, register


@register
@dataclass
class FlatnessResult(DirectionMeansResult):
    """SWAD-style local flatness: mean over unit directions u of F(w + r u) - F(w), per radius r."""
    radii: list[float]
    increases: list[list[float]]    # (n_directions, n_radii)


@register
@dataclass
class WorstCaseResult(Result):
    """max_{||delta|| <= rho} F(w + delta) - F(w) by projected gradient ascent (a lower bound)."""
    rho: float
    adaptive: bool
    increase: float
    loss: float
    center_loss: float
    perturbation_norm: float   # ||delta||_2 reached
    scaled_norm: float         # ||delta / |w| ||_2 (adaptive) or ||delta||_2
    steps: int
    restarts: int
    seed: int
    trajectory: list[float]    # best increase after each step (of the best restart)
    n_grad: int
    seconds: float
    objective: dict = field(default_factory=dict)


@register
@dataclass
class QuantNoiseResult(PerturbedResult):
    """E_D[F(w + D)] - F(w) for D_i ~ U(-s_i/2, s_i/2) against its prediction (1/24) sum_i s_i^2 H_ii."""
    measured: float
    measured_stderr: float
    measured_ci95: tuple[float, float] | None
    predicted: float
    predicted_stderr: float
    predicted_ci95: tuple[float, float] | None
    predicted_df: float                        # Hutch++ residual probes - 1
    ratio: float
    ratio_ci95: tuple[float, float] | None     # Fieller; None when the predicted CI includes 0
    ratio_bounded: bool
    n_samples: int                             # noise draws (antithetic pairs)
    n_evaluations: int
    estimator: str                             # "antithetic" or "plain"
    prediction_hvp: int                        # HVPs spent on (1/24) tr(S H S)
    prediction_converged: bool                 # its CI met pred_rtol within pred_max_hvp
    seed: int
    n_noisy_params: int
    steps_rule: str                            # how the steps s_i were chosen
    steps_sha256: str
    samples: list[float]                       # per-draw increases (paired across models with the same seed)


@register
@dataclass
class SharpnessResult(Result):
    """Worst-case sharpness per data batch (tml-epfl's protocol), plain and adaptive."""
    worst_case: list[WorstCaseResult]
    adaptive: list[WorstCaseResult]
    batches: int


@dataclass
class Probe:
    """One noise scale tried: its draws (antithetic pairs), the mean rise with its standard error, the decision."""
    sigma: float
    n_draws: int
    mean: float
    stderr: float
    decision: str


@register
@dataclass
class PacBayesSigma(Result):
    """The largest noise scale with a mean rise <= target, its bracket (a >= 95 % confidence interval: Bonferroni
    over every look of every probe) and every probe it took."""
    noise: str                    # "plain" (u ~ N(0, s^2 I)) or "magnitude" (u_i ~ N(0, s^2 w_i^2 + eps^2))
    quantity: str                 # "error" (0-1 training error) or "loss"
    target: float                 # the stated rise
    sigma: float                  # sqrt(lo * hi)
    ci95: tuple[float, float]     # [lo, hi]
    flatness: float               # 1 / sigma^2, Jiang et al.'s measure (lower is flatter)
    flatness_ci95: tuple[float, float]
    stopped_on: str               # "rtol" (the end gaps within 1 + rtol) or "max_probes"
    probes: list[Probe]
    n_draws: int                  # antithetic pairs over all probes
    n_evaluations: int
    alpha: float
    alpha_per_look: float
    rtol: float
    eps: float
    center_value: float           # R(w)
    seed: int
    seconds: float
    evaluator: dict = field(default_factory=dict)
    objective: dict = field(default_factory=dict)


@register
@dataclass
class PacBayes(Result):
    """PAC-Bayes flatness of one checkpoint: the plain sigma and the magnitude-aware sigma'."""
    plain: PacBayesSigma
    magnitude: PacBayesSigma
