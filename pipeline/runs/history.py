"""The run's history: metrics.jsonl, one JSON line per finished epoch, only ever appended.

A checkpoint carries none of it (its size does not grow with the epochs), only the sha256 of
the lines written before it, which proves which of the file's lines are its history.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Protocol

from pipeline.errors import ConfigError
from pipeline.fsutil import fsync, open_regular
from pipeline.runs.rundir import METRICS_FILE, run_of


class Claim(Protocol):
    """What a checkpoint claims of its history (its `CheckpointMeta` does)."""

    @property
    def epoch(self) -> int: ...  # epochs trained

    @property
    def history_sha256(self) -> str: ...  # of metrics.jsonl's first `epoch` lines


MAX_RECORD_BYTES = 1 << 16  # a metrics.jsonl line: one epoch's few numbers


class Metrics:
    """metrics.jsonl: one JSON line per finished epoch, only ever appended, so a run writes
    each record once (a checkpoint carries none: its size does not grow with the epochs).

    Each checkpoint carries the sha256 of the lines written before it, which proves which of
    the file's lines are its history. A record is on disk (fsynced) before its epoch's
    checkpoint is written, so those lines are always there; what lies beyond them (an epoch
    logged just before a kill took its checkpoint, a line a kill left half-written) is cut when
    a run resumes from that checkpoint (`load(..., cut=True)`), and its epoch logged again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sha256 = hashlib.sha256()  # of the lines so far

    @property
    def sha256(self) -> str:
        return self._sha256.hexdigest()

    def load(self, epochs: int, sha256: str, *, of: str, cut: bool = False) -> list[dict[str, Any]]:
        """The records of epochs 1..`epochs`: the file's first lines, which must hash to
        `sha256` (the claim of the checkpoint `of`); the running sha256 goes on from them.
        With `cut`, the file ends after them. ConfigError naming the file if it does not hold
        them."""
        records: list[dict[str, Any]] = []
        self._sha256 = hashlib.sha256()
        if not epochs and not self.path.exists():
            return records
        damaged = f"does not hold the {epochs} epochs' history of {of}"
        with open_regular(self.path, error=ConfigError, missing=damaged) as f:
            for epoch in range(1, epochs + 1):
                line = f.readline(MAX_RECORD_BYTES)  # bounded: a line is a few numbers
                self._sha256.update(line)
                try:
                    record = json.loads(line) if line.endswith(b"\n") else None
                except ValueError:
                    record = None
                if not isinstance(record, dict) or record.get("epoch") != epoch:
                    raise ConfigError(
                        f"{self.path}: line {epoch} is not epoch {epoch}'s record: {damaged}"
                    )
                records.append(record)
            end = f.tell()
        if self.sha256 != sha256:
            raise ConfigError(f"{self.path}: its first {epochs} lines are other records: {damaged}")
        if cut:
            os.truncate(self.path, end)
        return records

    def start(self) -> None:
        """A run starting afresh (no checkpoint): whatever a killed first try logged goes."""
        self.load(0, hashlib.sha256().hexdigest(), of="a new run", cut=True)

    def append(self, record: dict[str, Any]) -> None:
        """Add one epoch's record, on disk before the caller writes its checkpoint."""
        line = (json.dumps(record) + "\n").encode()
        created = not self.path.exists()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        try:
            written = 0
            while written < len(line):
                written += os.write(fd, line[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            fsync(self.path.parent)  # its name too
        self._sha256.update(line)


def history_of(path: Path, claim: Claim, *, strict: bool) -> list[dict[str, Any]]:
    """The records of the epochs the checkpoint at `path` has trained, from its run's
    metrics.jsonl (the lines its sha256 vouches for). A run's own history must be there
    (`strict`: else ConfigError naming the file); a checkpoint from elsewhere (a copy, one kept
    for a report) may have none."""
    metrics = Metrics(path.parent.parent / METRICS_FILE)
    if not strict and (run_of(path) is None or not metrics.path.is_file()):
        return []
    try:
        return metrics.load(claim.epoch, claim.history_sha256, of=path.name)
    except ConfigError:
        if strict:
            raise
        return []
