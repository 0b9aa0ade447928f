"""Who works on a run of the scheduled mode: the locks of a runs directory.

    RUN/.trigger.lock   held by the one trigger working on the run, for as long as it works;
                        its text says who (pid, host, since) for the "busy" line of another
    DIR/.lock           held for an instant to create a run, promote or prune (waited for)

Both are flocks: they die with their process, so a killed trigger leaves no stale lock, only
stale text. `is_held` probes a run's lock with a shared flock, so `pipeline runs` works on a
read-only volume.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.errors import LockedError, OutputError
from pipeline.fsutil import try_lock

TRIGGER_LOCK = ".trigger.lock"


class RunBusyError(LockedError):
    """Another trigger holds the run; `holder` is what its lock file says about it."""

    def __init__(self, message: str, *, holder: dict[str, Any]) -> None:
        super().__init__(message)
        self.holder = holder


@contextlib.contextmanager
def runs_dir_lock(runs_dir: Path) -> Iterator[None]:
    """DIR/.lock, held for an instant (create a run, promote, prune): waited for, not refused."""
    try:
        fd = os.open(runs_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise OutputError(f"{runs_dir}: cannot write here ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _holder_of(lock_file: Path) -> dict[str, Any]:
    try:
        doc = json.loads(lock_file.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


@contextlib.contextmanager
def trigger_lock(run: Path) -> Iterator[None]:
    """Hold the run's trigger lock (or raise RunBusyError at once), writing who holds it.

    An flock dies with its process: a killed trigger leaves no stale lock, only stale text.
    """
    lock_file = run / TRIGGER_LOCK
    fd = try_lock(lock_file)
    if fd is None:
        holder = _holder_of(lock_file)
        who = f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}"
        since = f" since {holder['since']}" if "since" in holder else ""
        raise RunBusyError(
            f"{run}: another trigger is working on this run ({who}{since})", holder=holder
        )
    try:
        me = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
        yield
    finally:
        os.close(fd)


def is_held(run: Path) -> bool:
    """Whether a trigger holds the run now (a shared probe: works on a read-only volume)."""
    try:
        fd = os.open(run / TRIGGER_LOCK, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False
