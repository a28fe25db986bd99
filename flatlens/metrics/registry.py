"""The shape of the metric registry: settings with their ranges and flags, summary rows, the `Metric` entry and
`REGISTRY`, and the settings of a run. The entries themselves live beside it, by family (hessian.py,
flatness.py, landscape.py, sharpness.py).

A `Metric` entry says what the metric is called, its settings (a dataclass: defaults, valid ranges, the CLI
flag of each), how it is computed from an `Objective`, its summary rows (stable keys, display labels, units, and
whether lower is flatter), the command that measures it alone, its role in `flatlens reproduce` (measured on
every seed, on one seed, or not at all) with its settings in the quick and full plans, the figures that draw it,
any preparation its computations share across the checkpoints of one call, and what its defaults cost. A `pair`
entry measures each checkpoint against a partner checkpoint of the same call (the loss barrier between two models):
its `prepare` sees every checkpoint of the call, picks each one's partner and writes the partner's hash into that
checkpoint's own copy of the entry's settings (so the cache key names the pair), and the computation receives the
partner through `Context.prepared`. The CLI's
choices and flags, the measurement pipeline, `compare`, `reproduce`, the report and the figures all read
`REGISTRY`; adding a metric is one entry plus its estimator. Consumers find rows by key, never by label.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .. import stats
from .._util import FlatlensError, check_number
from ..results import Result, register

if TYPE_CHECKING:
    from ..checkpoint import Checkpoint

LOWER = "lower"   # lower is flatter


# --------------------------------------------------------------------------- settings
def setting(default, help: str, flag: str | None = None, **meta):
    """A metric setting: its default, a help line, its CLI flag (None: API only) and its valid range
    (`min` inclusive, `gt` exclusive, `max` inclusive, `choices`, `nargs`; tuples are checked per entry)."""
    return field(default=default, metadata={"help": help, "flag": flag, **meta})


def check_settings(s, where: str = "") -> None:
    """Every numeric setting finite and in its range, every choice known: one FlatlensError otherwise."""
    for f in dataclasses.fields(s):
        v = getattr(s, f.name)
        m = f.metadata
        name = m.get("flag") or f.name
        if v is None:
            continue
        if "choices" in m and v not in m["choices"]:
            raise FlatlensError(f"{where}{name} must be one of {', '.join(map(str, m['choices']))}; got {v!r}")
        values = v if isinstance(v, (tuple, list)) else (v,)
        if "nargs" in m and isinstance(m["nargs"], int) and len(values) != m["nargs"]:
            raise FlatlensError(f"{where}{name} takes {m['nargs']} values; got {len(values)}")
        if isinstance(v, (tuple, list)) and not values and m.get("nargs") == "+":
            raise FlatlensError(f"{where}{name} needs at least one value")
        lo, lo_open = (m["gt"], True) if "gt" in m else (m.get("min"), False)
        integer = f.type in ("int", int)  # an int setting stays whole
        for x in values:
            if not isinstance(x, bool) and isinstance(x, (int, float)):
                check_number(f"{where}{name}", x, lo=lo, hi=m.get("max"), lo_open=lo_open, integer=integer)
        if m.get("increasing") and len(values) == 2 and not values[0] < values[1]:
            raise FlatlensError(f"{where}{name} needs LO < HI; got {values[0]!r} {values[1]!r}")
    if callable(getattr(s, "check", None)):  # what one setting needs of another
        try:
            s.check()
        except FlatlensError as e:
            raise FlatlensError(f"{where}{e}") from None


@dataclass
class Common:
    """Settings every metric shares (part of every cache key)."""
    samples: int = setting(512, "evaluation samples per split (a seeded subset; all if fewer)", "--samples", min=1)
    seed: int = setting(0, "seed of the data subset and of every probe, direction and noise draw", "--seed",
                        min=0, max=2 ** 62)
    batch_size: int = setting(256, "samples per evaluation batch", None, min=1)
    weights: str = setting("deployed", "quantized checkpoints: the deployed weights s*round(clip(w/s)) or the "
                           "latent ones", "--weights", choices=("deployed", "latent"))


# --------------------------------------------------------------------------- rows
@dataclass(frozen=True)
class RowSpec:
    """How a summary row reads: `key` exact, or a prefix when `prefix` (label's {rest} = the key's rest)."""
    key: str
    label: str
    unit: str
    direction: str | None = LOWER      # LOWER: lower is flatter; None: not read as flat / sharp
    prefix: bool = False

    def matches(self, key: str) -> bool:
        return key.startswith(self.key) if self.prefix else key == self.key

    def label_for(self, key: str) -> str:
        return self.label.replace("{rest}", key[len(self.key):]) if self.prefix else self.label


BOUND_KINDS = ("bound", "gap-bound")  # interval kinds that are bounds, not confidence intervals


def interval_label(kind: str | None) -> str:
    """How a table names an interval kind: "95% CI", "bound" or "gap bound" ("" for none)."""
    return {"ci95": "95% CI", "bound": "bound", "gap-bound": "gap bound"}.get(kind, "")


@dataclass
class Row:
    """One number of a metric record, found by its stable `key`.

    interval_kind: "ci95" (a 95 % t-interval, `df` degrees of freedom), "bound" (a deterministic residual
    bound, not a probability statement), "gap-bound" (residual^2 / an estimated gap: a bound when that estimate
    holds) or None. `samples`: the per-draw values behind a CI (directions,
    probes, data batches); rows of two checkpoints with equal `pairing` strings were drawn identically, so
    their difference is tested paired."""
    key: str
    value: float
    stderr: float | None = None
    df: float | None = None
    interval: tuple[float, float] | None = None
    interval_kind: str | None = None
    n: int | None = None
    samples: list[float] | None = None
    pairing: str | None = None
    source: str = stats.MEASUREMENT

    def estimate(self) -> stats.Estimate | None:
        if self.stderr is None or self.df is None or not math.isfinite(self.stderr):
            return None
        return stats.estimate(self.value, self.stderr, self.df, self.n or 0, source=self.source)


def t_row(key, values, pairing=None, n=None) -> Row:
    e = stats.t_interval(values)
    return Row(key, e.value, e.stderr, e.df, e.ci95, "ci95", n if n is not None else e.n,
               [float(v) for v in np.asarray(values, float).reshape(-1)], pairing)


# --------------------------------------------------------------------------- the registry's shape
@dataclass
class Context:
    """What a computation may need beyond the Objective and its settings (not part of any key)."""
    seed: int = 0                      # the common seed (every probe, direction and noise draw)
    ckpt: Checkpoint | None = None
    progress: bool = False
    store: str | None = None
    prepared: Any = None               # what the entry's `prepare` made for every checkpoint of the call


# the subcommands that measure entries alone: the one list (the CLI's table of commands reads it)
COMMANDS = ("hessian", "landscape", "flatness", "sharpness", "interpolate")
# reproduce: "headline" (the family's on every seed, others on the first seeds), "illustrative" (one seed),
# "exploratory" (every seed, train split, analysed as exploratory; a pair entry skips the full-precision models,
# which are the partners), "extra" (not run)
ROLES = ("headline", "illustrative", "exploratory", "extra")


@dataclass(frozen=True)
class Metric:
    name: str
    summary: str
    command: str                     # the subcommand that measures it on its own (COMMANDS)
    role: str                        # reproduce: one of ROLES ("headline", "illustrative", "exploratory", "extra")
    settings: type
    compute: Callable[[Any, Any, Context], Result]
    rows: Callable[[Result, Any], list[Row]]
    specs: tuple[RowSpec, ...]
    brief: Callable[[Result], str]
    cost: str                        # what the defaults cost per checkpoint and split, shown in --help (measured
                                     # on `flatlens train`'s default model, 512 samples, 2 CPU threads)
    summary_row: Callable[[Any], str] | None = None   # settings -> the row key shown in summary tables
    axis: str = "points"             # under torchrun: "data" (HVP / gradient metrics) or "points" (perturbations)
    plans: dict = field(default_factory=dict)   # "quick" / "full" -> a factory of this metric's settings there
    figures: tuple[str, ...] = ()    # the figures (plots.FIGURES names) that draw it
    prepare: Callable[[list, list], Any] | None = None  # (checkpoints, their settings) -> Context.prepared
    dim: int | None = None           # landscape entries: 1 (curves) or 2 (a slice), what `--dim` selects
    claim: str | None = None         # its confirmatory claim in reproduce's plan ("{b} ... than {a}"; its summary row
    #                                  on the train split, the paper's bit-width against full precision), or None
    pair: bool = False               # measured against a partner checkpoint of the call (see the module docstring)
    compare_default: bool = False    # what `flatlens compare` measures when no --metric is given (`default_metric`)

    def spec(self, key: str) -> RowSpec:
        for s in self.specs:
            if s.matches(key):
                return s
        raise KeyError(f"{self.name} has no row {key!r}")

    def label(self, key: str) -> str:
        return self.spec(key).label_for(key)

    def plan_settings(self, plan: str):
        """This metric's settings in the reproduce plan `plan` ("quick" or "full"; its defaults where the entry
        names none)."""
        make = self.plans.get(plan)
        return make() if make is not None else self.settings()


REGISTRY: dict[str, Metric] = {}


def register_metric(m: Metric) -> Metric:
    if m.role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    if m.command not in COMMANDS:
        raise ValueError(f"command must be one of {COMMANDS}")
    REGISTRY[m.name] = m
    return m


@contextlib.contextmanager
def swapped(entries: dict[str, Metric]):
    """Inside the block REGISTRY holds `entries` (a copy of it with entries removed or added), restored on exit:
    every consumer reads this one dict, so what it holds is everywhere at once."""
    saved = dict(REGISTRY)
    REGISTRY.clear()
    REGISTRY.update(entries)
    try:
        yield REGISTRY
    finally:
        REGISTRY.clear()
        REGISTRY.update(saved)


def get(name: str) -> Metric:
    try:
        return REGISTRY[name]
    except KeyError:
        raise FlatlensError(f"unknown metric {name!r}; choose from {', '.join(REGISTRY)} or all") from None


def names(command: str | None = None) -> list[str]:
    """Registered metric names (those a subcommand measures, when `command` is given), in registry order."""
    return [n for n, m in REGISTRY.items() if command is None or m.command == command]


def default_metric() -> str | None:
    """The metric `flatlens compare` measures when no --metric is given: the entry flagged `compare_default`, else
    (that entry removed) the first registered one; None when the registry is empty."""
    flagged = [n for n, m in REGISTRY.items() if m.compare_default]
    return flagged[0] if flagged else next(iter(REGISTRY), None)


def drawn_in(figure: str) -> list[str]:
    """The metrics whose entries name `figure` among the figures that draw them."""
    return [n for n, m in REGISTRY.items() if figure in m.figures]


# --------------------------------------------------------------------------- settings of a run
@register
@dataclass
class Settings(Result):
    """The common settings and each metric's own (defaults where absent)."""
    common: Common = field(default_factory=Common)
    metrics: dict[str, Any] = field(default_factory=dict)

    def of(self, name: str):
        s = self.metrics.get(name)
        return s if s is not None else get(name).settings()

    def key(self, name: str) -> dict:
        """What a cached measurement of `name` depends on (its own settings, not the other metrics')."""
        return {"common": dataclasses.asdict(self.common), name: dataclasses.asdict(self.of(name))}

    def check(self) -> None:
        check_settings(self.common)
        for name, s in self.metrics.items():
            if name not in REGISTRY:
                raise FlatlensError(f"settings of an unknown metric {name!r}; known: {', '.join(REGISTRY)}")
            check_settings(s, f"{name}: ")

    @classmethod
    def from_dict(cls, d: dict):
        from ..results import from_plain
        if not isinstance(d, dict):
            raise ValueError("settings must be an object")
        common = from_plain(Common, d.get("common", {}))
        metrics = {}
        for name, v in (d.get("metrics") or {}).items():
            if name not in REGISTRY:  # a metric this flatlens does not register: kept as read, never used
                metrics[name] = v
                continue
            metrics[name] = from_plain(REGISTRY[name].settings, v)
            for f in dataclasses.fields(metrics[name]):  # JSON lists back to tuples
                if isinstance(getattr(metrics[name], f.name), list):
                    setattr(metrics[name], f.name, tuple(getattr(metrics[name], f.name)))
        return cls(common=common, metrics=metrics)
