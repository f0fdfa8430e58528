"""The one atomic write of the project: every checkpoint, summary, results table and record goes through `atomic_write`.

A file is written to a temporary name in its own directory, flushed to the disk (fsync), then renamed over the
target (`os.replace`, atomic on POSIX file systems and NFS): a reader, or a run resumed after a crash, sees either
the previous complete file or the new complete one, never a torn one. A write that fails (ENOSPC, EDQUOT, EIO, ...)
leaves the previous file untouched, removes its temporary file, and raises WriteError: one line naming the path and
what to do (free space on that volume, check the device), which the CLI prints with exit code 1.

A leaf module (no torch, no project imports) so that every layer can use it.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class WriteError(RuntimeError):
    """A file could not be written (a full or failing volume); one-line message (exit 1)."""


def _free(directory: Path) -> str:
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return "unknown"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if free < 1024 or unit == "TiB":
            return f"{free:.0f} {unit}" if unit == "B" else f"{free:.1f} {unit}"
        free /= 1024
    return "unknown"


def describe(path: Path, exc: OSError) -> str:
    """The one line a user gets for a failed write of `path`."""
    where = path.parent
    code = exc.errno
    if code in FULL:
        return (f"cannot write {path}: {os.strerror(code).lower()} ({_free(where)} free on the volume holding {where}; "
                "free space there, e.g. old runs, tune/ trials or checkpoints, or choose another --output, then rerun "
                "with --resume; the previous file is intact)")
    if code == errno.EIO:
        return (f"cannot write {path}: input/output error on the volume holding {where} (check the disk or the "
                "volume's server, then rerun with --resume; the previous file is intact)")
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        return f"cannot write {path}: {os.strerror(code).lower()} (make {where} writable, or choose another --output)"
    reason = os.strerror(code).lower() if code else (str(exc) or type(exc).__name__)
    return f"cannot write {path}: {reason} (the previous file is intact)"


def atomic_write(path: str | Path, write: Callable[[BinaryIO], None]) -> Path:
    """Write `path` atomically: `write(fh)` fills a binary file open on a temporary name next to it, which is then
    fsynced and renamed onto `path` (parents created). Raises WriteError (the previous file intact) on failure."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise WriteError(describe(path, exc)) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())
