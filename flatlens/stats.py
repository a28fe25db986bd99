"""The statistics behind every interval, test and verdict flatlens prints (../shared/statistics.md).

Each function states its formula; each has a simulation test with known truth in tests/test_stats.py.
Two questions, never mixed: *measurement noise* of one checkpoint (probes, directions, noise draws) and
*training noise* of a method (seeds). Every estimate and test records which one it answers in `source`.

scipy.stats supplies the distributions (t, noncentral t, chi-square); what it lacks here (Welch with
degrees of freedom carried from different estimators, Fieller's interval, the two-level estimate, Holm on a
mixed family, the power-based smallest detectable difference) is written out below.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy import optimize, stats

LEVEL = 0.95
ALPHA = 0.05
POWER = 0.80
MEASUREMENT = "measurement"


def over_seeds(n: int) -> str:
    return f"over {n} seeds"


@dataclass
class Estimate:
    """A point estimate with its standard error, degrees of freedom and 95 % CI.

    df = inf means the value is exact (stderr 0); otherwise df is the estimator's own (n - 1, or Welch's)."""
    value: float
    stderr: float
    df: float
    ci95: tuple[float, float] | None
    n: int
    source: str = MEASUREMENT
    method: str = "t-interval"
    within_stderr: float | None = None    # two-level estimates: the measurement part, reported beside


NO_SPREAD = "not testable: no spread"   # zero variance is not certainty (statistics.md): never p = 0


@dataclass
class TestResult:
    """A two-sided test of a difference (b - a, or a mean against mu0), with its CI and p-value. p is NaN, the CI
    None and `note` says why where the data cannot be tested (no spread, fewer than two values)."""
    test: str
    estimate: float
    stderr: float
    df: float
    ci95: tuple[float, float] | None
    statistic: float
    p: float
    n: list[int] = field(default_factory=list)
    source: str = MEASUREMENT
    mde80: float | None = None            # smallest |difference| detected with 80 % power, at alpha / family size
    note: str = ""

    @property
    def testable(self) -> bool:
        return not math.isnan(self.p)


@dataclass
class RatioEstimate:
    """a / b with Fieller's 95 % interval; `bounded` is False when b's CI includes 0 (no finite interval)."""
    value: float
    ci95: tuple[float, float] | None
    bounded: bool
    df: float
    method: str = "Fieller"
    source: str = MEASUREMENT


def t_crit(df: float, level: float = LEVEL) -> float:
    """Two-sided Student-t quantile t_{(1+level)/2, df}; the normal quantile for df = inf."""
    if df is None or not df > 0:
        return math.inf
    if math.isinf(df):
        return float(stats.norm.ppf(0.5 + level / 2))
    return float(stats.t.ppf(0.5 + level / 2, df))


def _ci(value: float, se: float, df: float, level: float = LEVEL):
    if not (math.isfinite(se) and df > 0):
        return None
    h = t_crit(df, level) * se
    return (value - h, value + h)


def _p_two_sided(t: float, df: float) -> float:
    if math.isnan(t):
        return math.nan
    if math.isinf(df):
        return float(2 * stats.norm.sf(abs(t)))
    return float(2 * stats.t.sf(abs(t), df))


def estimate(value: float, stderr: float, df: float, n: int, *, source: str = MEASUREMENT,
             method: str = "t-interval") -> Estimate:
    """Wrap an estimate whose standard error and df come from elsewhere: CI = value +- t_{df} * stderr."""
    return Estimate(float(value), float(stderr), float(df), _ci(value, stderr, df), int(n), source, method)


def t_interval(values: Sequence[float], *, source: str = MEASUREMENT) -> Estimate:
    """Mean of n values:  xbar +- t_{0.975, n-1} * s / sqrt(n)   (s the sample sd; never 1.96)."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    n = x.size
    if n == 0:
        return Estimate(math.nan, math.nan, 0.0, None, 0, source)
    m = float(x.mean())
    if n < 2:
        return Estimate(m, math.inf, 0.0, None, 1, source)
    se = float(x.std(ddof=1) / math.sqrt(n))
    return estimate(m, se, n - 1, n, source=source)


def mean_ci_rows(x: np.ndarray):
    """Column-wise t-intervals of a (n, k) array: (mean, stderr, lo, hi) arrays, t with n-1 df."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    mean = x.mean(axis=0)
    if n < 2:
        inf = np.full_like(mean, np.inf)
        return mean, inf, -inf, inf
    se = x.std(axis=0, ddof=1) / math.sqrt(n)
    h = t_crit(n - 1) * se
    return mean, se, mean - h, mean + h


def satterthwaite(va: float, dfa: float, vb: float, dfb: float) -> float:
    """Welch-Satterthwaite df of va + vb, each variance estimate with its own df:
        df = (va + vb)^2 / (va^2 / dfa + vb^2 / dfb)."""
    num = (va + vb) ** 2
    den = (va * va / dfa if va > 0 else 0.0) + (vb * vb / dfb if vb > 0 else 0.0)
    if den == 0:
        return math.inf
    return num / den


def welch(a: Estimate, b: Estimate, *, source: str | None = None) -> TestResult:
    """Difference b - a of two independent estimates:
        se = sqrt(se_a^2 + se_b^2),  df by Welch-Satterthwaite from each one's own df,
        t = (b - a) / se,  CI = (b - a) +- t_{0.975, df} se."""
    diff = b.value - a.value
    va, vb = a.stderr ** 2, b.stderr ** 2
    se = math.sqrt(va + vb)
    src = source or (a.source if a.source == b.source else f"{a.source} / {b.source}")
    if not math.isfinite(se) or a.df <= 0 or b.df <= 0:
        return TestResult("Welch t", diff, se, 0.0, None, math.nan, math.nan, [a.n, b.n], src)
    if va == 0 or vb == 0:  # one group without spread: its variance is unknown, not 0 (statistics.md)
        note = NO_SPREAD if se == 0 else NO_SPREAD + " in one group"
        return TestResult("Welch t", diff, se, 0.0, None, math.nan, math.nan, [a.n, b.n], src, note=note)
    df = satterthwaite(va, a.df, vb, b.df)
    t = diff / se
    return TestResult("Welch t", diff, se, df, _ci(diff, se, df), t, _p_two_sided(t, df), [a.n, b.n], src,
                      detectable_difference(se, df))


def welch_samples(a: Sequence[float], b: Sequence[float], *, source: str = MEASUREMENT) -> TestResult:
    """Welch's test of mean(b) - mean(a) from two independent samples (each with n-1 df)."""
    return welch(t_interval(a, source=source), t_interval(b, source=source), source=source)


def paired(a: Sequence[float], b: Sequence[float], *, source: str = MEASUREMENT) -> TestResult:
    """Paired values (the same seeded directions / probes on both): the t-interval of d_i = b_i - a_i,
        dbar +- t_{0.975, n-1} s_d / sqrt(n)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths; got {a.size} and {b.size}")
    return one_sample(b - a, source=source, test="paired t")


def one_sample(values: Sequence[float], mu0: float = 0.0, *, source: str = MEASUREMENT,
               test: str = "one-sample t") -> TestResult:
    """t = (xbar - mu0) / (s / sqrt(n)) with n-1 df; the CI is that of the mean."""
    e = t_interval(values, source=source)
    diff = e.value - mu0
    if e.n < 2:
        return TestResult(test, diff, math.inf, 0.0, None, math.nan, math.nan, [e.n], source,
                          note="not testable: fewer than 2 values")
    if e.stderr == 0:
        return TestResult(test, diff, 0.0, e.df, None, math.nan, math.nan, [e.n], source, note=NO_SPREAD)
    t = diff / e.stderr
    lo, hi = e.ci95
    return TestResult(test, diff, e.stderr, e.df, (lo - mu0, hi - mu0), t, _p_two_sided(t, e.df), [e.n],
                      source, detectable_difference(e.stderr, e.df))


@dataclass
class MaxEstimate:
    """max_j of m column means (a loss barrier: the largest mean excess over a grid) with simultaneous intervals.

    `ci95` covers max_j mu_j with probability >= 95 % (Bonferroni: it is a probability statement, conservative);
    `argmax_set` holds the columns that could be the argmax at that level (their upper limits reach the max's
    lower limit)."""
    value: float
    argmax: int
    ci95: tuple[float, float] | None
    argmax_set: list[int]
    crit: float                 # the critical value t_{1 - 0.025/m', n - 1}
    m: int                      # m': the columns with spread that the Bonferroni level is shared by
    n: int
    method: str = "simultaneous Student t (Bonferroni over the grid points)"
    source: str = MEASUREMENT


def max_of_means(x, *, level: float = LEVEL, source: str = MEASUREMENT) -> MaxEstimate:
    """The largest of m means of paired columns (n samples x m grid points) and a simultaneous interval:

        estimate  B = max_j xbar_j,   c = t_{1 - (1 - level) / (2 m'), n - 1}   (m' columns with spread)
        CI        [max_j (xbar_j - c se_j),  max_j (xbar_j + c se_j)]
        argmax set  {j : xbar_j + c se_j >= max_k (xbar_k - c se_k)}

    If every column's interval covers its mean (probability >= level, by Bonferroni), max_j mu_j lies between the
    two maxima and the true argmax lies in the set. Columns
    without spread (a = 0 and a = 1 of an excess curve: exactly 0) are exact and take no share of the level.
    A plain t-interval at the estimated argmax would ignore that the argmax was chosen on the same samples."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError("max_of_means needs an (n, m) array with m >= 1")
    n, _ = x.shape
    mean = x.mean(axis=0)
    j = int(np.argmax(mean))
    if n < 2:
        return MaxEstimate(float(mean[j]), j, None, list(range(x.shape[1])), math.inf, x.shape[1], n, source=source)
    se = x.std(axis=0, ddof=1) / math.sqrt(n)
    spread = se > 0
    m = max(int(spread.sum()), 1)
    c = float(stats.t.ppf(1 - (1 - level) / (2 * m), n - 1))
    lo, hi = mean - c * se, mean + c * se
    low = float(lo.max())
    keep = [int(k) for k in np.flatnonzero(hi >= low)]
    return MaxEstimate(float(mean[j]), j, (low, float(hi.max())), keep, c, m, n, source=source)


def max_of_means_test(x, *, source: str = MEASUREMENT, test: str = "simultaneous t over the grid (Bonferroni)"
                      ) -> tuple[MaxEstimate, TestResult]:
    """Is the largest of m column means above 0 (a loss barrier over seeds: rows the seeds, columns the grid)?

        t_j = xbar_j / se_j,   p = min(1, 2 m' min_j P(T_{n-1} > t_j))       (m' columns with spread)

    p < 0.05 exactly when the lower end of `max_of_means`'s simultaneous interval is above 0, and under the null
    (every mu_j <= 0) p < alpha with probability <= alpha / 2: Bonferroni, conservative. The mean of per-row maxima
    is no such test: each row's maximum is >= its exact columns' 0, so it sits above 0 even where no mu_j does."""
    mo = max_of_means(x, source=source)
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        return mo, TestResult(test, mo.value, math.inf, 0.0, None, math.nan, math.nan, [n], source,
                              note="not testable: fewer than 2 values")
    se = x.std(axis=0, ddof=1) / math.sqrt(n)
    spread = se > 0
    if not spread.any():
        return mo, TestResult(test, mo.value, 0.0, float(n - 1), None, math.nan, math.nan, [n], source,
                              note=NO_SPREAD)
    tj = np.where(spread, x.mean(axis=0) / np.where(spread, se, 1.0), -np.inf)
    k = int(np.argmax(tj))
    p = float(min(1.0, 2 * mo.m * stats.t.sf(tj[k], n - 1)))
    # the statistic is the largest t_j (the one p comes from); the stderr is the column's at the mean curve's peak
    return mo, TestResult(test, mo.value, float(se[mo.argmax]), float(n - 1), mo.ci95, float(tj[k]), p, [n],
                          source)


def over_seeds_estimate(values: Sequence[float], within: Sequence[float | None] | None = None) -> Estimate:
    """A method's value over its S independently trained models (seeds): the t-interval of the per-seed values
    on S - 1 df (the between-seed variance covers the measurement noise of each value), with the measurement part
    reported beside it:  within_stderr = sqrt(sum_s se_s^2) / S   (None unless every seed has a finite se)."""
    out = t_interval(values, source=over_seeds(len(values)))
    if out.n >= 2 and out.stderr == 0:  # seeds that agree exactly: no spread to build an interval on, not certainty
        out.ci95 = None
    ses = list(within or [])
    out.within_stderr = (math.sqrt(sum(s * s for s in ses)) / len(ses)
                         if ses and len(ses) == len(values) and all(s is not None and math.isfinite(s) for s in ses)
                         else None)
    return out


def holm_family(pvalues: Sequence[float], exclusive: Sequence | None = None) -> tuple[list[float | None], float]:
    """One family of hypotheses adjusted together (compare's rows printed together, reproduce's confirmatory
    claims): Holm's step-down adjustment (`holm`; with `exclusive`, the logical constraint of at most one true
    hypothesis per group), None where a hypothesis is untestable (p NaN), and the level alpha / m that the
    adjustment's first step asks of every member, m the members given (the groups with `exclusive`, else the
    hypotheses): the level at which a member's smallest detectable difference is planned."""
    adj = holm(pvalues, exclusive)
    members = len(set(exclusive)) if exclusive is not None else len(adj)
    return [None if math.isnan(p) else p for p in adj], ALPHA / max(members, 1)


def significant(p_adjusted: float | None, alpha: float = ALPHA) -> bool:
    """An adjusted p-value that rejects its null at the family's level (untested, None or NaN, never does)."""
    return p_adjusted is not None and not math.isnan(p_adjusted) and p_adjusted < alpha


def two_level(per_seed: Sequence[Sequence[float]]) -> Estimate:
    """Seeds x directions: the seed is the unit of replication.

        m_s = mean of seed s's direction values,   estimate = mean_s m_s,
        CI = estimate +- t_{0.975, S-1} * sd(m_s) / sqrt(S)              (between-seed variance)
        within_stderr = sqrt(sum_s se_s^2) / S                            (the measurement part, reported)
    Directions drawn on one model are never pooled with other seeds' draws as independent replicates."""
    per = [t_interval(v) for v in per_seed]
    out = over_seeds_estimate([e.value for e in per], [e.stderr for e in per])
    out.method = "two-level (mean of per-seed means)"
    return out


def fieller(a: Estimate, b: Estimate, *, level: float = LEVEL) -> RatioEstimate:
    """Fieller's interval for theta = A / B from independent estimates a, b (standard errors va, vb):
    the theta with (a - theta b)^2 <= t^2 (va + theta^2 vb), i.e. the roots of
        theta^2 (b^2 - t^2 vb) - 2 a b theta + (a^2 - t^2 va) = 0,
    t = t_{0.975, df}, df by Welch-Satterthwaite of va + theta^2 vb at the point estimate. If b^2 <= t^2 vb
    (b's CI includes 0) the set is unbounded: no finite interval."""
    src = a.source if a.source == b.source else f"{a.source} / {b.source}"
    value = a.value / b.value if b.value != 0 else math.nan
    va, vb = a.stderr ** 2, b.stderr ** 2
    th = value if math.isfinite(value) else 0.0
    df = satterthwaite(va, a.df, th * th * vb, b.df) if (a.df > 0 and b.df > 0) else 0.0
    if not (df > 0 and math.isfinite(va) and math.isfinite(vb)):
        return RatioEstimate(value, None, False, df, source=src)
    t2 = t_crit(df, level) ** 2
    qa = b.value ** 2 - t2 * vb
    if qa <= 0:
        return RatioEstimate(value, None, False, df, source=src)
    qb = -2 * a.value * b.value
    qc = a.value ** 2 - t2 * va
    disc = qb * qb - 4 * qa * qc
    disc = max(disc, 0.0)
    r1 = (-qb - math.sqrt(disc)) / (2 * qa)
    r2 = (-qb + math.sqrt(disc)) / (2 * qa)
    return RatioEstimate(value, (min(r1, r2), max(r1, r2)), True, df, source=src)


def holm(pvalues: Sequence[float], exclusive: Sequence | None = None) -> list[float]:
    """Holm's step-down adjustment: sort p ascending, p_adj(i) = max_{j<=i} min(1, t_j p_(j)), with t_j the
    number of hypotheses that can still be true when the j - 1 smaller ones are false: m - j + 1 (Holm), or, with
    `exclusive` (a group label per hypothesis, at most one true hypothesis per group: a claim's "no difference"
    and "not equivalent" nulls), the number of groups with a hypothesis left (Shaffer 1986, S1). Either controls
    the family-wise error under any dependence. NaN p-values (untestable rows) stay NaN and do not count."""
    p = np.asarray(pvalues, dtype=np.float64)
    ok = ~np.isnan(p)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return out.tolist()
    groups = list(range(len(p))) if exclusive is None else list(exclusive)
    order = idx[np.argsort(p[idx], kind="stable")]
    left = set(int(i) for i in idx)
    running = 0.0
    for i in order:
        t = len({groups[j] for j in left})
        running = max(running, min(1.0, t * p[i]))
        out[i] = running
        left.discard(int(i))
    return out.tolist()


def tost_paired(a: Sequence[float], b: Sequence[float], margin: float, *, relative: bool,
                source: str = MEASUREMENT) -> TestResult:
    """Equivalence of paired values by two one-sided tests (Schuirmann 1987) against a margin stated in advance.
    relative: |mean(b) / mean(a) - 1| < margin, tested exactly on the paired linear contrasts
        upper:  H0 mean(b - (1 + m) a) >= 0   (t on the values b_i - (1 + m) a_i, n - 1 df)
        lower:  H0 mean(b - (1 - m) a) <= 0
    absolute: |mean(b - a)| < margin, the contrasts b_i - a_i -+ m. p = the larger one-sided p (an
    intersection-union test: no adjustment between the two). The estimate is mean(b)/mean(a) - 1 (relative) or
    mean(b - a); the CI is the 90 % interval that TOST at 0.05 checks against (-m, m): Fieller's paired interval
    of the ratio minus 1, or the t-interval of the differences. Zero spread: not testable."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape:
        raise ValueError(f"paired samples need equal lengths; got {a.size} and {b.size}")
    n = a.size
    name = f"TOST, paired, margin ±{100 * margin:g} %" if relative else f"TOST, paired, margin ±{margin:g}"
    if relative:
        upper, lower = b - (1 + margin) * a, b - (1 - margin) * a
        est = float(b.mean() / a.mean() - 1) if a.mean() != 0 else math.nan
        ci = paired_ratio_interval(a, b, level=1 - 2 * ALPHA)
        ci = None if ci is None else (ci[0] - 1, ci[1] - 1)
    else:
        d = b - a
        upper, lower = d - margin, d + margin
        est = float(d.mean()) if n else math.nan
        e = t_interval(d)
        ci = _ci(e.value, e.stderr, e.df, 1 - 2 * ALPHA) if n >= 2 else None
    if n < 2 or float(np.std(upper, ddof=1)) == 0 or float(np.std(lower, ddof=1)) == 0:
        return TestResult(name, est, math.nan, max(n - 1, 0), None, math.nan, math.nan, [n], source,
                          note=NO_SPREAD if n >= 2 else "not testable: fewer than 2 values")
    se_u = float(np.std(upper, ddof=1) / math.sqrt(n))
    se_l = float(np.std(lower, ddof=1) / math.sqrt(n))
    t_u, t_l = float(upper.mean()) / se_u, float(lower.mean()) / se_l
    p_u, p_l = float(stats.t.cdf(t_u, n - 1)), float(stats.t.sf(t_l, n - 1))
    p = max(p_u, p_l)
    se = float(np.std(b - a, ddof=1) / math.sqrt(n))
    return TestResult(name, est, se, n - 1, ci, t_u if p_u >= p_l else t_l, p, [n], source)


def paired_ratio_interval(a: Sequence[float], b: Sequence[float], level: float = LEVEL):
    """Fieller's interval for theta = mean(b) / mean(a) from paired values: the theta whose contrast b - theta a
    has a mean the t-test does not reject,
        (B - theta A)^2 <= t^2 (s_bb - 2 theta s_ab + theta^2 s_aa) / n,
    a quadratic in theta; None when it is unbounded (A's interval includes 0)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = a.size
    if n < 2:
        return None
    A, B = float(a.mean()), float(b.mean())
    C = np.cov(np.stack([a, b]), ddof=1)
    t2 = t_crit(n - 1, level) ** 2 / n
    qa = A * A - t2 * C[0, 0]
    qb = -2 * (A * B - t2 * C[0, 1])
    qc = B * B - t2 * C[1, 1]
    if qa <= 0:
        return None
    disc = max(qb * qb - 4 * qa * qc, 0.0)
    r1, r2 = (-qb - math.sqrt(disc)) / (2 * qa), (-qb + math.sqrt(disc)) / (2 * qa)
    return (float(min(r1, r2)), float(max(r1, r2)))


def equivalence_margin80(se: float, df: float, *, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The smallest margin that TOST at `alpha` shows with probability `power` when the true difference is 0
    (a planning figure, se treated as known):  P(T'(m/se) > t_{1-alpha}) = (1 + power) / 2 for each side, both
    sides nearly independent of each other's miss when m is this large; m = (t_{1-alpha} + t_{(1+power)/2}) se."""
    if not (se is not None and math.isfinite(se) and se > 0 and df and df > 0):
        return None
    return float((stats.t.ppf(1 - alpha, df) + stats.t.ppf((1 + power) / 2, df)) * se)


def detectable_difference(se: float, df: float, *, alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The smallest true difference delta that a two-sided t-test at `alpha` with this standard error and df
    detects with probability `power`:  P(|T'| > t_{1-alpha/2, df}) = power,  T' ~ noncentral t(df, delta/se).
    (Close to (t_{1-alpha/2} + t_{power}) * se.) A planning figure: it treats se as known."""
    if not (se is not None and math.isfinite(se) and se > 0 and df and df > 0):
        return None
    tc = t_crit(df, 1 - alpha)

    def pw(nc):
        if not math.isinf(df) and df < 1e4:
            upper = stats.nct.sf(tc, df, nc)
            # P(T' < -tc): scipy's nct.cdf returns nan where this tail is ~1e-17 (seen at df 4.89, nc 7-8; a
            # fall back to the normal limit there made the answer jump by 1 %); P(T'(nc) < -tc) = P(T'(-nc) > tc)
            lower = stats.nct.cdf(-tc, df, nc)
            if not math.isfinite(lower):
                lower = stats.nct.sf(tc, df, -nc)
            if not math.isfinite(lower) and stats.norm.cdf(-nc) < 1e-12:
                lower = 0.0  # below P(T' < 0) = Phi(-nc): negligible against a power of 0.8
            if math.isfinite(upper) and math.isfinite(lower):
                return upper + lower
        return stats.norm.sf(tc - nc) + stats.norm.cdf(-tc - nc)  # df large: the normal limit

    hi = 2.0 * tc + 10.0
    while pw(hi) < power:
        hi *= 2
    nc = optimize.brentq(lambda x: pw(x) - power, 0.0, hi, xtol=1e-6)
    return float(nc * se)


@dataclass
class UniformFit:
    """A histogram against the uniform law over its bins: KL divergence with its bias removed, and the
    likelihood-ratio (G) test of uniformity."""
    kl_plugin: float
    kl_corrected: float
    bias_floor: float
    g_statistic: float
    df: int
    p: float
    n: int
    bins: int


def kl_uniform(counts: Sequence[float]) -> UniformFit:
    """KL(p_hat || uniform) over K bins from N counts:
        plug-in  KL = sum_k p_k log(K p_k);   under uniformity E[KL] ~ (K - 1) / (2N) (its bias floor),
        corrected KL = max(0, KL - (K - 1) / (2N))    (Miller-Madow-style correction),
        G = 2 N KL ~ chi^2_{K-1} under uniformity:  p = P(chi^2_{K-1} >= G).
    A corrected value of 0, or p >= 0.05, is 'no detectable departure'."""
    c = np.asarray(counts, dtype=np.float64)
    N = float(c.sum())
    K = int(c.size)
    if N <= 0 or K < 2:
        return UniformFit(math.nan, math.nan, math.nan, math.nan, max(K - 1, 0), math.nan, int(N), K)
    p = c / N
    nz = p > 0
    kl = float((p[nz] * np.log(p[nz] * K)).sum())
    floor = (K - 1) / (2 * N)
    g = 2 * N * kl
    return UniformFit(kl, max(0.0, kl - floor), floor, g, K - 1, float(stats.chi2.sf(g, K - 1)), int(N), K)
