"""The runs directory of the scheduled mode: one run per (data, recipe), a promoted `latest`.

    DIR/2026-11-29-3f9a0c1d2e4b/   a run (the trainer's run directory) named <date>-<id>, where
                                   the id hashes the data's content identity and the recipe
        .trigger.lock              held by the trigger working on the run; says who (pid, host)
        outcome.json               written last: accuracy, gate, seconds. Present = finished
    DIR/latest -> 2026-11-29-...   the newest run that passed its gate (a symlink, replaced
                                   atomically: a reader sees the old target or the new one)
    DIR/.lock                      held for an instant to create a run, promote or prune

A trigger whose run is finished touches nothing ("up to date"). A run without an outcome is
unfinished (killed, or failed): the next trigger resumes it. Nothing here deletes a directory
it cannot prove is a finished run of ours (our name, our run.json, our outcome.json).
The locks (who works on a run) are `run_lock`'s.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.data.shards import Manifest
from pipeline.errors import ConfigError, OutputError
from pipeline.fsutil import atomic_write_bytes, fsync
from pipeline.run_lock import RunBusyError, hold, is_held, runs_dir_lock
from pipeline.training.config import TrainConfig
from pipeline.training.rundir import RUN_FILE, RunDir

LATEST = "latest"
OUTCOME = "outcome.json"
RUN_NAME = re.compile(r"^(?P<date>\d{4}-\d{2}-\d{2})-(?P<id>[0-9a-f]{12})$")
# config fields that do not change the weights: a trigger differing only in them is the same run
NOT_RECIPE = TrainConfig.NOT_RECIPE


def recipe(config: TrainConfig) -> dict[str, Any]:
    """The resolved recipe: every config field that shapes the weights."""
    return {k: v for k, v in config.to_json().items() if k not in NOT_RECIPE}


def run_id(identity: str, config: TrainConfig) -> str:
    """12 hex digits of sha256 over the canonical JSON of (data identity, recipe)."""
    doc = {"data": identity, "recipe": recipe(config)}
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def _ours(runs_dir: Path) -> list[Path]:
    """Run directories by name pattern, oldest first (the date, then the creation time)."""
    if not runs_dir.is_dir():
        return []
    found = [p for p in runs_dir.iterdir() if RUN_NAME.match(p.name) and p.is_dir()]
    return sorted(found, key=lambda p: (p.name[:10], _created(p), p.name))


def _created(run: Path) -> int:
    """When the run began: run.json is written once, as the run is created."""
    try:
        return (run / RUN_FILE).stat().st_mtime_ns
    except OSError:
        return run.stat().st_mtime_ns


def find(runs_dir: Path, rid: str) -> Path | None:
    matches = [p for p in _ours(runs_dir) if p.name.endswith(f"-{rid}")]
    return matches[-1] if matches else None


def read_outcome(run: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads((run / OUTCOME).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{run / OUTCOME}: not readable ({exc})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{run / OUTCOME}: not a JSON object")
    return doc


def finished(runs_dir: Path, manifest: Manifest, config: TrainConfig) -> Path | None:
    """The finished run of this data and recipe, if there is one (reads, never writes)."""
    run = find(runs_dir, run_id(manifest.identity, config))
    return run if run is not None and read_outcome(run) is not None else None


@contextlib.contextmanager
def claim(runs_dir: Path, manifest: Manifest, config: TrainConfig) -> Iterator[Path]:
    """The run of this data and recipe, found or created, held by this process meanwhile."""
    rid = run_id(manifest.identity, config)
    try:
        runs_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        reason = exc.strerror
        raise OutputError(f"{runs_dir}: cannot create the runs directory ({reason})") from None
    with runs_dir_lock(runs_dir):  # two triggers at once make one directory, not two
        run = find(runs_dir, rid)
        if run is None:
            run = runs_dir / f"{datetime.now(UTC):%Y-%m-%d}-{rid}"
            try:
                run.mkdir()
            except OSError as exc:
                raise OutputError(f"{run}: cannot create the run ({exc.strerror})") from None
    with hold(run):  # the one that loses this race exits "busy"
        yield run


# --- finishing, promotion, pruning --------------------------------------------------------


def finish(run: Path, *, accuracy: float, min_accuracy: float | None, seconds: float) -> bool:
    """Record the run's outcome (its last file); returns whether it passed the gate."""
    passed = min_accuracy is None or accuracy >= min_accuracy
    doc = {
        "accuracy": accuracy,
        "min_accuracy": min_accuracy,
        "passed": passed,
        "seconds": round(seconds, 3),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_bytes(run / OUTCOME, (json.dumps(doc, indent=2) + "\n").encode())
    return passed


def latest(runs_dir: Path) -> Path | None:
    link = runs_dir / LATEST
    if not link.is_symlink():
        return None
    target = os.readlink(link)
    return runs_dir / target if RUN_NAME.match(target) else None


def promote(runs_dir: Path, run: Path) -> None:
    """Point DIR/latest at `run`: a new symlink under a temporary name, renamed over the old."""
    link = runs_dir / LATEST
    if os.path.lexists(link) and not link.is_symlink():
        raise OutputError(f"{link}: exists and is not a symlink; move it away to promote runs")
    tmp = runs_dir / f".{LATEST}.{os.getpid()}.tmp"
    with runs_dir_lock(runs_dir):
        tmp.unlink(missing_ok=True)
        try:
            os.symlink(run.name, tmp)  # relative: the volume may be mounted anywhere
            os.replace(tmp, link)
            fsync(runs_dir)
        finally:
            tmp.unlink(missing_ok=True)


def prune(runs_dir: Path, keep: int) -> list[Path]:
    """Delete the oldest finished runs beyond the newest `keep`; never latest, never a held run."""
    removed: list[Path] = []
    with runs_dir_lock(runs_dir):
        promoted = latest(runs_dir)
        done = [r for r in _ours(runs_dir) if (r / OUTCOME).is_file() and (r / RUN_FILE).is_file()]
        for run in done[: max(len(done) - keep, 0)]:
            if promoted is not None and run.name == promoted.name:
                continue
            with contextlib.suppress(RunBusyError), hold(run):
                shutil.rmtree(run)
                removed.append(run)
    return removed


# --- listing ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    """One row of `pipeline runs`."""

    name: str
    id: str
    date: str
    dataset: str | None
    data_identity: str | None
    recipe: dict[str, Any] | None
    status: str  # finished | running | unfinished
    accuracy: float | None
    min_accuracy: float | None
    passed: bool | None
    seconds: float | None
    latest: bool

    def to_json(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def listing(runs_dir: Path) -> list[RunInfo]:
    """Every run in `runs_dir`, oldest first; reads only, so it works on a read-only volume."""
    if not runs_dir.is_dir():
        raise ConfigError(f"{runs_dir}: no such runs directory")
    promoted = latest(runs_dir)
    rows = []
    for run in _ours(runs_dir):
        match = RUN_NAME.match(run.name)
        assert match is not None  # _ours matched it
        try:
            saved, outcome = RunDir(run).read_run_file(), read_outcome(run)
        except ConfigError:  # damaged: listed with what is known, never guessed
            saved, outcome = None, None
        status = "running" if is_held(run) else "finished" if outcome else "unfinished"
        outcome = outcome or {}
        rows.append(
            RunInfo(
                name=run.name,
                id=match["id"],
                date=match["date"],
                dataset=None if saved is None else saved.dataset,
                data_identity=None if saved is None else saved.data_identity,
                recipe=None if saved is None else recipe(saved.config),
                status=status,
                accuracy=outcome.get("accuracy"),
                min_accuracy=outcome.get("min_accuracy"),
                passed=outcome.get("passed"),
                seconds=outcome.get("seconds"),
                latest=promoted is not None and promoted.name == run.name,
            )
        )
    return rows
