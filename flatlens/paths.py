"""The paths a command reads and writes, checked before any work: a bad path costs a one-line error, never
minutes of measuring and then a failed write, never a FIFO that blocks, never a device node replaced.

Outputs: not empty; not a special file (FIFO, character or block device, socket), which an atomic write would
replace; of the right kind (a file where a file is meant, a folder where a folder is); every name within the file
system's limits; the nearest existing folder above writable, shown by creating and removing a probe file there
(root's `os.access` says yes to /proc). Inputs: regular files (or the folder a command reads from).

Files flatlens finds for itself (cache entries, resumable chunks, a run's plan) are opened with `open_regular`:
a special file there never blocks the read (O_NONBLOCK, then the kind checked on the open descriptor) and reads
as a damaged entry; `special` tells a writer to leave it in place."""
from __future__ import annotations

import os
import stat
import tempfile

from ._util import FlatlensError, special, special_kind  # noqa: F401  (special: a public name here too)


class NotRegularFile(OSError):
    """A path that should hold a regular file holds a special file (or a folder): read as damaged, never opened
    further."""


def open_regular(path, mode: str = "rb"):
    """`path` opened for reading only if it is a regular file, else NotRegularFile (an OSError: callers that read
    a damaged file as "recompute" need no new case). A special file is refused before it is opened (opening a
    device can act on it); the open itself is O_NONBLOCK (a FIFO swapped in meanwhile never waits for a writer) and
    the kind is checked again on the open descriptor."""
    if mode not in ("r", "rb"):
        raise ValueError(f"open_regular reads; got mode {mode!r}")
    path = os.fspath(path)
    what = special(path)
    if what:
        raise NotRegularFile(f"{path}: is {what}, not a regular file")
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            what = special_kind(st.st_mode) or ("a folder" if stat.S_ISDIR(st.st_mode) else "of another kind")
            raise NotRegularFile(f"{path}: is {what}, not a regular file")
        os.set_blocking(fd, True)
        return os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "r" else {}))
    except BaseException:
        os.close(fd)
        raise


def _limits(path: str) -> None:
    """Every name of `path` within NAME_MAX and the whole within PATH_MAX of the nearest existing folder's file
    system (255 and 4096 where it does not say)."""
    absp = os.path.abspath(path)
    up = absp
    while not os.path.exists(up):
        up = os.path.dirname(up)
    folder = up if os.path.isdir(up) else os.path.dirname(up)
    try:
        name_max, path_max = os.pathconf(folder, "PC_NAME_MAX"), os.pathconf(folder, "PC_PATH_MAX")
    except (OSError, ValueError):
        name_max, path_max = 255, 4096
    long = [p for p in absp.split(os.sep) if len(p.encode()) > name_max]
    if long:
        raise FlatlensError(f"{long[0][:40]}...: a name of {len(long[0].encode())} bytes; the file system allows "
                            f"{name_max}")
    if len(absp.encode()) >= path_max:
        raise FlatlensError(f"{absp[:40]}...: a path of {len(absp.encode())} bytes; the file system allows {path_max}")


def check_output(path: str, flag: str, *, folder: bool) -> None:
    """`path` can be written as a file (folder=False) or created as a folder, atomically, here."""
    if path == "":
        raise FlatlensError(f"{flag}: an empty path; give a file or folder name")
    what = special(path)
    if what:
        raise FlatlensError(f"{flag} {path}: is {what}, not a regular {'folder' if folder else 'file'}; writing "
                            "there would replace it")
    if folder and os.path.isfile(path):
        raise FlatlensError(f"{flag} {path}: is a file; give a folder")
    if not folder and os.path.isdir(path):
        raise FlatlensError(f"{flag} {path}: is a folder; give a file path")
    try:
        _limits(path)
    except FlatlensError as e:
        raise FlatlensError(f"{flag} {e}") from None
    up = os.path.dirname(os.path.abspath(path)) if not (folder and os.path.isdir(path)) else os.path.abspath(path)
    while not os.path.exists(up):
        up = os.path.dirname(up)
    if not os.path.isdir(up):
        raise FlatlensError(f"{flag} {path}: {up} is {special(up) or 'a file'}, not a folder")
    try:  # the kernel's word, not os.access's (which says yes to root for /proc)
        fd, probe = tempfile.mkstemp(prefix=".flatlens-probe-", dir=up)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise FlatlensError(f"{flag} {path}: cannot write in {up} ({e.strerror or e})") from None


def check_input(path: str, flag: str, *, folder_ok: bool = False) -> None:
    """An input is read only when it is a regular file (a FIFO would block the command) or, where the command
    reads a folder, a folder. A missing input is left to the reader (its message names what it expected)."""
    if path == "":
        raise FlatlensError(f"{flag}: an empty path")
    what = special(path)
    if what:
        raise FlatlensError(f"{flag} {path}: is {what}, not a regular file")
    if os.path.isdir(path) and not folder_ok:
        raise FlatlensError(f"{flag} {path}: is a folder, not a file")


def module_file(spec: str) -> str | None:
    """The source file of `package.module` in "package.module:factory", found on sys.path without importing it
    (a --model module is an input: no output may overwrite it), or None."""
    import sys
    mod = str(spec).partition(":")[0]
    if not mod:
        return None
    parts = mod.split(".")
    for base in [os.getcwd()] + [p or os.getcwd() for p in sys.path]:
        stem = os.path.join(base, *parts)
        for cand in (stem + ".py", os.path.join(stem, "__init__.py")):
            if os.path.isfile(cand):
                return cand
    return None
