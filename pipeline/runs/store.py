"""The runs directory of the scheduled mode: one run per (data, recipe), a promoted `latest`.

    DIR/2026-11-29-3f9a0c1d2e4b/   a run (the trainer's run directory) named <date>-<id>, where
                                   the id hashes the data's content identity and the recipe
        .trigger.lock              held by the trigger working on the run; says who (pid, host)
        outcome.json               written last (after promotion): accuracy, gate, seconds
    DIR/latest -> 2026-11-29-...   the newest run that passed its gate (a symlink, replaced
                                   atomically: a reader sees the old target or the new one)
    DIR/.lock                      held for an instant to create a run, promote or prune

A trigger whose run is finished touches nothing ("up to date"). A run without an outcome is
unfinished (killed, or failed): the next trigger resumes it; as the outcome is written after
the promotion, a run that passed and has an outcome was promoted. Nothing here deletes or
follows what it cannot prove is a finished run of ours: a real directory (never a symlink)
named <date>-<id> whose run.json hashes to that id and whose outcome.json is ours.
The locks (who works on a run) are `pipeline.runs.lock`'s.
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

from pipeline.data import Manifest
from pipeline.errors import ConfigError, OutputError
from pipeline.fsutil import atomic_write_bytes, fsync
from pipeline.runs.lock import RunBusyError, is_held, runs_dir_lock, trigger_lock
from pipeline.config import TrainConfig
from pipeline.runs.rundir import RUN_FILE, RunDir, read_json

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
    """Run directories by name pattern, oldest first (the date, then the creation time);
    never a symlink, whatever it points to."""
    if not runs_dir.is_dir():
        return []
    found = [
        p
        for p in runs_dir.iterdir()
        if RUN_NAME.match(p.name) and not p.is_symlink() and p.is_dir()
    ]
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
    """outcome.json, checked field by field (None: the run has none, it is unfinished).
    Raises ConfigError for one that is not ours: an edited or damaged file is never a verdict."""
    hint = "; move it away and the next trigger finishes the run again"
    return read_json(run / OUTCOME, _check_outcome, "an outcome of ours", hint)


def _check_outcome(doc: object) -> dict[str, Any]:
    """`doc` if it is an outcome; else raises ValueError naming the field at fault."""
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    for key, nullable in (("accuracy", False), ("min_accuracy", True), ("seconds", False)):
        value = doc.get(key, "absent")
        is_number = isinstance(value, int | float) and not isinstance(value, bool)
        if not (is_number and value >= 0) and not (nullable and value is None):
            raise ValueError(f"{key!r} is {value!r}, not a number >= 0")
    if not isinstance(doc.get("passed"), bool):
        raise ValueError(f"'passed' is {doc.get('passed', 'absent')!r}, not true or false")
    if not isinstance(doc.get("finished"), str):
        raise ValueError("'finished' is not a string")
    return doc


def proven(run: Path) -> bool:
    """Whether `run` is a finished run of ours: a real directory, not a symlink, named
    <date>-<id>, whose run.json parses and hashes to that id, with an outcome.json of ours."""
    match = RUN_NAME.match(run.name)
    if match is None or run.is_symlink() or not run.is_dir():
        return False
    try:
        saved, outcome = RunDir(run).read_run_file(), read_outcome(run)
    except ConfigError:
        return False
    if saved is None or outcome is None:
        return False
    return run_id(saved.data_identity, saved.config) == match["id"]


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
    with trigger_lock(run):  # the one that loses this race exits "busy"
        yield run


# --- finishing, promotion, pruning --------------------------------------------------------


def finish(
    run: Path, *, accuracy: float, min_accuracy: float | None, passed: bool, seconds: float
) -> None:
    """Record the run's outcome: its last file, written after the promotion of a run that
    passed (so an outcome proves that promotion)."""
    doc = {
        "accuracy": accuracy,
        "min_accuracy": min_accuracy,
        "passed": passed,
        "seconds": round(seconds, 3),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    atomic_write_bytes(run / OUTCOME, (json.dumps(doc, indent=2) + "\n").encode())


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
        done = [r for r in _ours(runs_dir) if proven(r)]
        for run in done[: max(len(done) - keep, 0)]:
            if promoted is not None and run.name == promoted.name:
                continue
            with contextlib.suppress(RunBusyError), trigger_lock(run):
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
    status: str  # finished | running | unfinished | damaged (a file not ours)
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
        damaged = False
        try:
            saved, outcome = RunDir(run).read_run_file(), read_outcome(run)
        except ConfigError:  # damaged or not ours: listed as such, nothing guessed
            saved, outcome, damaged = None, None, True
        status = "unfinished" if outcome is None else "finished"
        if damaged or is_held(run):
            status = "running" if is_held(run) else "damaged"
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
