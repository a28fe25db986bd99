"""One measurement pipeline: these metrics, on these splits, of these checkpoints.

    checkpoint --(DataSource: its samples, chosen and checked once)--> measure (cache -> Objective -> metric)
        --> MetricRecord, gathered in `Measurements`

`flatlens hessian | landscape | flatness`, `compare` and `reproduce` all measure through `measure_all`; none of
them chooses or checks data on its own. Each registry entry may prepare what its computations share across the
checkpoints of one call (qnoise: the learned steps applied to every model), once, before any work. A pair entry
(interpolate: a checkpoint against its partner) prepares over every checkpoint of the call, and each target gets its
own copy of that entry's settings first, so the partner written into it is that target's alone."""
from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Callable

from . import metrics as M
from ._util import FlatlensError
from .checkpoint import Checkpoint
from .data import select_data
from .measure import MetricRecord, check_centre, check_data, load_data_file, measure
from .progress import overall
from .results import Result, register


@dataclass
class Target:
    """One checkpoint and what to measure on it (its own settings: reproduce gives each seed its own
    measurement seed)."""
    ckpt: Checkpoint
    metrics: list[str]
    settings: M.Settings


def check_compatible(ckpts: list[Checkpoint]) -> None:
    """Checkpoints of one data protocol, measured on the first one's samples (compare) or on splits that mean the
    same for each (interpolate): the same data set, test domains and image size, and the same architecture."""
    first = ckpts[0]
    for c in ckpts[1:]:
        if c.data is None or first.data is None:
            raise FlatlensError(f"{(c if c.data is None else first).path} records no data protocol; pass --data")
        same = (c.data.dataset, c.data.test_domains, c.data.image_size) == (
            first.data.dataset, first.data.test_domains, first.data.image_size)
        if not same:
            raise FlatlensError(f"{c.path} was trained on {c.data.dataset} (test {c.data.test_domains}, "
                                f"{c.data.image_size} px), {first.path} on {first.data.dataset} (test "
                                f"{first.data.test_domains}, {first.data.image_size} px); pass --data to compare "
                                "them on the same samples")
        if c.arch != first.arch:
            raise FlatlensError(f"{c.path} is a {c.arch.name}, {first.path} a {first.arch.name} with other settings; "
                                "pass --data to compare them anyway")


class DataSource:
    """Where the evaluation samples come from, selected once per (protocol, split, samples, seed):
    `file`: a torch file {"x", "y"} used for every checkpoint and split (checked against each checkpoint);
    `shared`: every checkpoint on the first one's protocol (compare: the same samples for all); otherwise each
    checkpoint on its own protocol (reproduce: each model on its own test domain)."""

    def __init__(self, file: str | None = None, *, shared: bool = False):
        self.file = file
        self.shared = shared
        self._chosen: dict = {}

    def protocol(self, targets: list[Target], i: int) -> dict:
        return targets[0 if self.shared else i].ckpt.data

    def select(self, meta: dict | None, split: str, common: M.Common):
        """(x, y, info) of one protocol and split (the file's samples when there is a file)."""
        if self.file:
            key = ("file", self.file)
        else:
            key = (json.dumps(None if meta is None else dataclasses.asdict(meta), sort_keys=True, default=str), split,
                   common.samples, common.seed)
        if key not in self._chosen:
            self._chosen[key] = (load_data_file(self.file) if self.file
                                 else select_data(meta, split, common.samples, common.seed))
        return self._chosen[key]

    def check(self, targets: list[Target], splits: list[str], *, centre: bool = False) -> None:
        """Every selection made and checked before any work: a file's samples against every model, and (`centre`)
        each model's loss finite at its centre on its samples, so a bad checkpoint stops a long comparison before
        the first measurement, not after the others."""
        for i, t in enumerate(targets):
            for split in splits:
                x, y, info = self.select(self.protocol(targets, i), split, t.settings.common)
                if self.file:
                    check_data(t.ckpt, x, y, info)
                if centre and t.metrics:
                    check_centre(t.ckpt, x, y, weights=t.settings.common.weights)


@register
@dataclass
class Measurements(Result):
    """The records of one `measure_all` call, in target order, split order, metric order."""
    records: list[MetricRecord] = field(default_factory=list)
    owners: list[int] = field(default_factory=list)        # the target index of each record

    def of(self, target: int, split: str | None = None, metric: str | None = None) -> list[MetricRecord]:
        return [r for r, i in zip(self.records, self.owners) if i == target
                and (split is None or r.split == split) and (metric is None or r.metric == metric)]

    def get(self, target: int, split: str, metric: str) -> MetricRecord | None:
        found = self.of(target, split, metric)
        return found[0] if found else None


@register
@dataclass
class MeasurementRun(Result):
    """What `flatlens hessian | landscape | flatness --json` writes: one record per metric and split."""
    command: str
    checkpoint: str
    sha256: str
    weights: str
    records: list[MetricRecord]


def own_pair_settings(targets: list[Target]) -> list[Target]:
    """The targets, each with its own copy of every pair entry's settings (the rest shared as given), so that a pair
    entry's `prepare` writes each target's partner into that target's settings only."""
    pairs = [n for n in dict.fromkeys(n for t in targets for n in t.metrics) if M.get(n).pair]
    if not pairs:
        return targets
    out = []
    for t in targets:
        metrics = dict(t.settings.metrics)
        for n in pairs:
            metrics[n] = copy.copy(t.settings.of(n))
        out.append(dataclasses.replace(t, settings=dataclasses.replace(t.settings, metrics=metrics)))
    return out


def prepare(targets: list[Target]) -> dict[str, dict]:
    """Each metric's preparation over the checkpoints of the call that measure it (a pair entry: over every
    checkpoint of the call, since a partner need not measure it), once."""
    out = {}
    names = dict.fromkeys(n for t in targets for n in t.metrics)
    for name in names:
        m = M.get(name)
        if m.prepare is not None:
            users = targets if m.pair else [t for t in targets if name in t.metrics]
            out[name] = m.prepare([t.ckpt for t in users], [t.settings for t in users])
    return out


def measure_all(targets: list[Target], splits: list[str], *, source: DataSource | None = None, cache=None,
                device="cpu", progress: bool = False, label: str = "measure", store: str | None = None,
                axis: str = "auto", on_record: Callable[[int, MetricRecord], None] | None = None,
                check_centres: bool = True) -> Measurements:
    """Every target's metrics on every split, through `measure` (the cache first). `store`: a folder for
    resumable chunks, one subfolder per split and metric (chunks are keyed by the objective's fingerprint, so
    checkpoints never share them). `on_record(target index, record)` is called as each record is ready.
    `check_centres`: check every model's loss at its centre first (one forward each; reproduce, whose models it
    trained itself, skips it)."""
    source = source or DataSource()
    for t in targets:
        for name in t.metrics:
            M.get(name)  # unknown names refused before any work
    source.check(targets, splits, centre=check_centres)
    targets = own_pair_settings(targets)
    prepared = prepare(targets)
    out = Measurements()
    total = sum(len(t.metrics) for t in targets) * len(splits)
    with overall(total, label, progress) as bar:
        for i, t in enumerate(targets):
            for split in splits:
                data = source.select(source.protocol(targets, i), split, t.settings.common)
                for name in t.metrics:
                    where = os.path.join(store, split, name) if store else None
                    rec = measure(t.ckpt, name, split, t.settings, cache=cache, device=device, data=data,
                                  progress=progress, store=where, axis=axis, prepared=prepared.get(name))
                    out.records.append(rec)
                    out.owners.append(i)
                    if on_record is not None:
                        on_record(i, rec)
                    bar.update(1)
    return out
