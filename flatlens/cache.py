"""On-disk cache of measurements, keyed by what they measured: checkpoint content hash, metric, its own
settings and the common ones (seed included), the data selection, the flatlens version and the device type.

Entries are JSON written atomically and carry a hash of their value, checked on read: an entry that does
not parse, whose key does not match, whose value was edited, or that the caller cannot read back as its
type (`reject`) is recomputed, never trusted, and counted as such. A special file (FIFO, device node, socket) or a folder
where an entry would be is read as damaged without blocking on it (`paths.open_regular`), and left in place: that
entry is recomputed and not cached (a rename would replace the special file)."""
from __future__ import annotations

import hashlib
import json
import os

from ._util import atomic_write_text
from .paths import open_regular, special


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _value_hash(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


class ResultCache:
    def __init__(self, folder: str | None):
        self.folder = folder
        self.hits = 0
        self.misses = 0
        self.recomputed_corrupt = 0

    def _path(self, key):
        return os.path.join(self.folder, key[:2], f"{key}.json")

    def get(self, parts: dict):
        if not self.folder:
            return None
        key = cache_key(parts)
        path = self._path(key)
        if not os.path.exists(path):
            self.misses += 1
            return None
        try:
            with open_regular(path, "r") as fh:  # a FIFO here never blocks the run
                entry = json.load(fh)
            if not isinstance(entry, dict) or entry.get("key") != key or not isinstance(entry.get("value"), dict):
                raise ValueError("key mismatch or no value")
            if entry.get("sha256") != _value_hash(entry["value"]):
                raise ValueError("value does not match its hash")
        except (OSError, ValueError, UnicodeDecodeError):
            self.recomputed_corrupt += 1
            self.misses += 1
            return None
        self.hits += 1
        return entry["value"]

    def reject(self) -> None:
        """The caller could not read the last hit back as its type: count it as corrupt and recomputed."""
        self.hits -= 1
        self.misses += 1
        self.recomputed_corrupt += 1

    def put(self, parts: dict, value) -> None:
        if not self.folder:
            return
        key = cache_key(parts)
        path = self._path(key)
        if special(path) or os.path.isdir(path):
            return  # never replaced (get counted it as damaged): this entry stays uncached
        atomic_write_text(path, json.dumps({"key": key, "parts": parts, "value": value,
                                            "sha256": _value_hash(value)}, default=str))

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "corrupt_recomputed": self.recomputed_corrupt}
