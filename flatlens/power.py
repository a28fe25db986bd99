"""Power planned before compute is spent: what a plan can detect, and what it costs, from a pilot.

A pilot is a stored run (any reproduce run's results.json, or the compact JSON `pilot_from_run` writes). From it:
- per confirmatory claim, the spread of the paired per-seed differences: pooled over the test domains (the
  family's test) and per domain (the exploratory tests), and the reference configuration's mean;
- the cost: seconds per training step, per measurement of each metric on each split, and the fixed overhead.
The plan's expected smallest detectable difference of each claim at 80 % power and the family's level, with S
pairs,   MDE = delta such that P(|T'(S - 1, delta / (sd / sqrt S))| > t_{1 - alpha/2K}) = 0.8
(`stats.detectable_difference`), and the smallest margin TOST shows with 80 % power when the true difference is 0.
These are planning figures: they treat the pilot's spread as known (a pilot of few seeds estimates it roughly)."""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field

import numpy as np

from . import stats
from ._util import FlatlensError
from .results import Result, register

# the plan's targets (issue "A powered answer"): the MDE as a fraction of full precision's mean
TARGETS = {"hessian-trace": 0.15, "hessian-eig": 0.15, "flatness": 0.25}


@dataclass
class ClaimSpread:
    """The pilot's paired differences of one claim (b - a, per seed)."""
    a_mean: float
    sd_pooled: float            # of each seed's difference averaged over the test domains
    sd_domain: dict[str, float]  # per test domain
    n: int                      # the pilot's pairs
    relative: bool


@register
@dataclass
class Pilot(Result):
    source: str
    domains: list[str]
    claims: dict[str, ClaimSpread]
    seconds_per_step: float                     # one worker thread
    seconds: dict[str, dict[str, float]]        # metric -> split -> seconds per measurement (estimator time)
    overhead_per_measurement: float             # building the objective, the data, reading the checkpoint
    overhead_per_run: float = 20.0              # collect, analysis, report and figures
    machine: str = ""


def pilot_from_run(run, plan) -> Pilot:
    """The spreads of `plan`'s family and the costs, read off a stored run that measured those configurations."""
    from .analysis import per_seed, pooled
    claims = {}
    for spec in plan.family:
        av, bv = (pooled(run, c, spec.split, spec.metric, spec.row) for c in (spec.a, spec.b))
        seeds = sorted(set(av) & set(bv))
        if len(seeds) < 2:
            continue
        doms = {}
        for d in run.plan.domains:
            a, b = (per_seed(run, d, c, spec.split, spec.metric, spec.row) for c in (spec.a, spec.b))
            common = sorted(set(a) & set(b))
            if len(common) >= 2:
                doms[d] = float(np.std([b[s] - a[s] for s in common], ddof=1))
        claims[spec.key] = ClaimSpread(float(np.mean([av[s] for s in seeds])),
                                       float(np.std([bv[s] - av[s] for s in seeds], ddof=1)), doms, len(seeds),
                                       spec.relative)
    sec = run.seconds or {}
    if sec.get("train_per_job") and sec.get("models_per_job"):  # whole jobs: data, evaluations and saves included
        plan0 = run.plan
        steps = [plan0.quant_start + k * (plan0.steps - plan0.quant_start) for k in sec["models_per_job"]]
        per_step = [sum(sec["train_per_job"]) / max(1, sum(steps))]
    else:  # an older run: the trainer's own time per model
        per_step = [m.training.train_seconds / run.plan.steps for m in run.models if m.bits is None]
    seconds: dict[str, dict[str, list]] = {}
    n_meas, est_total = 0, 0.0
    for m in run.models:
        for split, recs in m.measurements.items():
            for name, rec in recs.items():
                t = _seconds(rec.result)
                seconds.setdefault(name, {}).setdefault(split, []).append(t)
                n_meas += 1
                est_total += t
    measured = sum(sec.get("measure_per_job", sec.get("measure_per_model", [])))
    overhead = max(0.0, (measured - est_total) / max(n_meas, 1))
    rest = max(0.0, sec.get("total", 0.0) - sec.get("train_and_measure", 0.0))
    return Pilot(source=getattr(run, "source", "") or "a stored reproduce run", domains=list(run.plan.domains),
                 claims=claims, seconds_per_step=float(np.mean(per_step)) if per_step else math.nan,
                 seconds={n: {s: float(np.mean(v)) for s, v in d.items()} for n, d in seconds.items()},
                 overhead_per_measurement=overhead, overhead_per_run=rest or 20.0,
                 machine=(run.versions or {}).get("machine", ""))


def _seconds(result) -> float:
    """An estimator's own time in a result (the nested results of composite metrics summed)."""
    if getattr(result, "seconds", None) is not None:
        return float(result.seconds)
    total = 0.0
    for v in vars(result).values():
        for x in (v if isinstance(v, list) else [v]):
            if isinstance(x, Result):
                total += _seconds(x)
    return total


def load_pilot(path: str, plan) -> Pilot:
    """A pilot JSON, or a reproduce run (its folder or results.json) read as one for `plan`."""
    if os.path.isdir(path):
        path = os.path.join(path, "results.json")
    try:
        with open(path) as fh:
            kind = json.load(fh).get("kind")
    except (OSError, ValueError, AttributeError) as e:
        raise FlatlensError(f"{path}: not a pilot or a reproduce run ({str(e)[:80]})") from None
    if kind == "Pilot":
        return Pilot.from_json(path)
    from .reproduce import load_run
    run = load_run(path)
    pilot = pilot_from_run(run, plan)
    pilot.source = path
    return pilot


def default_pilot_path(dataset: str) -> str:
    """The pilot that ships with flatlens for a data set (made from its reference run by `pilot_from_run`)."""
    return os.path.join(os.path.dirname(__file__), "pilots", f"{dataset}.json")


@dataclass
class ClaimPower:
    key: str
    pairs: int
    sd: float
    a_mean: float
    mde: float | None               # the family's test, pooled over domains
    mde_domain: dict[str, float | None] = field(default_factory=dict)   # each domain alone, at the family's level
    margin80: float | None = None
    target: float | None = None     # the plan's target, a fraction of a's mean (TARGETS)

    @property
    def met(self) -> bool | None:
        if self.target is None or self.mde is None:
            return None
        worst = max([self.mde] + [v for v in self.mde_domain.values() if v is not None])
        return worst <= self.target * abs(self.a_mean)


def claim_power(plan, pilot: Pilot) -> list[ClaimPower]:
    K = max(len(plan.family), 1)
    level = stats.ALPHA / K
    S = len(plan.seeds)
    out = []
    for spec in plan.family:
        sp = pilot.claims.get(spec.key)
        if sp is None:
            out.append(ClaimPower(spec.key, S, math.nan, math.nan, None))
            continue
        se = sp.sd_pooled / math.sqrt(S)
        out.append(ClaimPower(
            spec.key, S, sp.sd_pooled, sp.a_mean, stats.detectable_difference(se, S - 1, alpha=level),
            {d: stats.detectable_difference(sd / math.sqrt(S), S - 1, alpha=level) for d, sd in sp.sd_domain.items()},
            stats.equivalence_margin80(se, S - 1, alpha=level), TARGETS.get(spec.metric) if spec.key != "control"
            else None))
    return out


def expected_seconds(plan, pilot: Pilot, jobs: int = 2) -> float:
    """Training (the shared prefix once per seed and domain, then each configuration's remaining steps) and every
    measurement the plan makes, spread over `jobs` one-thread workers, plus the fixed overhead."""
    from .reproduce import SPLITS, model_specs
    specs = model_specs(plan)
    units = {(s["domain"], s["seed"]) for s in specs}
    steps = len(units) * plan.quant_start + len(specs) * (plan.steps - plan.quant_start)
    work = steps * pilot.seconds_per_step
    for s in specs:
        for split in SPLITS:
            for name in plan.measured(s["config"], s["seed"], split):
                work += pilot.seconds.get(name, {}).get(split, pilot.seconds.get(name, {}).get("train", 1.0))
                work += pilot.overhead_per_measurement
    return work / max(1, jobs) + pilot.overhead_per_run


def format_plan(plan, pilot: Pilot, jobs: int = 2) -> str:
    from .reproduce import model_specs
    from . import fmt
    specs = model_specs(plan)
    L = [f"plan: {plan.dataset}, test domains {', '.join(plan.domains)}; {len(plan.seeds)} seeds for the family's "
         f"configurations ({', '.join(sorted(plan.confirmatory_configs()))}), {plan.explore_seeds} for the others; "
         f"{len(specs)} models, {plan.steps} steps each (prefix of {plan.quant_start} shared per seed); "
         f"confirmatory family of {len(plan.family)} claims (paired t and TOST, domains pooled, Holm with the "
         f"logical constraint, alpha {stats.ALPHA}).",
         f"pilot: {pilot.source} ({pilot.machine or 'machine not recorded'}); its spreads treated as known.", "",
         f"{'claim':16} {'pairs':>5} {'ref. mean':>10} {'sd of diff':>10} {'MDE80 pooled':>14} {'per domain':>24} "
         f"{'TOST margin80':>14}  target"]
    for cp in claim_power(plan, pilot):
        rel = (lambda v: "n/a" if v is None or not cp.a_mean else f"{100 * v / abs(cp.a_mean):.3g} %")
        spec = next(s for s in plan.family if s.key == cp.key)
        show = rel if spec.relative else (lambda v: fmt.num(v, 3) + " pp")
        dom = ", ".join(f"{d}: {show(v)}" for d, v in cp.mde_domain.items())
        target = ("-" if cp.target is None else f"<= {100 * cp.target:g} %: " + ("met" if cp.met else "NOT met"))
        L.append(f"{cp.key:16} {cp.pairs:5d} {fmt.num(cp.a_mean):>10} {fmt.num(cp.sd):>10} {show(cp.mde):>14} "
                 f"{dom:>24} {show(cp.margin80):>14}  {target}")
    secs = expected_seconds(plan, pilot, jobs)
    L += ["", f"expected time: about {secs:.0f} s ({secs / 60:.1f} min) with {jobs} worker process(es), one thread "
              f"each, on an idle machine like the pilot's (a machine busy with another CPU-bound process, or "
              f"{os.cpu_count()} CPUs here, scales it)."]
    return "\n".join(L)
