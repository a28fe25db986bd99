"""Which layout the evaluator uses, and the record of that choice per model shape and machine.

A `Layout` is a strategy (loop, vmap, compiled), a memory format and a batch size. `auto` times candidate
layouts on the centre and keeps the fastest that reproduces F. Layouts differ in float summation order (up to
~1e-5 relative), so that two runs on one machine (or a resumed run) give the same numbers, the first pick of a
model shape on a machine is recorded on disk and reused: `PickStore` ($FLATLENS_CACHE_DIR, default
~/.cache/flatlens, evaluator-picks.json), remembered in the process too."""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass

import torch

from .._util import FlatlensError, atomic_write_text


@dataclass(frozen=True)
class Layout:
    strategy: str = "loop"            # loop | vmap | compiled
    channels_last: bool = False
    batch_size: int | None = None     # None: the objective's resident batches

    @property
    def key(self) -> str:
        """How calibration timings name it: "loop|channels_last|128"."""
        return f"{self.strategy}|{'channels_last' if self.channels_last else 'contiguous'}|{self.batch_size or 'resident'}"

    @property
    def is_objectives_own(self) -> bool:
        """The objective's own layout (the contiguous loop over its resident batches): F itself, never checked."""
        return self.strategy == "loop" and not self.channels_last and self.batch_size is None

    @classmethod
    def of_pick(cls, pick: dict) -> "Layout":
        return cls(pick["picked"], bool(pick["channels_last"]), pick["batch_size"])


def loop_candidates(biggest_batch: int, images: bool, channels_last_request: bool | None) -> list[Layout]:
    """The loop layouts worth timing: contiguous and (for images, unless the caller chose) channels_last, over the
    resident batches and re-cut to 128 and 64 samples (cache-sized on a CPU) where those are smaller."""
    sizes = [None] + [s for s in (128, 64) if s < biggest_batch]
    formats = [False, True] if images and channels_last_request is None else [bool(channels_last_request)]
    return [Layout("loop", cl and images, bs) for cl in formats for bs in sizes]


class PickStore:
    """The recorded picks, keyed by the evaluator's signature (model, size, device, dtype, precision, BN policy,
    batch shapes) and the machine (host, processor, CPUs, torch version, thread count)."""

    memo: dict = {}  # signature -> pick, for this process

    @staticmethod
    def path() -> str:
        folder = os.environ.get("FLATLENS_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "flatlens")
        return os.path.join(folder, "evaluator-picks.json")

    @staticmethod
    def key(sig) -> str:
        import platform
        machine = (platform.node(), platform.machine(), platform.processor(), os.cpu_count(), torch.__version__,
                   torch.get_num_threads())
        return hashlib.sha256(repr((sig, machine)).encode()).hexdigest()[:24]

    @classmethod
    def stored(cls) -> dict:
        try:
            with open(cls.path()) as fh:
                d = json.load(fh)
            return d if isinstance(d, dict) else {}
        except (OSError, ValueError):
            return {}

    @classmethod
    def get(cls, sig) -> dict | None:
        if sig not in cls.memo:
            found = cls.stored().get(cls.key(sig))
            if found is not None:
                cls.memo[sig] = found
        return cls.memo.get(sig)

    @classmethod
    def put(cls, sig, pick: dict) -> None:
        cls.memo[sig] = pick
        picks = cls.stored()
        picks[cls.key(sig)] = {k: v for k, v in pick.items() if k != "seconds_per_point"} | {
            "seconds_per_point": {k: (None if math.isinf(v) else v) for k, v in pick["seconds_per_point"].items()}}
        try:
            atomic_write_text(cls.path(), json.dumps(picks, indent=1))
        except FlatlensError:
            pass  # a read-only home: the pick holds for this process only
