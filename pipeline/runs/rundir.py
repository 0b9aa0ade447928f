"""The run directory: the one module that knows its layout, naming, retention and locks.

    run.json          the config and the data it trains on (rewritten while no checkpoint exists)
    metrics.jsonl     one line per finished epoch, only ever appended (history.py)
    tracking.json     an experiment tracker's run id, per tracking URI (pipeline.tracking)
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
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pipeline.errors import ConfigError, OutputError
from pipeline.fsutil import TMP_SUFFIX, atomic_write_bytes, dir_lock
from pipeline.config import TrainConfig

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
TRACKING_FILE = "tracking.json"
CHECKPOINT_DIR = "checkpoints"
REPORT_JSON, REPORT_MD = "report.json", "report.md"
CONFUSION_PNG, CURVES_PNG = "confusion.png", "curves.png"
REPORT_FILES = (REPORT_JSON, REPORT_MD, CONFUSION_PNG, CURVES_PNG)
CHECKPOINT_NAME = re.compile(r"^checkpoint-e(?P<epoch>\d{4})-s(?P<step>\d{7})\.npz$")
EVALUATED_NAME = re.compile(r"^evaluated-[0-9a-f]{16}\.npz$")
T = TypeVar("T")


def checkpoint_name(epoch: int, step: int) -> str:
    return f"checkpoint-e{epoch:04d}-s{step:07d}.npz"


def run_of(checkpoint: Path) -> Path | None:
    """The run directory a checkpoint lies in (RUN/checkpoints/NAME); None for one elsewhere."""
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINT_DIR else None


def is_kept(path: Path) -> bool:
    """Epoch-end checkpoints stay for good; mid-epoch ones are replaced by the next."""
    match = CHECKPOINT_NAME.match(path.name)
    return match is not None and int(match["step"]) == 0


def improves(accuracy: float, best_epoch: int | None, best_accuracy: float) -> bool:
    """The one rule of a run's best epoch: a val accuracy above the best so far (the earliest
    epoch keeps a tie). Test accuracy never chooses. Training applies it as it goes (the
    checkpoint's `best_epoch`), `best_epoch` to a finished history."""
    return not best_epoch or accuracy > best_accuracy


def best_epoch(history: Sequence[dict[str, Any]]) -> int | None:
    """The epoch (1-based) with the best val accuracy; None when the run has no val split."""
    best, accuracy = None, 0.0
    for record in history:
        if "val_accuracy" in record and improves(record["val_accuracy"], best, accuracy):
            best, accuracy = record["epoch"], record["val_accuracy"]
    return best


def stopped_early(epochs: int, best: int | None, patience: int) -> bool:
    """`patience` epochs in a row without a better val accuracy than the best (epoch `best`,
    None or 0: no val split) before them, after `epochs` epochs."""
    return patience > 0 and bool(best) and epochs - (best or 0) >= patience


def epoch_accuracy(record: dict[str, Any]) -> tuple[str, float]:
    """The split an epoch record was scored on ("val" when the set has one) and its accuracy."""
    split = "val" if "val_accuracy" in record else "test"
    return split, float(record[f"{split}_accuracy"])


def read_json(path: Path, parse: Callable[[object], T], what: str, hint: str = "") -> T | None:
    """A JSON file of the run, parsed by `parse` (which raises ValueError naming the field at
    fault); None if there is none. Strict JSON: NaN and Infinity are not numbers here.
    Raises ConfigError naming the file for one that cannot be read or is not `what`."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    try:
        return parse(json.loads(text, parse_constant=_not_a_number))
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not {what} ({exc}){hint}") from None


def _not_a_number(name: str) -> None:
    raise ValueError(f"{name} is not a number")


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
            self._remove_stale(self.path, (RUN_FILE, METRICS_FILE, TRACKING_FILE))
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
        return read_json(self.path / RUN_FILE, RunFile.from_json, "a readable run file")

    def write_run_file(self, run: RunFile) -> None:
        atomic_write_bytes(
            self.path / RUN_FILE, (json.dumps(run.to_json(), indent=2) + "\n").encode()
        )

    # --- checkpoints: naming and retention ------------------------------------------------------

    def checkpoint_path(self, epoch: int, step: int) -> Path:
        return self.checkpoints / checkpoint_name(epoch, step)

    def chosen_checkpoint(self, best_epoch: int | None, last: Path) -> Path:
        """The checkpoint the run reports and deploys: its best val epoch's (`best_epoch`,
        None or 0 without a val split), else `last`."""
        return self.checkpoint_path(best_epoch, 0) if best_epoch else last

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
