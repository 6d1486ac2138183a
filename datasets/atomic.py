"""Atomic file writes that survive a full disk, shared by `prepare` and the run store.

Every file is written to a temporary name beside its target, flushed to disk and renamed
over the target, so a reader never sees half a file. When the disk fills up mid-write,
the temporary file is removed, the target keeps its previous content, and
`DiskFullError` says in one line which path needed how much space. Large memory-mapped
arrays are reserved up front (`reserve`) so that a full disk shows up as this error
rather than as a SIGBUS while the array is filled.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
from pathlib import Path

import numpy as np

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A write failed for lack of space; the message names the path and the space needed."""


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def free_bytes(directory: Path) -> int:
    """Bytes available to this user on `directory`'s filesystem (0 when unknown)."""
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return 0


def disk_full(path: Path, needed: int) -> DiskFullError:
    """The one-line error for `path` needing `needed` bytes."""
    free = free_bytes(Path(path).parent)
    return DiskFullError(
        errno.ENOSPC,
        f"no space left for {path}: it needs {_size(needed)}, {_size(free)} free there; free "
        f"at least {_size(max(needed - free, 1))} and run the same command again "
        "(the previous files are intact)",
    )


def tmp_path(path: Path) -> Path:
    """The temporary name `path` is written under before the rename."""
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (temporary file, fsync, rename)."""
    path = Path(path)
    tmp = tmp_path(path)
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        if exc.errno in NO_SPACE:
            raise disk_full(path, len(data)) from None
        raise


def write_text(path: Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    write_bytes(path, text.encode())


def save_npy(path: Path, array: np.ndarray) -> None:
    """`np.save` to `path` atomically."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_bytes(path, buffer.getvalue())


def reserve(path: Path, size: int) -> None:
    """Allocate `size` bytes for the (sparse) file `path` now, so that filling it later
    cannot run out of space; DiskFullError (the file removed) when the space is not there.
    A filesystem that cannot preallocate is checked against its free space instead."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDWR)
        try:
            os.posix_fallocate(fd, 0, size)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno in NO_SPACE:
            path.unlink(missing_ok=True)
            raise disk_full(path, size) from None
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
        if free_bytes(path.parent) < size - path.stat().st_blocks * 512:
            path.unlink(missing_ok=True)
            raise disk_full(path, size) from None
