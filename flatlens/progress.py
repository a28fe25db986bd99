"""Progress lines on stderr (tqdm): an overall line with an ETA for a command's measurements, and under it one
live line per measurement that counts Hessian-vector products and perturbed evaluations as the estimator
makes them (through `Objective.on_progress`). `--quiet` disables both."""
from __future__ import annotations

import contextlib

from tqdm.auto import tqdm

NAMES = {"hvp": "HVPs", "eval": "evaluations", "grad": "gradients"}


def overall(total: int, desc: str, enabled: bool):
    """The command's line: `total` measurements, with tqdm's ETA."""
    return tqdm(total=total, desc=desc, unit=" measurement", disable=not enabled, dynamic_ncols=True)


@contextlib.contextmanager
def measurement(obj, desc: str, enabled: bool):
    """One measurement's line while it runs: the HVPs, gradients and evaluations of `obj` as they happen."""
    if not enabled:
        yield
        return
    bar = tqdm(desc=desc, unit=" op", leave=False, dynamic_ncols=True)
    counts: dict[str, int] = {}

    def on(kind: str, n: int) -> None:
        counts[kind] = counts.get(kind, 0) + n
        bar.update(n)
        bar.set_postfix_str(", ".join(f"{v} {NAMES.get(k, k)}" for k, v in counts.items()), refresh=False)

    obj.on_progress = on
    try:
        yield
    finally:
        obj.on_progress = None
        bar.close()
