"""Every interval and test of flatlens.stats against simulations with known truth (../shared/statistics.md:
at least 400 simulated data sets, coverage in [0.92, 0.98], family-wise error <= 0.05 for Holm), at the
smallest sample sizes the project uses (3 seeds per group, 2-5 SLQ runs, 10-20 directions)."""
import math

import numpy as np
import pytest

from flatlens import stats

N_SIM = 1000


def _coverage(make, truth, n_sim=N_SIM):
    hits = 0
    for i in range(n_sim):
        ci = make(np.random.default_rng(i))
        hits += ci is not None and ci[0] <= truth <= ci[1]
    return hits / n_sim


@pytest.mark.parametrize("n", [2, 3, 10])
def test_t_interval_covers_the_mean(n):
    cov = _coverage(lambda g: stats.t_interval(g.normal(1.5, 2.0, n)).ci95, 1.5)
    assert 0.92 <= cov <= 0.98, cov


def test_t_interval_uses_t_not_1_96():
    e = stats.t_interval([0.0, 1.0, 2.0])
    half = (e.ci95[1] - e.ci95[0]) / 2
    assert e.df == 2 and half == pytest.approx(4.302653 * e.stderr, rel=1e-6)


def test_welch_satterthwaite_3_vs_3_unequal_variances_covers():
    def make(g):
        a, b = g.normal(0.0, 1.0, 3), g.normal(2.0, 3.0, 3)
        return stats.welch_samples(a, b).ci95
    cov = _coverage(make, 2.0)
    assert 0.92 <= cov <= 0.98, cov


def test_welch_carries_each_estimators_own_df():
    # a: mean of 4 draws (df 3); b: mean of 30 draws (df 29), built as Estimates from elsewhere
    def make(g):
        x, y = g.normal(0.0, 1.0, 4), g.normal(1.0, 0.3, 30)
        a = stats.estimate(x.mean(), x.std(ddof=1) / 2, 3, 4)
        b = stats.estimate(y.mean(), y.std(ddof=1) / math.sqrt(30), 29, 30)
        t = stats.welch(a, b)
        assert 3 <= t.df <= 32
        return t.ci95
    cov = _coverage(make, 1.0)
    assert 0.92 <= cov <= 0.98, cov


def test_paired_differences_cover_and_beat_unpaired_width():
    widths = []

    def make(g):
        common = g.normal(0, 3, 10)  # the same seeded directions on both models
        a = common + g.normal(0, 0.5, 10)
        b = common + 0.4 + g.normal(0, 0.5, 10)
        t = stats.paired(a, b)
        widths.append((t.ci95[1] - t.ci95[0], stats.welch_samples(a, b).ci95[1] - stats.welch_samples(a, b).ci95[0]))
        return t.ci95
    cov = _coverage(make, 0.4)
    assert 0.92 <= cov <= 0.98, cov
    assert np.mean([p < u for p, u in widths]) > 0.95


def _seeds_by_directions(g, S, J, mu):
    """Seed effects (training noise) plus directions correlated within a seed (a shared component)."""
    seed_effect = g.normal(0, 1.0, S)
    out = []
    for s in range(S):
        shared = g.normal(0, 0.6)
        out.append(mu + seed_effect[s] + shared + g.normal(0, 0.8, J))
    return out


@pytest.mark.parametrize("S", [3, 5])
def test_two_level_ci_covers_the_method_mean_and_pooling_does_not(S):
    pooled_hits = 0

    def make(g):
        nonlocal pooled_hits
        per = _seeds_by_directions(g, S, 20, 2.0)
        pooled = stats.t_interval(np.concatenate(per)).ci95  # the pseudo-replicated interval
        pooled_hits += pooled[0] <= 2.0 <= pooled[1]
        e = stats.two_level(per)
        assert e.df == S - 1 and e.source == f"over {S} seeds" and e.within_stderr > 0
        return e.ci95
    cov = _coverage(make, 2.0)
    assert 0.92 <= cov <= 0.98, cov
    assert pooled_hits / N_SIM < 0.75  # treating directions as replicates is badly anti-conservative


def test_holm_keeps_family_wise_error_under_the_null():
    m = 30  # about the rows of one `compare --metric all --split both`
    fam_err = 0
    raw_err = 0
    for i in range(N_SIM):
        g = np.random.default_rng(10_000 + i)
        shared = g.normal(0, 1, 5)
        ps = []
        for j in range(m):  # correlated null tests: half share a component
            x = g.normal(0, 1, 5) + (shared if j % 2 else 0)
            ps.append(stats.one_sample(x).p)
        adj = stats.holm(ps)
        fam_err += min(adj) < 0.05
        raw_err += min(ps) < 0.05
    assert fam_err / N_SIM <= 0.05
    assert raw_err / N_SIM > 0.3  # unadjusted, some row is "significant" most of the time


def test_holm_step_down_values_and_nans():
    adj = stats.holm([0.01, 0.04, float("nan"), 0.03])
    assert adj[0] == pytest.approx(0.03) and adj[3] == pytest.approx(0.06) and adj[1] == pytest.approx(0.06)
    assert math.isnan(adj[2])


def test_fieller_ratio_covers():
    theta = 1.3

    def make(g):
        den_true = 0.05
        x = g.normal(theta * den_true, 0.02, 20)   # measured: 20 noise draws
        y = g.normal(den_true, 0.012, 20)          # predicted: 20 probes
        r = stats.fieller(stats.t_interval(x), stats.t_interval(y))
        return r.ci95 if r.bounded else (-math.inf, math.inf)  # no finite interval covers everything
    cov = _coverage(make, theta)
    assert cov >= 0.92, cov


def test_fieller_has_no_finite_interval_when_denominator_ci_includes_zero():
    r = stats.fieller(stats.estimate(1.0, 0.1, 10, 11), stats.estimate(0.05, 0.1, 10, 11))
    assert not r.bounded and r.ci95 is None


def test_kl_bias_correction_and_g_test_size_under_uniformity():
    K, N = 50, 2000
    rejects, corrected, plugin = 0, [], []
    for i in range(N_SIM):
        g = np.random.default_rng(20_000 + i)
        counts = np.bincount(g.integers(0, K, N), minlength=K)
        fit = stats.kl_uniform(counts)
        rejects += fit.p < 0.05
        corrected.append(fit.kl_corrected)
        plugin.append(fit.kl_plugin)
    assert 0.92 <= 1 - rejects / N_SIM <= 0.98
    assert np.mean(plugin) == pytest.approx((K - 1) / (2 * N), rel=0.1)  # the plug-in's bias floor
    assert np.mean(corrected) < 0.25 * np.mean(plugin)


def test_kl_g_test_detects_a_real_departure():
    g = np.random.default_rng(0)
    x = np.clip(g.normal(0, 0.25, 5000), -0.5, 0.5)
    fit = stats.kl_uniform(np.histogram(x, bins=50, range=(-0.5, 0.5))[0])
    assert fit.p < 1e-6 and fit.kl_corrected > 0.05


@pytest.mark.parametrize("n", [3, 5, 20])
def test_detectable_difference_has_80_percent_power(n):
    # the t-test the figure assumes: n paired differences (or n - 1 df), sd 1, so se = 1 / sqrt(n)
    mde = stats.detectable_difference(1 / math.sqrt(n), n - 1)
    hits = 0
    for i in range(N_SIM):
        g = np.random.default_rng(30_000 + i)
        hits += stats.one_sample(g.normal(mde, 1, n)).p < 0.05
    assert 0.76 <= hits / N_SIM <= 0.84, hits / N_SIM
    assert mde == pytest.approx((stats.t_crit(n - 1) + stats.t_crit(n - 1, 0.6)) / math.sqrt(n), rel=0.15)


def test_detectable_difference_is_smooth_and_decreasing_in_df_at_a_family_level():
    # a Holm family of 16 at Welch df near 4.9: scipy's nct.cdf returns nan for the far tail at some
    # noncentralities; treating that as "use the normal limit" once made the figure jump 1 % for a 1e-8 df change
    dfs = np.linspace(4.85, 4.95, 41)
    mdes = np.array([stats.detectable_difference(0.657, df, alpha=0.05 / 16) for df in dfs])
    assert np.all(np.diff(mdes) < 0)
    assert np.max(np.abs(np.diff(mdes))) < 5 * np.median(np.abs(np.diff(mdes)))
    a = stats.detectable_difference(0.657, 4.894132338752397, alpha=0.05 / 16)
    b = stats.detectable_difference(0.657, 4.894132328102661, alpha=0.05 / 16)
    assert a == pytest.approx(b, rel=1e-6)


# --------------------------------------------------------------------------- the paired design ("A powered answer")
@pytest.mark.parametrize("n", [5, 12])
def test_paired_t_covers_the_mean_difference_of_correlated_pairs(n):
    # full precision and QAT of one seed: correlation 0.9 between the pair's values, a true difference of 0.3
    hits = 0
    for i in range(N_SIM):
        g = np.random.default_rng(40_000 + i)
        shared = g.normal(0, 1, n)
        a = 5 + shared * math.sqrt(0.9) + g.normal(0, math.sqrt(0.1), n)
        b = 5.3 + shared * math.sqrt(0.9) + g.normal(0, math.sqrt(0.1), n)
        ci = stats.paired(a, b).ci95
        hits += ci[0] <= 0.3 <= ci[1]
    assert 0.94 <= hits / N_SIM <= 0.96, hits / N_SIM


@pytest.mark.parametrize("relative", [True, False])
def test_tost_type_i_error_at_the_margin_is_at_most_alpha(relative):
    # the truth on the margin's edge (the null of non-equivalence at its least favourable point, where the level is
    # exactly alpha): TOST declares equivalence in at most 5 % of runs, at 5 and at 12 pairs. 4,000 simulated data
    # sets each; the allowance is the Monte Carlo error of a true 0.05 (2.33 binomial se, one-sided 99 %). The
    # margin is the truth's own (15 % of a mean of 10, or 1.5 absolute): the rate must also be near 0.05, or the
    # simulation was not at the margin and checked nothing
    N = 4 * N_SIM
    margin = 0.15 if relative else 1.5
    for n in (5, 12):
        rej = 0
        for i in range(N):
            g = np.random.default_rng(50_000 + 7 * n + i)
            a = 10 + g.normal(0, 1, n)
            b = (a * 1.15 if relative else a + 1.5) + g.normal(0, 0.6, n)
            rej += stats.tost_paired(a, b, margin, relative=relative).p < 0.05
        assert 0.03 <= rej / N <= 0.05 + 2.33 * math.sqrt(0.05 * 0.95 / N), (n, rej / N)


def test_tost_shows_equivalence_when_the_difference_is_small_and_its_interval_is_the_ratios():
    g = np.random.default_rng(3)
    a = 10 + g.normal(0, 1, 40)
    b = a * 1.02 + g.normal(0, 0.1, 40)
    t = stats.tost_paired(a, b, 0.15, relative=True)
    assert t.p < 1e-6 and -0.15 < t.ci95[0] < 0.02 < t.ci95[1] < 0.15
    assert t.estimate == pytest.approx(b.mean() / a.mean() - 1)
    # Fieller's paired interval is the set of ratios whose contrast the t-test does not reject
    lo, hi = stats.paired_ratio_interval(a, b, level=0.90)
    for theta, inside in ((lo + 1e-9, True), (hi - 1e-9, True), (lo - 1e-3, False), (hi + 1e-3, False)):
        assert (stats.one_sample(b - theta * a).p >= 0.10) == inside


def test_per_seed_directions_make_the_two_level_ci_cover_at_the_stored_runs_direction_effect():
    # directions drawn afresh per seed: each seed's mean carries its own direction noise, so the between-seed
    # spread covers it. Direction effect as in the stored run: a direction-sampling se about 3x the seed se
    S, J, mu = 5, 20, 6.0
    hits, shared_hits = 0, 0
    for i in range(N_SIM):
        g = np.random.default_rng(60_000 + i)
        seed_effect = g.normal(0, 0.35, S)
        dir_effect = g.normal(0, 2.2, (S, J))                 # fresh directions for every seed
        per = [mu + seed_effect[s] + dir_effect[s] + g.normal(0, 0.3, J) for s in range(S)]
        ci = stats.two_level(per).ci95
        hits += ci[0] <= mu <= ci[1]
        common = g.normal(0, 2.2, J)                          # the old layout: one set of directions for all seeds
        old = [mu + seed_effect[s] + common + g.normal(0, 0.3, J) for s in range(S)]
        ci = stats.two_level(old).ci95
        shared_hits += ci[0] <= mu <= ci[1]
    assert 0.93 <= hits / N_SIM <= 0.97, hits / N_SIM
    assert shared_hits / N_SIM < 0.9  # shared directions: the "over S seeds" interval misses the direction noise


def test_holm_with_the_logical_constraint_keeps_family_wise_error():
    # five claims, each a paired difference test and a TOST: in every configuration at most one of a claim's two
    # nulls is true. Truth: claims 0-1 no difference (their difference nulls true), claims 2-4 on the margin's edge
    # (their equivalence nulls true)
    K, n = 5, 12
    err = 0
    for i in range(N_SIM):
        g = np.random.default_rng(70_000 + i)
        ps, groups, true = [], [], []
        for k in range(K):
            a = 10 + g.normal(0, 1, n)
            b = (a if k < 2 else a * 1.15) + g.normal(0, 0.5, n)
            ps += [stats.paired(a, b).p, stats.tost_paired(a, b, 0.15, relative=True).p]
            groups += [k, k]
            true += [k < 2, k >= 2]
        adj = stats.holm(ps, exclusive=groups)
        err += any(p < 0.05 and t for p, t in zip(adj, true))
    assert err / N_SIM <= 0.05, err / N_SIM


def test_holm_with_the_logical_constraint_is_holm_without_groups_and_never_stricter():
    p = [0.004, 0.03, 0.011, 0.5, float("nan"), 0.02]
    np.testing.assert_array_equal(stats.holm(p, exclusive=range(6)), stats.holm(p))
    grouped = stats.holm(p, exclusive=[0, 0, 1, 1, 2, 2])
    for x, y in zip(grouped, stats.holm(p)):
        assert (math.isnan(x) and math.isnan(y)) or x <= y
    assert grouped[0] == pytest.approx(3 * 0.004)  # three claims can hold a true null, not five hypotheses


@pytest.mark.parametrize("n", [5, 12])
def test_the_plans_mde_has_80_percent_power_at_the_familys_level(n):
    # reproduce --plan: MDE = detectable_difference(sd / sqrt(S), S - 1, alpha / K) for S pairs, K claims
    sd, K = 1.3, 5
    mde = stats.detectable_difference(sd / math.sqrt(n), n - 1, alpha=0.05 / K)
    g = np.random.default_rng(80_000 + n)
    d = g.normal(mde, sd, (N_SIM, n))
    t = d.mean(1) / (d.std(1, ddof=1) / math.sqrt(n))
    from scipy import stats as ss
    power = np.mean(2 * ss.t.sf(np.abs(t), n - 1) < 0.05 / K)
    assert 0.76 <= power <= 0.84, power
    m80 = stats.equivalence_margin80(sd / math.sqrt(n), n - 1, alpha=0.05 / K)
    hits = 0
    for i in range(400):
        a = 10 + g.normal(0, 1, n)
        hits += stats.tost_paired(a, a + g.normal(0, sd, n), m80, relative=False).p < 0.05 / K
    assert hits / 400 >= 0.72  # about 80 % (the planning formula treats both one-sided misses as exclusive)


def test_zero_spread_is_not_testable_anywhere():
    # a group with no spread once gave p = 0, df inf and a zero-width CI: "flatter" from two identical files
    for t in (stats.welch_samples([1, 1], [2, 2]), stats.one_sample([3, 3, 3], mu0=1.0),
              stats.paired([1, 2, 3], [2, 3, 4]), stats.tost_paired([1, 2, 3], [2, 3, 4], 0.1, relative=False)):
        assert math.isnan(t.p) and t.ci95 is None and "not testable" in t.note and not t.testable
    assert stats.one_sample([3, 3, 3], mu0=1.0).estimate == 2.0  # the difference, not the value
    assert stats.welch(stats.estimate(1.0, 0.0, math.inf, 1), stats.estimate(2.0, 0.0, math.inf, 1)).note
    # one group without spread: its variance is unknown, not 0 (Welch would take it as known: p 0.003 here)
    t = stats.welch_samples([1, 1, 1], [2, 2.1, 2.2])
    assert math.isnan(t.p) and t.ci95 is None and "one group" in t.note
    # seeds that agree exactly give no interval over seeds (once a zero-width "over 3 seeds" CI)
    for e, v in ((stats.two_level([[1, 1], [1, 1], [1, 1]]), 1.0), (stats.over_seeds_estimate([0.5] * 3), 0.5)):
        assert e.ci95 is None and e.value == v and e.stderr == 0


def _grid_curves(rng, mu, n):
    """Per-sample excess curves on 5 grid points: a per-sample effect shared by neighbouring points (correlated
    columns, as a sample's loss is along a path) plus independent noise."""
    u = rng.normal(size=(n, 1)) * 0.3
    return mu + u * np.array([0.2, 0.6, 1.0, 0.6, 0.2]) + rng.normal(size=(n, 5)) * 0.2


@pytest.mark.parametrize("shape", ["sharp", "flat"])
def test_max_of_means_simultaneous_interval_covers_the_largest_mean(shape):
    """The barrier's interval (the largest of a curve's means, its argmax picked on the same samples) covers the
    true maximum at least 95 % of the time by construction (Bonferroni), and the argmax set holds the true argmax;
    a pointwise t-interval at the picked argmax does not (0.90 on a flat top, 0.94 on a sharp peak, n = 64)."""
    rng = np.random.default_rng(7)
    mu = np.array([0, 0.02, 0.1, 0.02, 0.0]) if shape == "sharp" else np.full(5, 0.05)
    cover = argmax = naive = 0
    reps = 1000
    for _ in range(reps):
        X = _grid_curves(rng, mu, 64)
        r = stats.max_of_means(X)
        cover += r.ci95[0] <= mu.max() <= r.ci95[1]
        argmax += any(mu[j] == mu.max() for j in r.argmax_set)
        e = stats.t_interval(X[:, r.argmax])
        naive += e.ci95[0] <= mu.max() <= e.ci95[1]
    assert 0.95 - 0.015 <= cover / reps <= 1.0      # conservative: 0.99 (sharp) and 0.975 (flat) in 2,000 runs
    assert argmax / reps >= 0.95
    if shape == "flat":
        assert naive / reps < 0.93                  # the selection the simultaneous interval accounts for


def test_max_of_means_exact_columns_take_no_share_of_the_level():
    rng = np.random.default_rng(0)
    X = np.zeros((40, 5))
    X[:, 1:4] = rng.normal(size=(40, 3))           # the ends of an excess curve are exactly 0
    r = stats.max_of_means(X)
    assert r.m == 3 and r.crit == pytest.approx(stats.stats.t.ppf(1 - 0.025 / 3, 39))
    assert r.ci95[0] >= 0.0                         # an exact 0 at the ends bounds the maximum from below


def test_the_barrier_over_seeds_keeps_its_level_where_no_point_rises_and_the_mean_of_maxima_does_not():
    """analysis.barriers' seed-level test: rows the seeds, columns the grid of [0, 1] with exact 0s at both ends.
    With no barrier at all (every interior mean 0), stats.max_of_means_test rejects in at most 5 % of 1,000 runs of
    16 seeds, as its p and its simultaneous interval agree; the one-sample t of the per-seed maxima (each >= its
    ends' 0) rejects in nearly all. With a real barrier it finds it."""
    rng = np.random.default_rng(11)
    S, reps = 16, 1000
    null_rej = naive_rej = 0
    for _ in range(reps):
        X = np.zeros((S, 9))
        X[:, 1:8] = rng.normal(size=(S, 1)) * 0.004 * np.sin(np.linspace(0, np.pi, 9)[1:8]) \
            + rng.normal(size=(S, 7)) * 0.01
        mo, t = stats.max_of_means_test(X)
        assert (t.p < 0.05) == (mo.ci95[0] > 0)
        null_rej += t.p < 0.05
        naive_rej += stats.one_sample(X.max(axis=1)).p < 0.05
    assert null_rej / reps <= 0.05 + 2.33 * math.sqrt(0.05 * 0.95 / reps)
    assert naive_rej / reps > 0.9
    X = np.zeros((S, 9))
    X[:, 1:8] = 0.02 * np.sin(np.linspace(0, np.pi, 9)[1:8]) + rng.normal(size=(S, 7)) * 0.01
    mo, t = stats.max_of_means_test(X)
    assert t.p < 0.05 and mo.ci95[0] <= 0.02 <= mo.ci95[1] and mo.argmax == 4
    _, t = stats.max_of_means_test(np.zeros((S, 9)))
    assert not t.testable and "no spread" in t.note
