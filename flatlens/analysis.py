"""The seed-level tests of a reproduce run: what the report, the README summary and the figures say comes from
here, and nowhere else.

The unit of replication is the independently trained model (seed). Per (test domain, configuration):
- every headline row is aggregated over seeds (mean of per-seed values, t-interval on S - 1 df; for local
  flatness this is the two-level estimate, the directions' measurement part reported beside it);
- accuracies likewise.
Claims compare two configurations by Welch's test over seeds (EoQ: a one-sample test of the ensemble's margin
over its members), each with its smallest detectable difference at 80 % power; the whole family of claims is
Holm-adjusted. The quantization-noise prediction is checked per model-split by Fieller's interval for the ratio
measured / predicted: "within a factor of two" holds for the run only if every ratio interval lies inside
[1/2, 2] (an intersection-union test: no multiplicity adjustment needed). Quantization-error histograms are
compared with the uniform law by a bias-corrected KL divergence and the G-test (Holm over the fits).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from . import metrics as M
from . import stats
from .results import Result, register

ACCURACY = "accuracy"          # the pseudo-metric of training-time accuracies in aggregates
SUPPORTED, CONTRADICTED, NOT_SUPPORTED, NOT_TESTABLE = ("supported", "contradicted", "not supported",
                                                        "not testable")


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
class Claim:
    key: str
    domain: str
    statement: str              # worded from the plan's settings
    expected: str               # "lower" or "higher": the sign of (b - a) the claim predicts
    a: str                      # configuration names (or "members" / "EoQ")
    b: str
    a_values: list[float]
    b_values: list[float]
    unit: str
    test: stats.TestResult
    p_holm: float | None = None
    verdict: str = NOT_TESTABLE
    metric: str = ""            # the registry name it tests, or "accuracy" ("" in runs written before it was stored)


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
    noise: NoiseSummary | None
    quant_error: list[QuantErrorFit]
    claim_radius: float

    def registered(self) -> "Analysis":
        """This analysis with only what the registry knows now: aggregates and claims of a metric whose entry was
        removed are left out (what a report or figure of this flatlens may show)."""
        known = set(M.REGISTRY) | {ACCURACY}
        return dataclasses.replace(self, aggregates=[a for a in self.aggregates if a.metric in known],
                                   claims=[c for c in self.claims if c.metric in known or not c.metric],
                                   noise=self.noise if "qnoise" in M.REGISTRY else None)

    def aggregate(self, domain, config, split, metric, key) -> Aggregate | None:
        for a in self.aggregates:
            if (a.domain, a.config, a.split, a.metric, a.key) == (domain, config, split, metric, key):
                return a
        return None


def _aggregate(domain, config, split, metric, key, values, seeds, within=None) -> Aggregate:
    e = stats.over_seeds_estimate(values, within)
    if metric == "flatness":
        e.method = "two-level (mean of per-seed means over directions)"
    return Aggregate(domain, config, split, metric, key, e, [float(v) for v in values], list(seeds))


def aggregates(run) -> list[Aggregate]:
    out = []
    plan = run.plan
    for d in plan.domains:
        for c, _ in plan.configs:
            ms = run.runs(d, c)
            if not ms:
                continue
            seeds = [m.seed for m in ms]
            out.append(_aggregate(d, c, "", ACCURACY, "ood", [100 * m.training.mean_test_acc for m in ms], seeds))
            out.append(_aggregate(d, c, "", ACCURACY, "in-domain", [100 * m.training.mean_val_acc for m in ms],
                                  seeds))
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
                        out.append(_aggregate(d, c, split, name, row.key, [p.value for _, p in per],
                                              [s for s, _ in per], [p.stderr for _, p in per]))
    return out


def _claim_specs(plan, radius: float):
    """(key, metric, split, row key, a config, b config, expected sign of b - a, statement template)."""
    fp = plan.config_with_bits(None)
    paper = plan.config_with_bits(plan.paper_bits)
    lowest = min((c for c, b in plan.configs if b is not None), key=lambda c: plan.bits(c), default=None)
    r = f"r={radius:g}"
    specs = []
    if fp and paper:
        specs += [
            ("flatness-train", "flatness", "train", r, fp, paper, "lower",
             "{b} models are flatter than {a} by local flatness (train split, r = %g)" % radius),
            ("flatness-test", "flatness", "test", r, fp, paper, "lower",
             "{b} models are flatter than {a} by local flatness (test split, r = %g)" % radius),
            ("trace", "hessian-trace", "train", "trace", fp, paper, "lower",
             "{b} models have a lower Hessian trace than {a} (train split)"),
            ("top-eigenvalue", "hessian-eig", "train", "LA1", fp, paper, "lower",
             "{b} models have a lower top Hessian eigenvalue than {a} (train split)"),
            ("ood-accuracy", ACCURACY, "", "ood", fp, paper, "higher",
             "{b} QAT improves out-of-domain accuracy over {a}"),
        ]
    if paper and lowest and lowest != paper:
        specs.append(("too-few-bits", ACCURACY, "", "ood", paper, lowest, "lower",
                      "too few bits over-regularize: {b} models are less accurate out of domain than {a} models"))
    if fp and lowest and lowest != paper:
        specs.append(("flatness-lowest-bits", "flatness", "train", r, fp, lowest, "lower",
                      "{b} models are flatter than {a} by local flatness (train split, r = %g)" % radius))
    return specs


def _verdict(test: stats.TestResult, p_holm, expected) -> str:
    if p_holm is None or math.isnan(p_holm):
        return NOT_TESTABLE
    if p_holm >= stats.ALPHA:
        return NOT_SUPPORTED
    sign = "lower" if test.estimate < 0 else "higher"
    return SUPPORTED if sign == expected else CONTRADICTED


def claims(run, aggs: list[Aggregate], radius: float) -> tuple[list[Claim], dict]:
    plan = run.plan
    find = {(a.domain, a.config, a.split, a.metric, a.key): a for a in aggs}
    out = []
    for d in plan.domains:
        for key, metric, split, rkey, ca, cb, expected, text in _claim_specs(plan, radius):
            A, B = find.get((d, ca, split, metric, rkey)), find.get((d, cb, split, metric, rkey))
            if A is None or B is None:
                continue
            unit = "percentage points" if metric == ACCURACY else M.get(metric).spec(rkey).unit
            test = stats.welch_samples(A.values, B.values, source=stats.over_seeds(min(len(A.values),
                                                                                         len(B.values))))
            test.test = "Welch t over seeds"
            out.append(Claim(f"{key}@{d}", d, text.format(a=plan.label(ca), b=plan.label(cb)), expected, ca, cb,
                             A.values, B.values, unit, test, metric=metric))
        e = run.eoq.get(d)
        if e is not None:
            members = [100 * v for v in e.member_mean_test_acc()]
            ens = 100 * e.mean_test_acc
            test = stats.one_sample([ens - v for v in members], source=stats.over_seeds(len(members)))
            test.test = "one-sample t over members"
            out.append(Claim(f"eoq@{d}", d, f"EoQ ({len(members)} x {e.bits} bit) is more accurate out of domain "
                             f"than a single {e.bits}-bit model", "higher", "members", "EoQ", members,
                             [ens], "percentage points", test, metric=ACCURACY))
    adj, family = stats.holm_family([c.test for c in out])
    for c, p in zip(out, adj):
        c.p_holm = p
        c.verdict = _verdict(c.test, c.p_holm, c.expected)
    return out, family


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


def claim_radius(plan) -> float:
    """The radius of the flatness claims: the largest measured (the paper reads its figure at a large one)."""
    if "flatness" not in M.REGISTRY or "flatness" not in plan.settings.metrics:
        return math.nan
    return float(max(plan.settings.of("flatness").radii))


def analyze(run) -> Analysis:
    aggs = aggregates(run)
    radius = claim_radius(run.plan)
    cl, family = claims(run, aggs, radius)
    return Analysis(aggregates=aggs, claims=cl, family=family, noise=noise_summary(run),
                    quant_error=quant_error_fits(run), claim_radius=radius)
