"""The seed-level tests of a reproduce run: what the report, the README summary and the figures say comes from
here, and nowhere else (results.json stores it).

The unit of replication is the independently trained model (seed). Configurations of one seed are pairs: they
share initialisation, data order and the full-precision prefix, and were measured with the same samples,
directions, probes and noise draws (common random numbers), drawn afresh for every seed.
- Aggregates: every measured row of every configuration over its seeds (the mean of per-seed values, t-interval
  on S - 1 df, the measurement part reported beside it).
- The confirmatory family, stated in the plan before the run: each claim compares configuration b with a over
  the seeds both ran, each seed's value the mean over the test domains (seed the unit, domains averaged within
  it), by the paired t-test of b - a and by TOST against the plan's margin. The family's 2K hypotheses are
  adjusted together by Holm with the logical constraint that one claim's "no difference" and "not equivalent"
  nulls cannot both be true (Shaffer 1986). A claim ends shown different (in the predicted direction or against
  it), shown equivalent within the margin, both (a real difference inside the margin), or inconclusive.
- Exploratory, with raw p-values and labelled so: every claim per test domain, the other configurations and
  splits against full precision, too few bits against the paper's bit-width, EoQ against its members, the
  loss barrier between each seed's full-precision model and each of its quantized models (`barriers`), the
  quantization-noise test, the quantization error against the uniform law.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np

from . import metrics as M
from . import stats
from ._util import FlatlensError
from .results import Result, register

ACCURACY = "accuracy"          # the pseudo-metric of training-time accuracies in aggregates
BARRIER = "barrier:"           # key prefix of the barrier entries: "barrier:{metric}:{config}@{domain}"
POOLED = "pooled"              # the claims' domain: each seed's mean over the test domains
# verdicts of a confirmatory claim
SUPPORTED = "supported"                      # shown different, in the direction the paper predicts
CONTRADICTED = "contradicted"                # shown different, against it
EQUIVALENT = "equivalent"                    # shown equivalent within the margin
SMALL = "different, within the margin"       # a difference shown, and equivalence within the margin shown
INCONCLUSIVE = "inconclusive"
NOT_TESTABLE = "not testable"


@dataclass
class ClaimSpec:
    """One confirmatory claim, stated in the plan before any run: configuration b against a on one row of one
    metric (or out-of-domain accuracy), the direction the paper predicts, and the equivalence margin."""
    key: str
    metric: str                 # a registry name, or "accuracy"
    split: str                  # "train" / "test", or "" for accuracy
    row: str                    # the row key ("trace", "LA1", "r=4"), or "ood"
    a: str                      # the reference configuration (full precision)
    b: str
    expected: str               # "lower" or "higher": the sign of b - a the claim predicts
    margin: float               # the equivalence margin: a fraction of a's mean (relative) or in the row's unit
    relative: bool
    statement: str              # "{b} ... than {a}", worded from the plan


@dataclass
class Aggregate:
    """One row of one configuration over its seeds: mean, t-interval on S - 1 df, the measurement part."""
    domain: str
    config: str
    split: str                  # "train" / "test", or "" for accuracies
    metric: str                 # a registry name, or "accuracy"
    key: str                    # the row key, or "ood" / "in-domain" for accuracies
    estimate: stats.Estimate
    values: list[float]
    seeds: list[int]


@dataclass
class Paired:
    """b against a over the seeds both ran (paired), on one domain or pooled over the test domains."""
    key: str
    domain: str                 # a test domain, or POOLED
    metric: str
    split: str
    row: str
    a: str
    b: str
    seeds: list[int]
    a_values: list[float]
    b_values: list[float]
    unit: str
    difference: stats.TestResult            # paired t of b - a
    equivalence: stats.TestResult | None    # TOST against the margin (None where no margin applies)
    relative: float | None                  # mean(b) / mean(a) - 1 (None unless a's mean is positive)
    margin: float | None = None
    margin_relative: bool = True


@dataclass
class Claim:
    """A confirmatory claim and its verdict (its two p-values adjusted over the family)."""
    spec: ClaimSpec
    statement: str
    test: Paired
    p_diff_adj: float | None
    p_equiv_adj: float | None
    verdict: str
    mde80: float | None          # the smallest difference the family's test detects with 80 % power
    margin80: float | None       # the smallest margin TOST at the family's level shows with 80 % power at 0


@dataclass
class Exploratory:
    """A comparison outside the confirmatory family: its raw p-value, not adjusted, labelled exploratory."""
    key: str
    statement: str
    test: Paired | None = None
    one_sample: stats.TestResult | None = None     # EoQ: the ensemble's margin over its members
    domain: str = ""
    values: list[float] = field(default_factory=list)


@dataclass
class NoiseCheck:
    domain: str
    config: str
    seed: int
    split: str
    measured: float
    measured_ci95: tuple[float, float] | None
    predicted: float
    predicted_ci95: tuple[float, float] | None
    ratio: float
    ratio_ci95: tuple[float, float] | None
    cis_overlap: bool
    ratio_within_2x: bool        # Fieller CI inside [1/2, 2]
    ratio_ci_contains_1: bool


@dataclass
class NoiseSummary:
    n: int
    n_cis_overlap: int
    n_ratio_within_2x: int
    n_ratio_ci_contains_1: int
    n_unbounded: int
    n_measured_ci_includes_0: int
    ratio_min: float
    ratio_max: float
    steps_rule: str
    estimator: str
    supported: bool              # every ratio CI inside [1/2, 2]
    checks: list[NoiseCheck]


@dataclass
class QuantErrorFit:
    domain: str
    config: str
    seed: int
    bits: int
    fit: stats.UniformFit
    p_holm: float | None = None


@register
@dataclass
class Analysis(Result):
    aggregates: list[Aggregate]
    claims: list[Claim]
    family: dict
    exploratory: list[Exploratory]
    noise: NoiseSummary | None
    quant_error: list[QuantErrorFit]

    def registered(self) -> "Analysis":
        """This analysis with only what the registry knows now: aggregates, claims and comparisons of a metric
        whose entry was removed are left out (what a report or figure of this flatlens may show)."""
        known = set(M.REGISTRY) | {ACCURACY}
        return dataclasses.replace(
            self, aggregates=[a for a in self.aggregates if a.metric in known],
            claims=[c for c in self.claims if c.spec.metric in known],
            exploratory=[e for e in self.exploratory if (e.test is None or e.test.metric in known) and not (
                e.key.startswith(BARRIER) and e.key.split(":")[1] not in known)],
            noise=self.noise if "qnoise" in M.REGISTRY else None)

    def aggregate(self, domain, config, split, metric, key) -> Aggregate | None:
        for a in self.aggregates:
            if (a.domain, a.config, a.split, a.metric, a.key) == (domain, config, split, metric, key):
                return a
        return None


# --------------------------------------------------------------------------- per-seed values
def value(m, split: str, metric: str, key: str) -> float | None:
    """A model's value of one row (accuracies in %), or None where it was not measured."""
    if metric == ACCURACY:
        return 100 * (m.training.mean_test_acc if key == "ood" else m.training.mean_val_acc)
    rec = m.record(split, metric)
    return rec.row(key).value if rec is not None and rec.has_row(key) else None


def stderr(m, split: str, metric: str, key: str) -> float | None:
    rec = None if metric == ACCURACY else m.record(split, metric)
    return rec.row(key).stderr if rec is not None and rec.has_row(key) else None


def per_seed(run, domain: str, config: str, split: str, metric: str, key: str) -> dict[int, float]:
    out = {}
    for m in run.runs(domain, config):
        v = value(m, split, metric, key)
        if v is not None:
            out[m.seed] = v
    return out


def pooled(run, config: str, split: str, metric: str, key: str) -> dict[int, float]:
    """Each seed's value averaged over the plan's test domains (seeds missing a domain left out)."""
    doms = [per_seed(run, d, config, split, metric, key) for d in run.plan.domains]
    seeds = set.intersection(*(set(d) for d in doms)) if doms else set()
    return {s: float(np.mean([d[s] for d in doms])) for s in sorted(seeds)}


def unit_of(metric: str, key: str) -> str:
    return "percentage points" if metric == ACCURACY else M.get(metric).spec(key).unit


# --------------------------------------------------------------------------- aggregates
def aggregates(run) -> list[Aggregate]:
    out = []
    plan = run.plan
    for d in plan.domains:
        for c, _ in plan.configs:
            ms = run.runs(d, c)
            if not ms:
                continue
            for key in ("ood", "in-domain"):
                vals = [value(m, "", ACCURACY, key) for m in ms]
                out.append(Aggregate(d, c, "", ACCURACY, key, stats.over_seeds_estimate(vals), vals,
                                     [m.seed for m in ms]))
            for name, metric in M.REGISTRY.items():
                if metric.role != "headline":
                    continue
                for split in ("train", "test"):
                    recs = [(m.seed, m.record(split, name)) for m in ms]
                    recs = [(s, r) for s, r in recs if r is not None]
                    if not recs:
                        continue
                    for row in recs[0][1].rows:
                        per = [(s, r.row(row.key)) for s, r in recs if r.has_row(row.key)]
                        e = stats.over_seeds_estimate([p.value for _, p in per], [p.stderr for _, p in per])
                        if name == "flatness":
                            e.method = "two-level (mean of per-seed means over directions)"
                        out.append(Aggregate(d, c, split, name, row.key, e, [p.value for _, p in per],
                                             [s for s, _ in per]))
    return out


# --------------------------------------------------------------------------- paired comparisons
def paired(key: str, domain: str, metric: str, split: str, row: str, a: str, b: str, av: dict, bv: dict,
           margin: float | None = None, relative: bool = True) -> Paired:
    """b - a over the seeds in both (common random numbers within each seed): paired t, and TOST when a margin
    is given."""
    seeds = sorted(set(av) & set(bv))
    A, B = [av[s] for s in seeds], [bv[s] for s in seeds]
    src = stats.over_seeds(len(seeds))
    diff = stats.paired(A, B, source=src)
    diff.test = "paired t over seeds"
    eq = stats.tost_paired(A, B, margin, relative=relative, source=src) if margin is not None else None
    rel = (float(np.mean(B) / np.mean(A) - 1) if seeds and np.mean(A) > 0 else None)
    return Paired(key, domain, metric, split, row, a, b, seeds, A, B, unit_of(metric, row), diff, eq, rel,
                  margin, relative)


def _verdict(c: Claim) -> str:
    t = c.test
    if not t.difference.testable or (t.equivalence is not None and not t.equivalence.testable):
        return NOT_TESTABLE
    diff, equiv = stats.significant(c.p_diff_adj), stats.significant(c.p_equiv_adj)
    if diff and equiv:
        return SMALL
    if equiv:
        return EQUIVALENT
    if diff:
        sign = "lower" if t.difference.estimate < 0 else "higher"
        return SUPPORTED if sign == c.spec.expected else CONTRADICTED
    return INCONCLUSIVE


def confirmatory(run) -> tuple[list[Claim], dict]:
    """The plan's family, pooled over the test domains, adjusted as one family of 2K hypotheses."""
    plan = run.plan
    tests = []
    for spec in plan.family:
        av = pooled(run, spec.a, spec.split, spec.metric, spec.row)
        bv = pooled(run, spec.b, spec.split, spec.metric, spec.row)
        tests.append(paired(spec.key, POOLED, spec.metric, spec.split, spec.row, spec.a, spec.b, av, bv,
                            spec.margin, spec.relative))
    ps, groups = [], []
    for i, t in enumerate(tests):
        ps += [t.difference.p, t.equivalence.p if t.equivalence is not None else math.nan]
        groups += [i, i]
    adj, level = stats.holm_family(ps, exclusive=groups)  # level: what its first step asks of every claim
    K = len(tests)
    out = []
    for i, (spec, t) in enumerate(zip(plan.family, tests)):
        se, df = t.difference.stderr, t.difference.df
        c = Claim(spec, spec.statement.format(a=plan.label(spec.a), b=plan.label(spec.b)), t, adj[2 * i],
                  adj[2 * i + 1], "", stats.detectable_difference(se, df, alpha=level),
                  stats.equivalence_margin80(se, df, alpha=level))
        c.verdict = _verdict(c)
        out.append(c)
    family = {"correction": "Holm with the logical constraint (Shaffer): a claim's no-difference and "
                            "not-equivalent nulls cannot both hold", "claims": K, "hypotheses": 2 * K,
              "alpha": stats.ALPHA, "mde_alpha": level, "pooled_over": list(plan.domains),
              "keys": [s.key for s in plan.family]}
    return out, family


def exploratory(run) -> list[Exploratory]:
    """Everything outside the family, with raw p-values: each claim per test domain; every other configuration
    against full precision on the family's rows (and on the test split where measured); too few bits against the
    paper's bit-width out of domain; EoQ against its members."""
    plan = run.plan
    out = []
    fp = plan.config_with_bits(None)
    paper = plan.config_with_bits(plan.paper_bits)
    control = plan.config_with_bits(plan.control_bits)
    rows = list(dict.fromkeys((s.metric, s.split, s.row, s.margin, s.relative) for s in plan.family))
    for d in plan.domains:
        for spec in plan.family:
            t = paired(spec.key, d, spec.metric, spec.split, spec.row, spec.a, spec.b,
                       per_seed(run, d, spec.a, spec.split, spec.metric, spec.row),
                       per_seed(run, d, spec.b, spec.split, spec.metric, spec.row), spec.margin, spec.relative)
            out.append(Exploratory(f"{spec.key}@{d}", spec.statement.format(a=plan.label(spec.a),
                                                                           b=plan.label(spec.b)), t, domain=d))
        for c, _ in plan.configs:
            if c in (fp, paper, control) or fp is None:
                continue
            for metric, split, row, margin, relative in rows:
                t = paired(f"{c}-{metric}@{d}", d, metric, split, row, fp, c,
                           per_seed(run, d, fp, split, metric, row), per_seed(run, d, c, split, metric, row),
                           margin, relative)
                if t.seeds:
                    out.append(Exploratory(t.key, f"{plan.label(c)} against {plan.label(fp)}: "
                                                  f"{_row_label(metric, row)}" + (f" ({split} split)" if split else ""),
                                           t, domain=d))
        for metric, _, row, margin, relative in rows:  # the test split, where it was measured
            if metric == ACCURACY or fp is None or paper is None:
                continue
            t = paired(f"{metric}-test@{d}", d, metric, "test", row, fp, paper,
                       per_seed(run, d, fp, "test", metric, row), per_seed(run, d, paper, "test", metric, row),
                       margin, relative)
            if len(t.seeds) >= 2:
                out.append(Exploratory(t.key, f"{plan.label(paper)} against {plan.label(fp)}: "
                                              f"{_row_label(metric, row)} (test split)", t, domain=d))
        if paper and control:
            t = paired(f"too-few-bits@{d}", d, ACCURACY, "", "ood", paper, control,
                       per_seed(run, d, paper, "", ACCURACY, "ood"), per_seed(run, d, control, "", ACCURACY, "ood"))
            out.append(Exploratory(t.key, f"too few bits over-regularize: {plan.label(control)} models are less "
                                          f"accurate out of domain than {plan.label(paper)} models", t, domain=d))
        e = run.eoq.get(d)
        if e is not None:
            members = [100 * v for v in e.member_mean_test_acc()]
            ens = 100 * e.mean_test_acc
            test = stats.one_sample([ens - v for v in members], source=f"over {len(members)} members")
            test.test = "one-sample t over members (conditional on this one ensemble)"
            out.append(Exploratory(f"eoq@{d}", f"EoQ ({len(members)} x {e.bits} bit) is more accurate out of "
                                               f"domain than a single {e.bits}-bit model", None, test, d,
                                   [ens] + members))
    return out + barriers(run)


def barriers(run) -> list[Exploratory]:
    """The loss barrier between each seed's full-precision model and each of its quantized models (every pair entry
    of the registry, train split; pairs by construction: one prefix, measured with the seed's own samples), per test
    domain and configuration. Each seed's excess curve L(a) - line(a) on [0, 1] is a row; the barrier over seeds is
    the maximum of the mean curve, max_a mean_s excess_s(a), with its simultaneous 95 % interval over seeds and the
    Bonferroni test of "no point of the mean curve above 0" (stats.max_of_means_test; the seed the unit, each
    seed's measurement noise inside that spread). Not the mean of per-seed barriers: each is a maximum that
    includes the exact 0 at both ends, so their mean is above 0 even where the curve is not. `values` holds the
    per-seed barriers (seed order), for the figure. Exploratory: not part of the stated family; raw p."""
    plan = run.plan
    fp = plan.config_with_bits(None)
    out = []
    for name, m in M.REGISTRY.items():
        if not m.pair or fp is None:
            continue
        policy = plan.settings.of(name).bn_stats if name in plan.settings.metrics else "recompute"
        for d in plan.domains:
            for c, bits in plan.configs:
                if bits is None:
                    continue
                recs = [(mm.seed, mm.record("train", name)) for mm in sorted(run.runs(d, c), key=lambda x: x.seed)]
                recs = [(seed, r) for seed, r in recs if r is not None and r.has_row("barrier")]
                if not recs:
                    continue
                alphas = np.asarray(recs[0][1].result.alphas, dtype=np.float64)
                if any(list(r.result.alphas) != list(recs[0][1].result.alphas) for _, r in recs):
                    raise FlatlensError(f"the seeds' {name} grids differ ({plan.label(c)}, test domain "
                                        f"{plan.where(d)}): their excess curves cannot be averaged point by point")
                inside = np.flatnonzero((alphas >= 0) & (alphas <= 1))
                E = np.asarray([np.asarray(r.result.excess, dtype=np.float64)[inside] for _, r in recs])
                mo, test = stats.max_of_means_test(E, source=stats.over_seeds(len(recs)),
                                                   test="max over a of the mean excess over seeds, simultaneous t "
                                                        "(Bonferroni over the grid)")
                vals = [r.row("barrier").value for _, r in recs]
                above = sum(1 for _, r in recs if r.row("barrier").interval and r.row("barrier").interval[0] > 0)
                where = alphas[inside[mo.argmax_set]]
                peak = ("the seeds' mean curve stays at or below the line (its maximum is an end's exact 0)"
                        if mo.value <= 0 else f"the seeds' mean curve peaks at a = {alphas[inside[mo.argmax]]:.3g}"
                        + (f" (the points that could be its maximum at that level: a = {where.min():.3g}.."
                           f"{where.max():.3g})" if mo.ci95 is not None else ""))
                out.append(Exploratory(
                    f"{BARRIER}{name}:{c}@{d}",
                    f"loss barrier on the straight line from each seed's {plan.label(fp)} model to its {plan.label(c)} "
                    f"model (train split, BatchNorm statistics {'recomputed' if policy == 'recompute' else policy} at "
                    f"each point; test domain {plan.where(d)}; seeds {', '.join(str(seed) for seed, _ in recs)}): each "
                    f"seed's own simultaneous 95 % interval lies above 0 for {above} of {len(recs)}; {peak}",
                    None, test, d, vals))
    return out


def _row_label(metric: str, row: str) -> str:
    return "out-of-domain accuracy" if metric == ACCURACY else M.get(metric).label(row)


def noise_summary(run) -> NoiseSummary | None:
    if "qnoise" not in M.REGISTRY:
        return None
    checks, rules, ests = [], set(), set()
    for m in run.models:
        for split in ("train", "test"):
            rec = m.record(split, "qnoise")
            if rec is None:
                continue
            r = rec.result
            rules.add(r.steps_rule.replace(" of checkpoint", "").split(" (")[0])
            ests.add(r.estimator)
            mc, pc = r.measured_ci95, r.predicted_ci95
            overlap = bool(mc and pc and mc[0] <= pc[1] and pc[0] <= mc[1])
            rc = r.ratio_ci95 if r.ratio_bounded else None
            checks.append(NoiseCheck(m.domain, m.config, m.seed, split, r.measured, mc, r.predicted, pc, r.ratio, rc,
                                     overlap, bool(rc and 0.5 <= rc[0] and rc[1] <= 2.0),
                                     bool(rc and rc[0] <= 1.0 <= rc[1])))
    if not checks:
        return None
    ratios = [c.ratio for c in checks if math.isfinite(c.ratio)]
    return NoiseSummary(
        n=len(checks), n_cis_overlap=sum(c.cis_overlap for c in checks),
        n_ratio_within_2x=sum(c.ratio_within_2x for c in checks),
        n_ratio_ci_contains_1=sum(c.ratio_ci_contains_1 for c in checks),
        n_unbounded=sum(c.ratio_ci95 is None for c in checks),
        n_measured_ci_includes_0=sum(bool(c.measured_ci95 and c.measured_ci95[0] <= 0) for c in checks),
        ratio_min=min(ratios) if ratios else math.nan, ratio_max=max(ratios) if ratios else math.nan,
        steps_rule="; ".join(sorted(rules)), estimator="; ".join(sorted(ests)),
        supported=all(c.ratio_within_2x for c in checks), checks=checks)


def quant_error_fits(run) -> list[QuantErrorFit]:
    fits = [QuantErrorFit(m.domain, m.config, m.seed, m.quant_error.bits, m.quant_error.fit)
            for m in run.models if m.quant_error is not None]
    for f, p in zip(fits, stats.holm([f.fit.p for f in fits])):
        f.p_holm = None if math.isnan(p) else p
    return fits


def analyze(run) -> Analysis:
    claims, family = confirmatory(run)
    return Analysis(aggregates=aggregates(run), claims=claims, family=family, exploratory=exploratory(run),
                    noise=noise_summary(run), quant_error=quant_error_fits(run))


def registered_analysis(run) -> Analysis:
    """The run's seed-level tests as results.json stores them (computed from its records if it stores none), for
    the metrics registered now: what the report and the figures read."""
    an = run.analysis if isinstance(run.analysis, Analysis) else analyze(run)
    return an.registered()
