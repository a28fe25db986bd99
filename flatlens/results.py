"""Typed results: dataclasses that serialize to JSON and read back through the same types.

`to_dict` turns a result into plain JSON containers (NaN / inf as the strings 'nan', 'inf', '-inf', since
strict JSON has no such literals); `from_dict` rebuilds it field by field from the dataclass's type hints
(nested results, lists, dicts, tuples, optionals), so a JSON file is always read back as the objects that
wrote it, never looked up by key strings at the point of use. A field typed as the base `Result` holds any
registered result and is rebuilt from its `kind`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Any

import numpy as np
import torch

from ._util import FlatlensError, atomic_write_text


def to_plain(x: Any) -> Any:
    """Convert tensors, arrays, tuples and dataclasses into JSON-ready containers (NaN/inf as strings)."""
    if isinstance(x, Result):
        return x.to_dict()
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: to_plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, torch.Tensor):
        return to_plain(x.detach().cpu().tolist())
    if isinstance(x, np.ndarray):
        return to_plain(x.tolist())
    if isinstance(x, np.floating):
        return to_plain(float(x))
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    if isinstance(x, float):
        if math.isnan(x) or math.isinf(x):
            return repr(x)  # 'nan', 'inf', '-inf'
        return x
    if isinstance(x, dict):
        return {str(k): to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_plain(v) for v in x]
    return x


def _unplain(x: Any) -> Any:
    if isinstance(x, str) and x in ("nan", "inf", "-inf"):
        return float(x)
    if isinstance(x, list):
        return [_unplain(v) for v in x]
    if isinstance(x, dict):
        return {k: _unplain(v) for k, v in x.items()}
    return x


_HINTS: dict[type, dict] = {}


def _hints(cls) -> dict:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def from_plain(tp, x: Any) -> Any:
    """Rebuild a value of type `tp` from its JSON form (the inverse of `to_plain`)."""
    if tp is Any or tp is None:
        return _unplain(x)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if x is None:
            return None
        non_none = [a for a in args if a is not type(None)]
        for a in non_none:
            try:
                return from_plain(a, x)
            except (TypeError, ValueError, KeyError, FlatlensError):
                continue
        raise ValueError(f"{x!r:.60} matches none of {tp}")
    if origin in (list, typing.List):
        if not isinstance(x, list):
            raise TypeError(f"expected a list, got {type(x).__name__}")
        return [from_plain(args[0] if args else Any, v) for v in x]
    if origin in (tuple, typing.Tuple):
        if not isinstance(x, (list, tuple)):
            raise TypeError(f"expected a pair/tuple, got {type(x).__name__}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(from_plain(args[0], v) for v in x)
        if args and len(args) != len(x):
            raise ValueError(f"expected {len(args)} entries, got {len(x)}")
        return tuple(from_plain(a, v) for a, v in zip(args, x)) if args else tuple(_unplain(x))
    if origin in (dict, typing.Dict):
        if not isinstance(x, dict):
            raise TypeError(f"expected an object, got {type(x).__name__}")
        vt = args[1] if len(args) == 2 else Any
        return {k: from_plain(vt, v) for k, v in x.items()}
    if isinstance(tp, type) and issubclass(tp, Result):
        if not isinstance(x, dict):
            raise TypeError(f"expected an object for {tp.__name__}, got {type(x).__name__}")
        kind = x.get("kind")
        cls = RESULT_TYPES.get(kind, tp) if kind else tp
        if not issubclass(cls, tp):
            raise ValueError(f"a {kind} is not a {tp.__name__}")
        return cls.from_dict(x)
    if dataclasses.is_dataclass(tp):
        return _dataclass_from(tp, x)
    if tp is float:
        v = _unplain(x)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise TypeError(f"expected a number, got {type(x).__name__}")
        return float(v)
    if tp is int:
        if isinstance(x, bool) or not isinstance(x, int):
            raise TypeError(f"expected an integer, got {type(x).__name__}")
        return x
    if tp is bool:
        if not isinstance(x, bool):
            raise TypeError(f"expected true/false, got {type(x).__name__}")
        return x
    if tp is str:
        if not isinstance(x, str):
            raise TypeError(f"expected a string, got {type(x).__name__}")
        return x
    if tp is dict:
        if not isinstance(x, dict):
            raise TypeError(f"expected an object, got {type(x).__name__}")
        return _unplain(x)
    if tp is list:
        if not isinstance(x, list):
            raise TypeError(f"expected a list, got {type(x).__name__}")
        return _unplain(x)
    return _unplain(x)


def _dataclass_from(cls, d: Any):
    if not isinstance(d, dict):
        raise TypeError(f"expected an object for {cls.__name__}, got {type(d).__name__}")
    hints = _hints(cls)
    kw = {}
    for f in dataclasses.fields(cls):
        if f.name in d:
            try:
                kw[f.name] = from_plain(hints.get(f.name, Any), d[f.name])
            except (TypeError, ValueError) as e:
                raise ValueError(f"{cls.__name__}.{f.name}: {e}") from None
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"{cls.__name__} lacks field {f.name!r}")
    return cls(**kw)


@dataclasses.dataclass
class Result:
    """Base of every result. Subclasses add their fields; `kind` names the type on disk."""

    def to_dict(self) -> dict:
        d = {f.name: to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        d["kind"] = type(self).__name__
        return d

    def to_json(self, path=None, indent: int = 2) -> str:
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            atomic_write_text(path, text + "\n")
        return text

    @classmethod
    def from_dict(cls, d: dict):
        if not isinstance(d, dict):
            raise ValueError(f"expected an object for {cls.__name__}")
        kind = d.get("kind")
        if kind is not None and kind != cls.__name__:
            sub = RESULT_TYPES.get(kind)
            if sub is None or not issubclass(sub, cls):
                raise ValueError(f"a {kind!r} record is not a {cls.__name__}")
            return sub.from_dict(d)
        return _dataclass_from(cls, d)

    @classmethod
    def from_json(cls, path):
        """Read a JSON file written by `to_json` back as this type; one clear error if it is not one."""
        try:
            with open(path) as fh:
                raw = json.load(fh)
        except FileNotFoundError:
            raise FlatlensError(f"{path}: no such file") from None
        except IsADirectoryError:
            raise FlatlensError(f"{path}: is a directory, not a JSON file") from None
        except (ValueError, UnicodeDecodeError) as e:
            raise FlatlensError(f"{path}: not valid JSON ({str(e)[:80]})") from None
        try:
            return cls.from_dict(raw)
        except (ValueError, TypeError, KeyError) as e:
            raise FlatlensError(f"{path}: not a {cls.__name__} file ({str(e)[:120]})") from None


RESULT_TYPES: dict[str, type] = {}


def register(cls):
    RESULT_TYPES[cls.__name__] = cls
    return cls


def result_from_dict(d: dict) -> Result:
    return RESULT_TYPES[d["kind"]].from_dict(d)
