"""On-disk cache of measurements, keyed by (checkpoint content hash, metric, its parameters, the data
selection, the seed). Entries are JSON written atomically; an entry that does not parse or whose key does
not match is recomputed, never trusted."""
from __future__ import annotations

import hashlib
import json
import os

from ._util import atomic_write_text


def cache_key(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


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
            with open(path) as fh:
                entry = json.load(fh)
            if entry.get("key") != key or "value" not in entry:
                raise ValueError("key mismatch")
        except (OSError, ValueError):
            self.recomputed_corrupt += 1
            self.misses += 1
            return None
        self.hits += 1
        return entry["value"]

    def put(self, parts: dict, value) -> None:
        if not self.folder:
            return
        key = cache_key(parts)
        atomic_write_text(self._path(key), json.dumps({"key": key, "parts": parts, "value": value}, default=str))

    def stats(self) -> dict:
        return {"hits": self.hits, "misses": self.misses, "corrupt_recomputed": self.recomputed_corrupt}
