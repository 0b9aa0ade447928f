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
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from pipeline.errors import LockedError, OutputError, PipelineError

# our own marker, `.NAME.PID.tmp`: cleanup deletes only names of this shape, never a user's
# `.notes.tmp`
TMP_SUFFIX = ".tmp"
TMP_NAME = re.compile(r"^\..+\.\d+\.tmp$")


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
    """Delete temporary files left by killed writers (call only while holding the lock):
    only names `tmp_path_for` makes, which carry our marker."""
    for stale in directory.glob(f".*{TMP_SUFFIX}"):
        if TMP_NAME.match(stale.name) and stale.is_file():
            stale.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_type(mode: int) -> str:
    """What a non-regular file is, for messages: "a character device", "a directory"."""
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def read_file(
    path: Path,
    *,
    error: type[PipelineError],
    missing: str = "no such file",
    limit: int | None = None,
) -> bytes:
    """A regular file's bytes, or one `error` naming the file: missing, a device or FIFO (never
    opened for a blocking read), larger than `limit` (checked before reading), unreadable."""
    with open_regular(path, error=error, missing=missing, limit=limit) as f:
        try:
            return f.read()
        except OSError as exc:
            raise error(f"{path}: cannot read ({exc.strerror or exc})") from None


def open_regular(
    path: Path,
    *,
    error: type[PipelineError],
    missing: str = "no such file",
    limit: int | None = None,
) -> BinaryIO:
    """A regular file opened for reading, as `read_file` checks it (missing, not regular, larger
    than `limit`: one `error` naming the file)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO must not block the open
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except OSError as exc:
        raise error(f"{path}: cannot read ({exc.strerror or exc})") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or (limit is not None and info.st_size > limit):
        os.close(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: is {file_type(info.st_mode)}, not a regular file")
        raise error(f"{path}: {info.st_size:,} bytes, more than the {limit:,} it may hold")
    return os.fdopen(fd, "rb")


class ReaderLock:
    """A shared flock on a directory, held while this object lives (or until `close`).

    Readers of a shard set hold one; `prepare` deletes the files of a replaced set only when
    it can take the lock exclusively, i.e. when no reader is left. A directory on a read-only
    file system, or one that cannot be opened, is read unlocked: nothing can rebuild it either
    (and an open directory would keep the volume from being unmounted).
    """

    def __init__(self, directory: Path) -> None:
        self.fd: int | None = None
        try:
            if os.statvfs(directory).f_flag & os.ST_RDONLY:
                return
            fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        except OSError:
            return
        fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a prepare deletes old files
        self.fd = fd

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __del__(self) -> None:
        self.close()


@contextlib.contextmanager
def no_readers(directory: Path) -> Iterator[bool]:
    """Hold `directory`'s reader lock exclusively if no reader holds it: yields True; False
    (at once, without waiting) while any reader is there."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)


def try_lock(lock_file: Path) -> int | None:
    """An exclusive flock on `lock_file` (created if need be): its open fd, or None at once if
    another process holds it. flock locks die with their process: a killed holder leaves no
    stale lock."""
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"{lock_file.parent}: cannot write here ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EACCES):
            return None
        raise
    return fd


@contextlib.contextmanager
def dir_lock(directory: Path, *, what: str, name: str = ".lock") -> Iterator[None]:
    """Hold an exclusive lock on `directory` (the file `name` in it) or fail at once."""
    lock_file = directory / name
    fd = try_lock(lock_file)
    if fd is None:
        raise LockedError(f"{directory}: another {what} is writing here (lock {lock_file} is held)")
    try:
        yield
    finally:
        os.close(fd)
