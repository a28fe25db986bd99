"""Every number and string of a results.json that a code change must not move: the leaves of the typed run,
keyed by their path, without what legitimately varies between runs (times, host names, cache counts, file
paths and the hashes of checkpoints, which record their own training time)."""
from __future__ import annotations

import gzip
import json
import math

VARIES = {"seconds", "compile_seconds", "train_seconds", "seconds_per_point", "calibration", "train_per_model",
          "measure_per_model", "train_and_measure", "collect_and_analyze", "total", "machine", "cached", "cache",
          "figures", "checkpoint", "members", "path", "sha256", "checkpoint_sha256", "strategy", "vmap_chunk",
          "channels_last", "batch_size", "versions"}


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


def differences(a: dict, b: dict) -> list[str]:
    """Paths whose values differ (a NaN equals a NaN), or that only one side has."""
    out = []
    for k in sorted(set(a) | set(b)):
        if k not in a or k not in b:
            out.append(f"{k}: only in {'new' if k in b else 'stored'}")
            continue
        x, y = a[k], b[k]
        same = x == y or (isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y))
        if not same:
            out.append(f"{k}: stored {x!r}, now {y!r}")
    return out


def load(path) -> dict:
    with gzip.open(path, "rt") as fh:
        return json.load(fh)


def store(results_json, path) -> None:
    with open(results_json) as fh:
        numbers = leaves(json.load(fh))
    with gzip.open(path, "wt") as fh:
        json.dump(numbers, fh, sort_keys=True)
