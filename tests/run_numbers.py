"""Every number and string of a results.json that a code change must not move: the leaves of the typed run,
keyed by their path, without what legitimately varies between runs (times, host names, cache counts, file
paths and the hashes of checkpoints, which record their own training time)."""
from __future__ import annotations

import gzip
import json
import math
import re

VARIES = {"seconds", "compile_seconds", "train_seconds", "seconds_per_point", "calibration", "train_per_model",
          "train_per_job", "measure_per_job", "models_per_job", "cpus", "measure_per_model", "train_and_measure", "collect_and_analyze", "total", "machine", "cached", "cache",
          "figures", "checkpoint", "members", "path", "sha256", "checkpoint_sha256", "strategy", "vmap_chunk",
          "channels_last", "batch_size", "versions",
          "partner"}  # a pair entry's partner: a checkpoint's hash (which records its training time), as sha256


def leaves(obj, path: str = "", out: dict | None = None) -> dict:
    out = {} if out is None else out
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k not in VARIES:
                leaves(v, f"{path}/{k}", out)
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            leaves(v, f"{path}[{i}]", out)
    else:
        out[path] = obj
    return out


# The evaluator picks its layout (memory format, batch size) by timing, once per model shape and machine, and
# layouts differ in float32 summation order: on the quick run, forcing another layout moved perturbation values
# by at most 2e-6 absolute (1.3e-4 relative on a standard error of 4e-5). So floats are equal within these
# tolerances; a change in what is computed moves them by orders of magnitude more.
REL, ABS = 1e-3, 1e-5


def same(x, y, rel: float = REL, abs_: float = ABS) -> bool:
    if isinstance(x, float) and isinstance(y, float):
        if math.isnan(x) or math.isnan(y) or math.isinf(x) or math.isinf(y):
            return x == y or (math.isnan(x) and math.isnan(y))
        return abs(x - y) <= rel * max(abs(x), abs(y)) + abs_
    return x == y


def differences(a: dict, b: dict) -> list[str]:
    """Paths whose values differ (floats beyond the layout tolerance; a NaN equals a NaN), or that the stored run
    has and the new one lacks (a new field moves no stored number)."""
    out = []
    for k in sorted(a):
        if k not in b:
            out.append(f"{k}: only in the stored run")
        elif not same(a[k], b[k]):
            out.append(f"{k}: stored {a[k]!r}, now {b[k]!r}")
    return out


_NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?")


def text_differences(a: str, b: str, rel: float = 1e-2) -> list[str]:
    """Lines of two generated texts that differ in their words, or in a printed number by more than `rel` (a
    value on a rounding boundary may print one last digit apart: 3 significant digits are 1e-2 at worst)."""
    la, lb = a.splitlines(), b.splitlines()
    if len(la) != len(lb):
        return [f"{len(la)} lines stored, {len(lb)} now"]
    out = []
    for x, y in zip(la, lb):
        nx, ny = _NUMBER.findall(x), _NUMBER.findall(y)
        if _NUMBER.sub("#", x) != _NUMBER.sub("#", y) or len(nx) != len(ny) or not all(
                same(float(p), float(q), rel, 0.0) for p, q in zip(nx, ny)):
            out.append(f"stored: {x[:120]} | now: {y[:120]}")
    return out


def load(path) -> dict:
    with gzip.open(path, "rt") as fh:
        return json.load(fh)


def store(results_json, path) -> None:
    with open(results_json) as fh:
        numbers = leaves(json.load(fh))
    with gzip.open(path, "wt") as fh:
        json.dump(numbers, fh, sort_keys=True)
