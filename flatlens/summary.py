"""Aggregates over seeds of a reproduce run's results (shared by the report and the figures)."""
from __future__ import annotations

import math

import numpy as np
from scipy import stats

from ._util import mean_ci

CONFIG_LABEL = {"fp32": "full precision", "q8": "8 bit", "q7": "7 bit", "q4": "4 bit", "q2": "2 bit"}
CONFIG_BITS = {"fp32": 32, "q8": 8, "q7": 7, "q4": 4, "q2": 2}


def configs(results) -> list[str]:
    return [c[0] for c in results["plan"]["configs"]]


def domains(results) -> list[str]:
    return list(results["plan"]["domains"])


def models(results, domain, config) -> list[dict]:
    return [m for m in results["models"] if m["domain"] == domain and m["config"] == config]


def row(model, split, metric, prefix) -> dict | None:
    meas = model["measurements"].get(split, {}).get(metric)
    if not meas:
        return None
    for r in meas["rows"]:
        if r["label"].startswith(prefix):
            return r
    return None


def seed_stats(values) -> dict:
    v = np.asarray([x for x in values if x is not None], dtype=float)
    if v.size == 0:
        return {"mean": math.nan, "std": math.nan, "n": 0}
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "n": int(v.size)}


def pooled_row(ms, split, metric, prefix) -> dict:
    """Mean over seeds of a row's value, with the measurement CI sqrt(sum se^2)/S and the seed spread."""
    rows = [row(m, split, metric, prefix) for m in ms]
    rows = [r for r in rows if r is not None]
    if not rows:
        return {"mean": math.nan, "ci": None, "std": math.nan, "n": 0}
    vals = np.array([r["value"] for r in rows])
    ses = [r["stderr"] for r in rows]
    ci = None
    if all(s is not None and math.isfinite(s) for s in ses):
        se = math.sqrt(sum(s * s for s in ses)) / len(rows)
        ci = 1.96 * se
    return {"mean": float(vals.mean()), "ci": ci, "std": float(vals.std(ddof=1)) if len(vals) > 1 else 0.0,
            "n": len(rows), "values": vals.tolist(), "stderr": ses}


def pooled_flatness(ms, split) -> dict:
    """Local flatness pooled over seeds and directions: mean and 95 % CI per radius."""
    incs = [np.asarray(m["measurements"][split]["flatness"]["result"]["increases"]) for m in ms]
    radii = ms[0]["measurements"][split]["flatness"]["result"]["radii"]
    allinc = np.concatenate(incs, axis=0)
    mean, se, lo, hi = mean_ci(allinc, axis=0)
    return {"radii": radii, "mean": mean.tolist(), "lo": lo.tolist(), "hi": hi.tolist(), "n": int(allinc.shape[0])}


def accuracy(ms, key) -> dict:
    return seed_stats([m["metrics"][key] for m in ms])


def welch(a, b) -> dict:
    """Difference of means b - a over seeds, with Welch's t-test p-value and a 95 % CI."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = float(b.mean() - a.mean())
    if len(a) < 2 or len(b) < 2:
        return {"diff": diff, "p": math.nan, "ci": None}
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return {"diff": diff, "p": 0.0 if diff else 1.0, "ci": (diff, diff)}
    dof = (va + vb) ** 2 / ((va ** 2) / (len(a) - 1) + (vb ** 2) / (len(b) - 1))
    t = stats.t.ppf(0.975, dof)
    p = float(stats.ttest_ind(b, a, equal_var=False).pvalue)
    return {"diff": diff, "p": p, "ci": (diff - t * se, diff + t * se)}
