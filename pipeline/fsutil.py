"""Crash-safe file writing and directory locks, shared by every stage that writes.

The rule everywhere: write to a temporary name in the target's directory, fsync, rename over
the target, fsync the directory. A reader (or a process killed half-way) sees the old file or
the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

from pipeline.errors import LockedError, OutputError

TMP_SUFFIX = ".tmp"


def fsync(path: Path) -> None:
    """Flush a file's data, or a directory's entries (a rename), to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_path_for(path: Path) -> Path:
    """A hidden sibling name, unique per process, that cleanup can recognise by its suffix."""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")


def commit(tmp: Path, path: Path) -> None:
    """Make a fully written temporary file durable and move it to its final name."""
    fsync(tmp)
    os.replace(tmp, path)
    fsync(path.parent)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces `path`, on error it vanishes."""
    tmp = tmp_path_for(path)
    try:
        yield tmp
        commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def remove_stale_tmp(directory: Path) -> None:
    """Delete temporary files left by killed writers (call only while holding the lock)."""
    for stale in directory.glob(f".*{TMP_SUFFIX}"):
        stale.unlink(missing_ok=True)


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(block):
            digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def dir_lock(directory: Path, *, what: str, name: str = ".lock") -> Iterator[None]:
    """Hold an exclusive lock on `directory` (the file `name` in it) or fail at once.

    flock locks die with their process, so a killed writer never leaves a stale lock.
    """
    lock_file = directory / name
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"{directory}: cannot write here ({exc.strerror})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise LockedError(
                    f"{directory}: another {what} is writing here (lock {lock_file} is held)"
                ) from None
            raise
        yield
    finally:
        os.close(fd)
