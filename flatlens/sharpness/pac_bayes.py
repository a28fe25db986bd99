"""PAC-Bayes flatness (Jiang et al. 2019, "Fantastic generalization measures and where to find them", their
pacbayes.flatness and pacbayes.mag.flatness): the largest Gaussian noise scale at which the expected loss (or 0-1
error) rises by a stated amount `target`,

    plain            sigma  = max { s : m(s) <= target },  m(s) = E_u[R(w + u)] - R(w),  u   ~ N(0, s^2 I)
    magnitude-aware  sigma' = max { s : m(s) <= target },                                 u_i ~ N(0, s^2 w_i^2 + eps^2)

R the training error (Jiang et al.: a rise of 0.1; their models sat at zero training error, so "error <= 0.1") or
the loss. The generalization measures they rank are 1/sigma^2 and 1/sigma'^2 (lower is flatter). For a quadratic at
its minimum m(s) = (s^2 / 2) tr(H) (plain), (1/2) sum_i H_ii (s^2 w_i^2 + eps^2) (magnitude-aware).

m(s) is estimated by antithetic pairs (R(w + u) + R(w - u)) / 2 - R(w) (u and -u have the same law; the first-order
term cancels in each pair), u = scale(s) * z_j with z_j ~ N(0, I) drawn per draw j from the seed: the same z_j at
every probe s (and, with the same seed, on every model compared).

The search: a bisection in log s whose every step is a sequential test. At a probe s, pairs come in blocks that
double (block, 2 block, ... up to max_draws); after each block the t-interval of m(s) - target (n - 1 df) at level
1 - alpha / (max_probes * looks) decides "below" (s < sigma: the interval lies under 0), "above" (s > sigma: over
0) or draws more; at max_draws the probe is "undecided" (m(s) is within its Monte Carlo noise of the target).
Bonferroni over every look of every probe: all decisions are right with probability >= 1 - alpha, and then, m being
increasing in s, sigma lies in [lo, hi] = [largest s decided below, smallest s decided above]: that bracket is the
confidence interval (level >= 95 %, measurement noise: the noise draws). A probe whose draws show no spread (no
prediction changed under any draw) is decided only after max_draws. Probes start at sigma0 and move by the
factor `expand` until both sides are decided, then bisect the wider end gap between the bracket and the undecided
probes inside it (the bracket can only shrink there), and stop when that gap is within 1 + rtol, or after
max_probes. The point estimate is sqrt(lo * hi).
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .._util import FlatlensError, check_number, derive_seed, timer
from .. import stats
from ..perturb import DirectionSpace, Evaluator, max_points
from .results import PacBayesSigma, Probe

KINDS = ("plain", "magnitude")
QUANTITIES = ("error", "loss")
BELOW, ABOVE, UNDECIDED = "below", "above", "undecided"


def _looks(block: int, max_draws: int) -> list[int]:
    """Cumulative draw counts at which a probe is tested: block, 2 block, 4 block, ..., max_draws."""
    out, n = [], block
    while n < max_draws:
        out.append(n)
        n *= 2
    return out + [max_draws]


def decide(rises: np.ndarray, target: float, level_alpha: float, final: bool) -> str:
    """Below / above / undecided from the t-interval of mean(rises) - target at level 1 - level_alpha (n - 1 df);
    no spread decides only on the last look."""
    if not np.all(np.isfinite(rises)):  # the loss overflowed under this noise: far above any stated rise
        return ABOVE
    n = len(rises)
    m = float(np.mean(rises))
    se = float(np.std(rises, ddof=1) / math.sqrt(n)) if n > 1 else math.inf
    if se == 0 and not final:
        return UNDECIDED
    h = stats.t_crit(n - 1, 1 - level_alpha) * se
    if m + h < target:
        return BELOW
    if m - h > target:
        return ABOVE
    return UNDECIDED


def bisect_sigma(rise: Callable[[float, int, int], np.ndarray], *, target: float, sigma0: float, alpha: float = 0.05,
                 rtol: float = 0.05, block: int = 8, max_draws: int = 64, max_probes: int = 16, expand: float = 4.0,
                 sigma_max: float = math.inf):
    """The search of the module docstring. `rise(s, start, stop)`: the per-draw rises for draws start..stop-1 at
    scale s. Returns (lo, hi, probes, stopped_on, alpha_per_look); stopped_on "unreachable" when the next scale up
    would pass `sigma_max` with no scale decided above the target."""
    looks = _looks(block, max_draws)
    a_look = alpha / (max_probes * len(looks))
    lo, hi = 0.0, math.inf
    probes: list[Probe] = []
    undecided: list[float] = []

    def probe(s: float) -> str:
        got = np.zeros(0)
        decision = UNDECIDED
        for k, n in enumerate(looks):
            got = np.concatenate([got, np.asarray(rise(s, len(got), n), dtype=np.float64)])
            decision = decide(got, target, a_look, final=k == len(looks) - 1)
            if decision != UNDECIDED:
                break
        se = float(np.std(got, ddof=1) / math.sqrt(len(got))) if len(got) > 1 else math.inf
        probes.append(Probe(sigma=float(s), n_draws=len(got), mean=float(np.mean(got)), stderr=se, decision=decision))
        return decision

    def next_scale():
        inside = sorted(u for u in undecided if lo < u < hi)
        if math.isinf(hi):
            return max([lo] + inside) * expand if (lo > 0 or inside) else sigma0
        if lo == 0:
            return min([hi] + inside) / expand
        gaps = [(lo, inside[0]), (inside[-1], hi)] if inside else [(lo, hi)]
        a, b = max(gaps, key=lambda g: g[1] / g[0])
        return None if b / a <= 1 + rtol else math.sqrt(a * b)

    stopped = "max_probes"
    for _ in range(max_probes):
        s = next_scale()
        if s is None:
            stopped = "rtol"
            break
        if s > sigma_max:
            stopped = "unreachable"
            break
        d = probe(s)
        if d == BELOW:
            lo = max(lo, s)
        elif d == ABOVE:
            hi = min(hi, s)
        else:
            undecided.append(s)
    else:
        if math.isfinite(hi) and next_scale() is None:
            stopped = "rtol"
    return lo, hi, probes, stopped, a_look


def noise_scale(obj, kind: str, sigma: float, eps: float) -> torch.Tensor:
    """Per-parameter standard deviation of u: sigma (plain), sqrt(sigma^2 w_i^2 + eps^2) (magnitude-aware)."""
    w = obj.flatten(obj.center)
    if kind == "plain":
        return torch.full_like(w, sigma)
    return torch.sqrt(sigma ** 2 * w * w + eps ** 2)


def pac_bayes_sigma(obj, *, kind: str = "plain", quantity: str = "error", target: float = 0.1, sigma0: float | None = None,
                    alpha: float = 0.05, rtol: float = 0.05, block: int = 8, max_draws: int = 64,
                    max_probes: int = 16, eps: float = 1e-3, seed: int = 0, strategy: str = "auto",
                    precision: str = "fp32", evaluator: Evaluator | None = None) -> PacBayesSigma:
    """PAC-Bayes sigma (kind "plain") or sigma' ("magnitude") of `obj`: the module docstring. sigma0: the first
    scale tried (default 0.01 plain, 0.1 magnitude-aware)."""
    if kind not in KINDS:
        raise FlatlensError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if quantity not in QUANTITIES:
        raise FlatlensError(f"quantity must be one of {', '.join(QUANTITIES)}; got {quantity!r}")
    if quantity == "error" and not obj.is_classification:
        raise FlatlensError("the error rise needs a classification objective (outputs (n, classes), integer labels); "
                            "use quantity='loss'")
    check_number("target", target, lo=0, lo_open=True, hi=1 if quantity == "error" else None)
    check_number("alpha", alpha, lo=0, hi=1, lo_open=True, hi_open=True)
    check_number("rtol", rtol, lo=0, lo_open=True)
    check_number("block", block, lo=2, integer=True)
    check_number("max_draws", max_draws, lo=block, integer=True)
    check_number("max_probes", max_probes, lo=2, integer=True)
    check_number("eps", eps, lo=0)
    sigma0 = (0.01 if kind == "plain" else 0.1) if sigma0 is None else sigma0
    check_number("sigma0", sigma0, lo=0, lo_open=True)
    elapsed = timer()
    ev = evaluator if evaluator is not None else Evaluator(obj, strategy=strategy, precision=precision)
    space = DirectionSpace(obj, "gaussian")
    stream = derive_seed(seed, "pac-bayes", kind)
    f0 = obj.loss() if quantity == "loss" else 1.0 - obj.accuracy()
    counts = {"evals": 0}

    pairs = max(1, max_points(obj) // 2)  # pairs per evaluator call: (2 pairs, P) perturbations in memory at once

    def rise(s, start, stop):
        scale = noise_scale(obj, kind, s, eps)
        out = []
        for a in range(start, stop, pairs):
            U = space.raw(stream, range(a, min(stop, a + pairs))) * scale   # z_j ~ N(0, I), the same at every s
            losses, acc = ev(torch.cat([U, -U]))
            counts["evals"] += 2 * len(U)
            r = losses.numpy() if quantity == "loss" else 1.0 - acc.numpy()
            r = np.where(np.isnan(r), np.inf, r)                            # a NaN loss: overflowed
            k = len(U)
            out.append(0.5 * (r[:k] + r[k:]) - f0)                          # (R(w+u) + R(w-u)) / 2 - R(w)
        return np.concatenate(out)

    # past these scales the noise is ten times the weights (plain: their root mean square; magnitude-aware: each
    # weight's own), which leaves nothing of the model: a rise not reached there is not reached at all
    w = obj.flatten(obj.center)
    ceiling = 10.0 * float(w.double().pow(2).mean().sqrt()) if kind == "plain" else 10.0
    lo, hi, probes, stopped, a_look = bisect_sigma(rise, target=target, sigma0=min(sigma0, ceiling), alpha=alpha,
                                                   rtol=rtol, block=block, max_draws=max_draws, max_probes=max_probes,
                                                   sigma_max=ceiling)
    what = "error" if quantity == "error" else "loss"
    if not math.isfinite(hi):
        why = (f"up to noise ten times the weights (sigma {ceiling:.3g}) it rose by {probes[-1].mean:.3g} at most"
               if stopped == "unreachable" else f"no scale was shown above it within {max_probes} probes")
        raise FlatlensError(f"PAC-Bayes {kind} sigma: the {what} ({f0:.3g} at the centre) never rose by {target:g}: "
                            f"{why}; lower the target, or use the loss")
    if lo == 0:
        raise FlatlensError(f"PAC-Bayes {kind} sigma: the {what} rose by more than {target:g} at every scale tried down "
                            f"to {min(p.sigma for p in probes):.3g} within {max_probes} probes")
    sigma = math.sqrt(lo * hi)
    return PacBayesSigma(noise=kind, quantity=quantity, target=float(target), sigma=float(sigma), ci95=(lo, hi),
                         flatness=1.0 / sigma ** 2,
                         flatness_ci95=(1.0 / hi ** 2, 1.0 / lo ** 2),
                         stopped_on=stopped, probes=probes, n_draws=sum(p.n_draws for p in probes),
                         n_evaluations=counts["evals"], alpha=alpha, alpha_per_look=a_look, rtol=rtol, eps=eps,
                         center_value=float(f0), seed=seed, seconds=elapsed(), evaluator=ev.describe(),
                         objective=obj.describe())
