"""`flatlens compare`: is B flatter than A, by how much, and how sure are we? It answers one of two questions,
and says which:

- checkpoints (`compare A.pt B.pt ...`): *measurement noise* of these given checkpoints. Every checkpoint is
  measured on the same samples with the same seeded directions, probes and noise draws; a row whose per-draw
  values are paired (same `pairing`) is tested by the paired t-test of the differences, other rows by Welch's
  test with each estimate's own degrees of freedom. Eigenvalues carry residual *bounds*, not CIs: they are not
  tested (deterministic on the samples).
- methods (`compare --group fp a1 a2 a3 --group q7 b1 b2 b3`): *training noise*. The unit of replication is
  the checkpoint (seed): each group's value is the mean over its checkpoints with a t-interval on S - 1 df
  (for flatness that is the two-level estimate: per-seed means of the directions), the measurement part
  reported beside it; groups are compared by Welch's test over checkpoints.

Every printed verdict uses Holm-adjusted p-values over the family of rows printed together; the JSON holds the
test, its df, raw and adjusted p-values and the smallest difference detectable with 80 % power.
"""
from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field

from . import fmt
from . import metrics as M
from . import stats
from ._util import FlatlensError, atomic_write_text
from .cache import ResultCache
from .checkpoint import Checkpoint
from .measure import MetricRecord, versions
from .results import Result, register

QUESTION = {
    "checkpoints": "checkpoint vs checkpoint: how precisely these given models were measured (measurement "
                   "noise: directions, probes, noise draws on fixed samples); says nothing about training methods",
    "groups": "method vs method: does one training method give flatter models than another (training noise: "
              "the checkpoints of a group are its independent replicates)",
    "pairs": "method vs method, paired: does one training method give flatter models than another (training noise: "
             "the checkpoints of one seed share initialisation, data order and prefix, and are measured alike; the "
             "paired difference over seeds is the sample)",
}


@dataclass
class ComparisonRow:
    """One subject's value of one summary row, and its difference to the reference with the test behind it."""
    split: str
    metric: str
    key: str
    label: str
    unit: str
    direction: str | None
    subject: str                              # checkpoint path, or group name
    value: float
    interval: tuple[float, float] | None
    interval_kind: str | None                 # "ci95", "bound" or "gap-bound" (a bound is not a probability statement)
    source: str                               # "measurement" or "over S seeds"
    n: int | None
    df: float | None
    within_stderr: float | None = None        # groups: the measurement part of the group's uncertainty
    values: list[float] | None = None         # groups: the per-checkpoint values
    reference: str | None = None
    diff: float | None = None
    diff_interval: tuple[float, float] | None = None
    diff_interval_kind: str | None = None
    diff_stderr: float | None = None
    test: str | None = None
    statistic: float | None = None
    test_df: float | None = None
    p: float | None = None
    p_holm: float | None = None
    mde80: float | None = None
    verdict: str = "(reference)"
    cached: bool = False


@register
@dataclass
class Comparison(Result):
    mode: str
    question: str
    rows: list[ComparisonRow]
    records: list[MetricRecord]
    settings: M.Settings
    checkpoints: list[dict]
    groups: dict[str, list[str]] = field(default_factory=dict)
    family: dict = field(default_factory=dict)
    bn: str = "eval"
    versions: dict = field(default_factory=dict)
    cache: dict = field(default_factory=dict)


def _verdict(direction, diff, p_holm) -> str:
    """A row's word: which way it differs from the reference where its Holm-adjusted p rejects (`stats.significant`)."""
    if p_holm is None or math.isnan(p_holm):
        return "not tested"
    if not stats.significant(p_holm):
        return "no significant difference"
    if direction == M.LOWER:
        return "flatter" if diff < 0 else "sharper"
    return "lower" if diff < 0 else "higher"


def _pair_test(a: M.Row, b: M.Row):
    """(TestResult or None, diff interval, its kind, why-not) for b - a of one checkpoint pair."""
    diff = b.value - a.value
    if a.samples and b.samples and a.pairing and a.pairing == b.pairing and len(a.samples) == len(b.samples) >= 2:
        t = stats.paired(a.samples, b.samples)
        return t, t.ci95, "ci95", None
    ea, eb = a.estimate(), b.estimate()
    if ea is not None and eb is not None:
        t = stats.welch(ea, eb)
        return t, t.ci95, "ci95", None
    if a.interval_kind in M.BOUND_KINDS and b.interval_kind in M.BOUND_KINDS:
        half = (a.interval[1] - a.interval[0]) / 2 + (b.interval[1] - b.interval[0]) / 2
        side = "higher" if diff - half > 0 else "lower" if diff + half < 0 else "within the bounds"
        kind = "bound" if a.interval_kind == b.interval_kind == "bound" else "gap-bound"
        return None, (diff - half, diff + half), kind, f"not tested (deterministic on these samples; {side})"
    if a.interval is not None or b.interval is not None:  # an interval without a standard error (simultaneous)
        return None, None, None, "not tested (each row's interval is its own; no standard error to test with)"
    return None, None, None, "not tested (no CI)"


def _apply_holm(rows: list[ComparisonRow], tests: dict[int, stats.TestResult]) -> dict:
    """Holm over every tested row printed together (`tests`: row index -> its test); verdicts and MDE80s."""
    tested = [i for i, r in enumerate(rows) if r.p is not None and not math.isnan(r.p)]
    adj, level = stats.holm_family([tests[i].p for i in tested])
    for i, p in zip(tested, adj):
        r, t = rows[i], tests[i]
        t.mde80 = stats.detectable_difference(t.stderr, t.df, alpha=level)
        r.p_holm, r.mde80 = p, t.mde80
        r.verdict = _verdict(r.direction, r.diff, p)
    family = {"correction": "Holm", "size": len(tested), "alpha": stats.ALPHA, "mde_alpha": level}
    return {**family, "note": "verdicts use Holm-adjusted p-values over every tested row printed together; MDE80 is "
                              "the difference detected with 80 % power at alpha / size (the level Holm guarantees "
                              "suffices)"}


def _measure_all(ckpts, metric_names, splits, settings, *, cache, device, data_file, progress, axis="auto"):
    """Every checkpoint, metric and split on the first checkpoint's protocol (or the file's samples), with
    `settings` (one for all, or one per checkpoint): {(split, metric): [record per checkpoint]}."""
    from .pipeline import DataSource, Target, check_compatible, measure_all
    if data_file is None:
        check_compatible(ckpts)
    per = settings if isinstance(settings, list) else [settings] * len(ckpts)
    done = measure_all([Target(c, list(metric_names), s) for c, s in zip(ckpts, per)], list(splits),
                       source=DataSource(data_file, shared=True), cache=cache, device=device, progress=progress,
                       label="compare", axis=axis)
    return {(split, name): [done.get(i, split, name) for i in range(len(ckpts))]
            for split in splits for name in metric_names}


def _row_base(metric, split, key, subject, **kw) -> ComparisonRow:
    m = M.get(metric)
    spec = m.spec(key)
    return ComparisonRow(split=split, metric=metric, key=key, label=spec.label_for(key), unit=spec.unit,
                         direction=spec.direction, subject=subject, **kw)


def compare(ckpts: list[Checkpoint], metric_names: list[str], splits: list[str], settings: M.Settings, *,
            cache: ResultCache, device="cpu", data_file: str | None = None, progress=False,
            axis: str = "auto") -> Comparison:
    """Checkpoint vs checkpoint (measurement noise): every row of every checkpoint against the first."""
    if not ckpts:
        raise FlatlensError("compare needs at least one checkpoint")
    measured = _measure_all(ckpts, metric_names, splits, settings, cache=cache, device=device, data_file=data_file,
                            progress=progress, axis=axis)
    rows, records, tests = [], [], {}
    for (split, name), recs in measured.items():
        records += recs
        ref = recs[0]
        for r0 in ref.rows:
            for c, rec in zip(ckpts, recs):
                r = rec.row(r0.key)
                row = _row_base(name, rec.split, r.key, c.path, value=r.value, interval=r.interval,
                                interval_kind=r.interval_kind, source=r.source, n=r.n, df=r.df, cached=rec.cached)
                if rec is not ref:
                    t, dci, kind, why = _pair_test(r0, r)
                    row.reference = ckpts[0].path
                    row.diff = r.value - r0.value
                    row.diff_interval, row.diff_interval_kind = dci, kind
                    if t is None:
                        row.verdict = why
                    else:
                        row.test, row.statistic, row.test_df, row.p = t.test, t.statistic, t.df, t.p
                        row.diff_stderr = t.stderr
                        tests[len(rows)] = t
                rows.append(row)
    family = _apply_holm(rows, tests)
    return Comparison(mode="checkpoints", question=QUESTION["checkpoints"], rows=rows, records=records,
                      settings=settings, checkpoints=[_ckpt_info(c) for c in ckpts], family=family,
                      versions=versions(), cache=cache.stats())


MIN_GROUP = 3  # fewer checkpoints per group: Welch's coverage fell to 0.89 (2 vs 5, unequal spread)


def _refuse_duplicates(groups: dict[str, list[Checkpoint]]) -> None:
    """The same model listed twice (in one group or in two) is one replicate, not two: refused."""
    seen = {}
    for g, cs in groups.items():
        for c in cs:
            if c.sha256 in seen:
                raise FlatlensError(f"{c.path} (group {g!r}) is the same model as {seen[c.sha256][1]} (group "
                                    f"{seen[c.sha256][0]!r}); each checkpoint is one replicate, list it once")
            seen[c.sha256] = (g, c.path)


def pairs_of(groups: dict[str, list[Checkpoint]]) -> list[int]:
    """The training seeds that pair the groups' checkpoints, in the first group's order: every group holds one
    checkpoint per seed, and checkpoints of one seed branched from the same full-precision prefix (their
    `pairing` records both). Refused, with the reason, where they do not match."""
    names = list(groups)
    by_seed = {}
    for g in names:
        by_seed[g] = {}
        for c in groups[g]:
            p = c.pairing
            if p is None:
                raise FlatlensError(f"{c.path} records no pairing (seed and shared prefix): trained by an older "
                                    "flatlens or imported; compare it unpaired (--group without --paired)")
            if p.seed in by_seed[g]:
                raise FlatlensError(f"group {g!r} holds two checkpoints of seed {p.seed}: "
                                    f"{by_seed[g][p.seed].path} and {c.path}")
            by_seed[g][p.seed] = c
    seeds = list(by_seed[names[0]])
    for g in names[1:]:
        if set(by_seed[g]) != set(seeds):
            raise FlatlensError(f"groups {names[0]!r} and {g!r} do not pair: seeds {sorted(seeds)} against "
                                f"{sorted(by_seed[g])}")
    for s in seeds:
        prefixes = {(by_seed[g][s].pairing.prefix_step, by_seed[g][s].pairing.prefix_sha256) for g in names}
        if len(prefixes) > 1:
            raise FlatlensError(f"the checkpoints of seed {s} did not branch from one shared prefix "
                                f"({', '.join(by_seed[g][s].path for g in names)}): they are not a pair")
    return seeds


def compare_groups(groups: dict[str, list[Checkpoint]], metric_names: list[str], splits: list[str],
                   settings: M.Settings, *, cache: ResultCache, device="cpu", data_file: str | None = None,
                   progress=False, axis: str = "auto", paired: bool = False) -> Comparison:
    """Method vs method (training noise): each group's checkpoints are its replicates. Unpaired: Welch over
    checkpoints, every checkpoint measured alike. Paired (`paired`): checkpoints matched by seed and shared
    prefix (`pairs_of`), each pair measured with its own measurement seed (the base seed plus the training seed:
    common random numbers within a pair, fresh draws across pairs), compared by the paired t over pairs."""
    if len(groups) < 2:
        raise FlatlensError("--group needs at least two groups (one --group NAME CKPT... each)")
    for g, cs in groups.items():
        if len(cs) < MIN_GROUP:
            raise FlatlensError(f"group {g!r} has {len(cs)} checkpoint(s); seed-level inference needs >= {MIN_GROUP} "
                                "per group")
    _refuse_duplicates(groups)
    names = list(groups)
    if paired:
        seeds = pairs_of(groups)
        groups = {g: sorted(cs, key=lambda c: seeds.index(c.pairing.seed)) for g, cs in groups.items()}
    allc = [c for cs in groups.values() for c in cs]
    if paired:
        per = {s: _with_seed(settings, settings.common.seed + s) for s in seeds}
        target_settings = [per[c.pairing.seed] for c in allc]
    else:
        target_settings = [settings] * len(allc)
    measured = _measure_all(allc, metric_names, splits, target_settings, cache=cache, device=device,
                            data_file=data_file, progress=progress, axis=axis)
    sizes = [len(groups[g]) for g in names]
    rows, records, tests = [], [], {}
    for (split, name), recs in measured.items():
        records += recs
        by_group, start = {}, 0
        for g, n in zip(names, sizes):
            by_group[g] = recs[start:start + n]
            start += n
        for r0 in recs[0].rows:
            ests, vals = {}, {}
            for g in names:
                per_row = [rec.row(r0.key) for rec in by_group[g]]
                vals[g] = [p.value for p in per_row]
                e = stats.over_seeds_estimate(vals[g], [p.stderr for p in per_row])
                ests[g] = e
                row = _row_base(name, split, r0.key, g, value=e.value, interval=e.ci95, interval_kind="ci95",
                                source=e.source, n=e.n, df=e.df, within_stderr=e.within_stderr, values=vals[g],
                                cached=all(rec.cached for rec in by_group[g]))
                if g != names[0]:
                    if paired:
                        t = stats.paired(vals[names[0]], vals[g], source=stats.over_seeds(len(seeds)))
                        t.test = "paired t over seeds"
                    else:
                        t = stats.welch(ests[names[0]], e)
                        t.test = "Welch t over checkpoints"
                    row.reference = names[0]
                    row.diff, row.diff_interval, row.diff_interval_kind = t.estimate, t.ci95, "ci95"
                    row.test, row.statistic, row.test_df, row.p = t.test, t.statistic, t.df, t.p
                    row.diff_stderr = t.stderr
                    tests[len(rows)] = t
                    if row.p is None or math.isnan(row.p):
                        row.verdict = f"not tested ({t.note or 'no spread'})"
                rows.append(row)
    family = _apply_holm(rows, tests)
    return Comparison(mode="pairs" if paired else "groups", question=QUESTION["pairs" if paired else "groups"],
                      rows=rows, records=records, settings=settings, checkpoints=[_ckpt_info(c) for c in allc],
                      groups={g: [c.path for c in cs] for g, cs in groups.items()}, family=family,
                      versions=versions(), cache=cache.stats())


def _with_seed(settings: M.Settings, seed: int) -> M.Settings:
    import copy
    s = copy.deepcopy(settings)
    s.common.seed = int(seed)
    return s


def _ckpt_info(c: Checkpoint) -> dict:
    import dataclasses
    return {"path": c.path, "sha256": c.sha256, "arch": dataclasses.asdict(c.arch),
            "quant_bits": None if c.quant is None else c.quant.bits,
            "data": None if c.data is None else dataclasses.asdict(c.data)}


# --------------------------------------------------------------------------- output
def _fmt(v):
    return fmt.num(v, 4, sci=3, missing="-")


def _p(v):
    return fmt.pval(v, missing="-")


def format_table(rep: Comparison) -> str:
    groups = rep.mode in ("groups", "pairs")
    L = [f"question: {rep.question}"]
    head = (f"{'split':6} {'measure':40} {'group' if groups else 'checkpoint':20} {'value [interval]':34} {'n':>4}  "
            f"{'difference to the first [interval]':38} {'test, p, Holm p':36} {'MDE80':>9}  verdict")
    L += [head, "-" * len(head)]
    for r in rep.rows:
        val = _fmt(r.value) + (f" [{_fmt(r.interval[0])}, {_fmt(r.interval[1])}]" if r.interval else "")
        val += f" {M.interval_label(r.interval_kind)}" if r.interval_kind in M.BOUND_KINDS else ""
        if groups and r.within_stderr is not None:
            val += f" (meas. se {_fmt(r.within_stderr)})"
        diff = ""
        if r.reference is not None and r.diff is not None:
            diff = _fmt(r.diff)
            if r.diff_interval:
                diff += f" [{_fmt(r.diff_interval[0])}, {_fmt(r.diff_interval[1])}]"
                diff += f" {M.interval_label(r.diff_interval_kind)}" if r.diff_interval_kind in M.BOUND_KINDS else ""
        test = f"{r.test}, p {_p(r.p)}, Holm {_p(r.p_holm)}" if r.test else "-"
        L.append(f"{r.split:6} {r.label[:40]:40} {os.path.basename(r.subject)[:20]:20} {val:34} "
                 f"{str(r.n or '-'):>4}  {diff:38} {test:36} {_fmt(r.mde80):>9}  {r.verdict}")
    L.append("")
    src = "over the checkpoints of each group, i.e. seeds" if groups else "measurement noise of each checkpoint"
    L.append(f"intervals: 95 % CIs ({src}) unless marked 'bound' (a residual bound, not a probability statement); "
             f"verdicts: Holm-adjusted p < {rep.family.get('alpha', 0.05)} over the {rep.family.get('size', 0)} "
             f"tested rows; MDE80: the smallest difference this design detects with 80 % power at alpha "
             f"{_p(rep.family.get('mde_alpha'))} (0.05 over the family size, the level Holm guarantees suffices).")
    weights = sorted({f"{os.path.basename(r.checkpoint or '?')}: {r.weights_label}" for r in rep.records})
    L.append("measured at: " + "; ".join(weights) + f". BN policy: {rep.bn}.")
    return "\n".join(L)


CSV_COLUMNS = ["split", "metric", "key", "label", "subject", "value", "interval_low", "interval_high",
               "interval_kind", "source", "n", "df", "reference", "diff", "diff_low", "diff_high", "test",
               "test_df", "p", "p_holm", "mde80", "verdict"]


def write_outputs(rep: Comparison, *, json_path=None, csv_path=None) -> None:
    if json_path:
        rep.to_json(json_path, indent=1)
    if csv_path:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for r in rep.rows:
            iv, dv = r.interval or (None, None), r.diff_interval or (None, None)
            w.writerow({"split": r.split, "metric": r.metric, "key": r.key, "label": r.label, "subject": r.subject,
                        "value": r.value, "interval_low": iv[0], "interval_high": iv[1],
                        "interval_kind": r.interval_kind, "source": r.source, "n": r.n, "df": r.df,
                        "reference": r.reference, "diff": r.diff, "diff_low": dv[0], "diff_high": dv[1],
                        "test": r.test, "test_df": r.test_df, "p": r.p, "p_holm": r.p_holm, "mde80": r.mde80,
                        "verdict": r.verdict})
        atomic_write_text(csv_path, buf.getvalue())
