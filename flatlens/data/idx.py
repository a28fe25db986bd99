"""A reader for idx files, the format of MNIST and Fashion-MNIST (plain or gzip-compressed).

Layout (big-endian): two zero bytes, a dtype code byte, a byte giving the number of dimensions d; then d
dimension sizes as uint32; then prod(sizes) values, row-major. idx1 holds labels (n,), idx3 images (n, h, w).
Anything else (a missing file, a bad header, too few or too many data bytes) is one FlatlensError line
naming the file and what is wrong."""
from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

from .._util import FlatlensError

DTYPES = {0x08: np.dtype("u1"), 0x09: np.dtype("i1"), 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
          0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}
GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: str) -> bytes:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise FlatlensError(f"{path}: no such file") from None
    except OSError as e:
        raise FlatlensError(f"{path}: cannot read it ({e.strerror or e})") from None
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as e:  # truncated or corrupt stream
        raise FlatlensError(f"{path}: not a readable gzip file, truncated or corrupt ({e})") from None


def read_idx(path, *, ndim: int | None = None, dtype=None) -> np.ndarray:
    """The array an idx file holds (native byte order), checked against `ndim` and `dtype` when given.
    A gzip-compressed file (by its magic bytes, whatever its name) is decompressed."""
    path = os.fspath(path)
    raw = _read_bytes(path)
    if len(raw) < 4:
        raise FlatlensError(f"{path}: {len(raw)} bytes, too short for an idx header (4 bytes)")
    if raw[0] != 0 or raw[1] != 0:
        raise FlatlensError(f"{path}: not an idx file (magic number starts {raw[:2].hex()}, expected 0000)")
    code, d = raw[2], raw[3]
    if code not in DTYPES:
        raise FlatlensError(f"{path}: unknown idx dtype code 0x{code:02x} (known: "
                            f"{', '.join(f'0x{c:02x}' for c in DTYPES)})")
    if ndim is not None and d != ndim:
        raise FlatlensError(f"{path}: an idx{d} file (dims {d}); expected idx{ndim}")
    if d == 0:
        raise FlatlensError(f"{path}: idx header gives 0 dimensions")
    if len(raw) < 4 + 4 * d:
        raise FlatlensError(f"{path}: truncated idx header ({len(raw)} bytes; {d} dimensions need {4 + 4 * d})")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=d, offset=4))
    dt = DTYPES[code]
    if dtype is not None and dt.newbyteorder("=") != np.dtype(dtype).newbyteorder("="):
        raise FlatlensError(f"{path}: holds {dt.name} (code 0x{code:02x}); expected {np.dtype(dtype).name}")
    need, have = math.prod(shape) * dt.itemsize, len(raw) - 4 - 4 * d
    if have != need:
        raise FlatlensError(f"{path}: idx{d} of shape {shape} {dt.name} needs {need} data bytes; found {have} "
                            f"({'truncated' if have < need else 'trailing bytes'})")
    return np.frombuffer(raw, dtype=dt, offset=4 + 4 * d).reshape(shape).astype(dt.newbyteorder("="))
