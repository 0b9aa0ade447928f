"""The run directory: the one module that knows its layout, naming, retention and locks.

    run.json          the config and the data it trains on (rewritten while no checkpoint exists)
    metrics.jsonl     one line per finished epoch, only ever appended (`Metrics`)
    checkpoints/
      checkpoint-e{epochs done:04d}-s{steps into the next epoch:07d}.npz
                      epoch ends are kept for good; of the mid-epoch ones only the newest
      evaluated-{sha256[:16]}.npz
                      a checkpoint from elsewhere (or mid-epoch) that a report quotes
    report.json  report.md  confusion.png  curves.png      the evaluation report
    .lock             held by the train writing here      .report.lock   by the evaluate

Checkpoint names sort by position, so the newest is the last, and a name is never reused
within a run: nothing is overwritten. Every file is replaced atomically (pipeline.fsutil);
a writer killed half-way leaves a `.NAME.PID.tmp`, which the next holder of the same lock
removes: only temporaries of the names that lock guards, so nobody deletes another's file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError, OutputError
from pipeline.fsutil import TMP_SUFFIX, atomic_write_bytes, dir_lock, fsync, open_regular
from pipeline.training.config import TrainConfig

if TYPE_CHECKING:
    from pipeline.training.checkpoint_meta import CheckpointMeta

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
REPORT_JSON, REPORT_MD = "report.json", "report.md"
CONFUSION_PNG, CURVES_PNG = "confusion.png", "curves.png"
REPORT_FILES = (REPORT_JSON, REPORT_MD, CONFUSION_PNG, CURVES_PNG)
CHECKPOINT_NAME = re.compile(r"^checkpoint-e(?P<epoch>\d{4})-s(?P<step>\d{7})\.npz$")
EVALUATED_NAME = re.compile(r"^evaluated-[0-9a-f]{16}\.npz$")
MAX_RECORD_BYTES = 1 << 16  # a metrics.jsonl line: one epoch's few numbers


def checkpoint_name(epoch: int, step: int) -> str:
    return f"checkpoint-e{epoch:04d}-s{step:07d}.npz"


def is_kept(path: Path) -> bool:
    """Epoch-end checkpoints stay for good; mid-epoch ones are replaced by the next."""
    match = CHECKPOINT_NAME.match(path.name)
    return match is not None and int(match["step"]) == 0


def epoch_accuracy(record: dict[str, Any]) -> tuple[str, float]:
    """The split an epoch record was scored on ("val" when the set has one) and its accuracy."""
    split = "val" if "val_accuracy" in record else "test"
    return split, float(record[f"{split}_accuracy"])


@dataclass(frozen=True)
class RunFile:
    """run.json: what the run is (its config) and what it trains on."""

    config: TrainConfig
    data_identity: str  # the shard set's identity (stored as "manifest_sha256")
    data: str  # the shard directory, resolved
    dataset: str
    created: str

    def to_json(self) -> dict[str, Any]:
        return {
            "config": self.config.to_json(),
            "manifest_sha256": self.data_identity,
            "data": self.data,
            "dataset": self.dataset,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, doc: object) -> RunFile:
        """Raises ValueError naming the field at fault."""
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        for key in ("config", "manifest_sha256", "data"):
            if key not in doc:
                raise ValueError(f"no {key!r}")
        for key in ("manifest_sha256", "data", "dataset", "created"):
            if not isinstance(doc.get(key, ""), str):
                raise ValueError(f"{key!r} is not a string")
        return cls(
            TrainConfig.from_json(doc["config"]),
            doc["manifest_sha256"],
            doc["data"],
            doc.get("dataset", ""),
            doc.get("created", ""),
        )


class RunDir:
    """One run directory. Creating the object touches nothing on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.checkpoints = path / CHECKPOINT_DIR

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # --- creating and locking --------------------------------------------------------------

    def create(self) -> None:
        """Make the directory and its checkpoints/ folder, or say which one cannot be."""
        existed = self.path.is_dir()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self.checkpoints.mkdir(exist_ok=True)
        except OSError as exc:
            if existed:
                raise OutputError(f"{self.path}: not writable ({exc.strerror})") from None
            raise OutputError(
                f"{self.path}: cannot create the run directory ({exc.strerror})"
            ) from None
        if not os.access(self.path, os.W_OK) or not os.access(self.checkpoints, os.W_OK):
            raise OutputError(f"{self.path}: not writable")

    @contextlib.contextmanager
    def training(self) -> Iterator[None]:
        """The train lock; holding it, remove what killed trains left half-written."""
        with dir_lock(self.path, what="train"):
            self._remove_stale(self.path, (RUN_FILE, METRICS_FILE))
            self._remove_stale(self.checkpoints, ("checkpoint-",), prefix=True)
            yield

    @contextlib.contextmanager
    def reporting(self) -> Iterator[None]:
        """The report lock (a train may run beside it); likewise for a killed evaluate."""
        with dir_lock(self.path, what="evaluate", name=".report.lock"):
            self._remove_stale(self.path, REPORT_FILES)
            self._remove_stale(self.checkpoints, ("evaluated-",), prefix=True)
            yield

    @staticmethod
    def _remove_stale(directory: Path, names: Sequence[str], *, prefix: bool = False) -> None:
        if not directory.is_dir():
            return
        for tmp in directory.glob(f".*{TMP_SUFFIX}"):
            # .NAME.PID.tmp, as fsutil.tmp_path_for makes it
            name = tmp.name[1:].rsplit(".", 2)[0]
            if any(name.startswith(n) if prefix else name == n for n in names):
                tmp.unlink(missing_ok=True)

    # --- run.json and metrics.jsonl -----------------------------------------------------------

    def read_run_file(self) -> RunFile | None:
        path = self.path / RUN_FILE
        try:
            text = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
        try:
            return RunFile.from_json(json.loads(text))
        except (ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: not a readable run file ({exc})") from None

    def write_run_file(self, run: RunFile) -> None:
        atomic_write_bytes(
            self.path / RUN_FILE, (json.dumps(run.to_json(), indent=2) + "\n").encode()
        )

    @property
    def metrics(self) -> Metrics:
        return Metrics(self.path / METRICS_FILE)

    # --- checkpoints: naming and retention ------------------------------------------------------

    def checkpoint_path(self, epoch: int, step: int) -> Path:
        return self.checkpoints / checkpoint_name(epoch, step)

    def all_checkpoints(self) -> list[Path]:
        """The run's own checkpoints, oldest first."""
        if not self.checkpoints.is_dir():
            return []
        return sorted(p for p in self.checkpoints.iterdir() if CHECKPOINT_NAME.match(p.name))

    def newest_checkpoint(self) -> Path | None:
        found = self.all_checkpoints()
        return found[-1] if found else None

    def prune(self, newest: Path) -> None:
        """Retention: mid-epoch checkpoints are only stepping stones; keep the newest alone."""
        for old in self.all_checkpoints():
            if old != newest and not is_kept(old):
                old.unlink(missing_ok=True)

    def keep_for_report(self, path: Path, data: bytes, sha256: str) -> Path:
        """The checkpoint a report quotes, where no later run removes or overwrites it: the
        run's own epoch-end checkpoints stay as they are; any other is copied in by hash."""
        if path.resolve().parent == self.checkpoints.resolve() and is_kept(path):
            return path
        kept = self.checkpoints / f"evaluated-{sha256[:16]}.npz"
        self.checkpoints.mkdir(exist_ok=True)
        atomic_write_bytes(kept, data)
        return kept


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


def history_of(path: Path, meta: CheckpointMeta, *, strict: bool) -> list[dict[str, Any]]:
    """The records of the epochs the checkpoint at `path` has trained, from its run's
    metrics.jsonl (the lines its sha256 vouches for). A run's own history must be there
    (`strict`: else ConfigError naming the file); a checkpoint from elsewhere (a copy, one kept
    for a report) may have none."""
    where = path.parent
    metrics = RunDir(where.parent).metrics
    if not strict and (where.name != CHECKPOINT_DIR or not metrics.path.is_file()):
        return []
    try:
        return metrics.load(meta.epoch, meta.history_sha256, of=path.name)
    except ConfigError:
        if strict:
            raise
        return []
