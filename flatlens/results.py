"""Typed results: dataclasses that serialize to JSON, and the shared fields every measurement records."""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import torch

from ._util import atomic_write_text


def _plain(x: Any) -> Any:
    """Convert tensors, arrays, tuples and dataclasses into JSON-ready containers (NaN/inf as strings)."""
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, torch.Tensor):
        return _plain(x.detach().cpu().tolist())
    if isinstance(x, np.ndarray):
        return _plain(x.tolist())
    if isinstance(x, (np.floating,)):
        return _plain(float(x))
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return repr(x)  # 'nan', 'inf', '-inf': strict JSON has no such literals
        return x
    if isinstance(x, dict):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _unplain(x: Any) -> Any:
    if isinstance(x, str) and x in ("nan", "inf", "-inf"):
        return float(x)
    if isinstance(x, list):
        return [_unplain(v) for v in x]
    if isinstance(x, dict):
        return {k: _unplain(v) for k, v in x.items()}
    return x


@dataclasses.dataclass
class Result:
    """Base of every result. Subclasses add their fields; `kind` names the measurement."""

    def to_dict(self) -> dict:
        d = _plain(self)
        d["kind"] = type(self).__name__
        return d

    def to_json(self, path=None, indent: int = 2) -> str:
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    @classmethod
    def from_dict(cls, d: dict):
        d = _unplain(dict(d))
        d.pop("kind", None)
        names = {f.name for f in dataclasses.fields(cls)}
        out = cls(**{k: v for k, v in d.items() if k in names})
        for f in dataclasses.fields(cls):  # JSON turned tuples into lists; restore pairs
            v = getattr(out, f.name)
            if f.name.endswith("ci95") and isinstance(v, list):
                if v and isinstance(v[0], list):
                    setattr(out, f.name, [tuple(p) for p in v])
                elif len(v) == 2 and not isinstance(v[0], list):
                    setattr(out, f.name, tuple(v))
        return out


RESULT_TYPES: dict[str, type] = {}


def register(cls):
    RESULT_TYPES[cls.__name__] = cls
    return cls


def result_from_dict(d: dict) -> Result:
    return RESULT_TYPES[d["kind"]].from_dict(d)
