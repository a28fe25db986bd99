"""Small shared helpers: atomic writes, seeded generators, confidence intervals."""
from __future__ import annotations

import hashlib
import io
import math
import os
import stat
import tempfile
import time
from typing import Sequence

import numpy as np
import torch


_UMASK = os.umask(0)
os.umask(_UMASK)


class FlatlensError(ValueError):
    """Bad input: the CLI prints the message on one line and exits with code 2."""


def check_number(name: str, v, *, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False,
                 integer: bool = False):
    """`v` as a finite number in range (an integer when `integer`), or one FlatlensError: 0 and NaN never
    silently mean "default"."""
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if integer:
        ok = ok and float(v).is_integer()
    if ok and lo is not None:
        ok = v > lo if lo_open else v >= lo
    if ok and hi is not None:
        ok = v < hi if hi_open else v <= hi
    if not ok:
        rng = (f"{'(' if lo_open else '['}{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}"
               f"{')' if hi_open or hi is None else ']'}")
        raise FlatlensError(f"{name} must be a finite {'integer' if integer else 'number'} in {rng}; got {v!r}")
    return int(v) if integer else v


# special files: what an atomic write's rename would replace, and what a read must not block on (paths.py)
SPECIAL = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
           (stat.S_ISSOCK, "a socket"))


def special_kind(mode: int) -> str | None:
    return next((what for test, what in SPECIAL if test(mode)), None)


def special(path) -> str | None:
    """What kind of special file `path` is (following links), or None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    return special_kind(mode)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` via a temp file in the same folder and an atomic rename; never over a special
    file."""
    path = os.fspath(path)
    what = special(path)
    if what:  # the rename would replace it (a FIFO, /dev/null as root): the last line of defence, after _preflight
        raise FlatlensError(f"cannot write {path}: it is {what}; writing there would replace it")
    folder = os.path.dirname(os.path.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=folder)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError):  # the old file (if any) is whole: one line, not a traceback
            raise FlatlensError(f"cannot write {path}: {e.strerror or e}") from None
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj, path) -> None:
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def sha256_file(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def derive_seed(seed: int, *keys: int | str) -> int:
    """A 63-bit seed for item `keys` of a stream seeded by `seed`: items are reproducible one by one,
    so chunks and distributed shards draw exactly what a single pass would."""
    h = hashlib.blake2b(repr((int(seed),) + tuple(keys)).encode(), digest_size=8)
    return int.from_bytes(h.digest(), "little") & ((1 << 63) - 1)


def generator(seed: int, *keys, device="cpu") -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive_seed(seed, *keys))
    return g


def rademacher(shape, *, gen: torch.Generator, dtype, device) -> torch.Tensor:
    return torch.randint(0, 2, shape, generator=gen, device=device).to(dtype).mul_(2).sub_(1)


def t_quantile(n: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile for a mean of n samples (n - 1 df; inf for n < 2)."""
    from .stats import t_crit
    return t_crit(n - 1, level) if n >= 2 else math.inf


def mean_ci(samples: Sequence[float] | np.ndarray, axis: int = 0):
    """Mean, standard error and the t-interval (n - 1 df) of the mean along `axis` (stats.mean_ci_rows)."""
    from .stats import mean_ci_rows
    return mean_ci_rows(np.moveaxis(np.asarray(samples, dtype=np.float64), axis, 0))


def timer():
    """A stopwatch: call the returned function for the seconds since this call."""
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0


def synchronize(device) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously; a CPU needs no wait): before reading a clock."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def available_devices() -> list[str]:
    """The devices flatlens can run on here (CPU and CUDA; not MPS: see resolve_device)."""
    return ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]


def resolve_device(device) -> torch.device:
    """A device that exists and is available here ("auto": cuda if there is one), or one FlatlensError
    naming the ones that are."""
    if isinstance(device, torch.device):
        device = str(device)
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    avail = available_devices()
    try:
        d = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise FlatlensError(f"unknown device {device!r}; available here: {', '.join(avail)}") from None
    if d.type == "mps":  # refused here, not deep inside a measurement
        raise FlatlensError("device 'mps' is not supported: flatlens sums probe products, evaluations and traces "
                            "in float64 on the device, which MPS lacks; use cpu")
    ok = d.type == "cpu" or (d.type == "cuda" and torch.cuda.is_available() and (d.index or 0) <
                             torch.cuda.device_count())
    if not ok:
        raise FlatlensError(f"device {device!r} is not available here; available: {', '.join(avail)}")
    return d
