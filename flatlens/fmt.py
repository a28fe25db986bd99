"""How numbers print: one rule for every table, report sentence and command line.

    num:  `digits` significant digits; scientific with `sci` decimals below 1e-3 and from 1e5 on
    pval: two significant digits; scientific below 1e-4
    interval: "[lo, hi]" of two nums, or a word where there is no finite interval
A missing value (None, NaN, inf) prints as `missing`."""
from __future__ import annotations

import math


def _missing(x) -> bool:
    return x is None or (isinstance(x, float) and (math.isnan(x) or math.isinf(x)))


def num(x, digits: int = 3, *, sci: int = 2, missing: str = "n/a") -> str:
    if _missing(x):
        return missing
    a = abs(x)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        return f"{x:.{sci}e}"
    return f"{x:.{digits}g}"


def pval(p, *, missing: str = "n/a") -> str:
    if _missing(p):
        return missing
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.1e}"


def interval(ci, digits: int = 3, *, none: str = "no finite CI", missing: str = "n/a") -> str:
    if ci is None:
        return none
    return f"[{num(ci[0], digits, missing=missing)}, {num(ci[1], digits, missing=missing)}]"
