"""`pipeline run`: the whole job through the CLI, and `pipeline.job.flow` beneath it.

A run reuses what is there: a shard set of any dataset in --data, a finished run whose report is
current (then nothing at all is written), an interrupted run (resumed).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from pipeline import events, fsutil
from pipeline.cli import app
from pipeline.config import TrainConfig
from pipeline.data import Manifest, ShardInfo, integrity, manifest_file, open_set
from pipeline.events import EPOCH_STARTED, Event, Events
from pipeline.job import flow as job
from tests.conftest import snapshot

runner = CliRunner()
QUICK = ["--epochs", "1", "--hidden", "16", "--lr", "1"]


def run(run_dir: Path, *args: str | Path) -> Result:
    return runner.invoke(app, ["run", "--run-dir", str(run_dir), *map(str, args)])


def files(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def test_a_finished_run_is_up_to_date_and_nothing_is_written(
    slice_shards: Manifest, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    first = run(run_dir, "--data", slice_shards.directory, *QUICK)
    assert first.exit_code == 0, first.stderr
    before, contents = snapshot(run_dir), files(run_dir)
    again = run(run_dir, "--data", slice_shards.directory, *QUICK, "--min-accuracy", "0.5")
    assert again.exit_code == 0, again.stderr
    assert "up to date" in again.stdout and "resumed" not in again.stdout
    accuracy = json.loads((run_dir / "report.json").read_text())["accuracy"]
    assert f"{accuracy:.2%}" in again.stdout.splitlines()[-1]
    assert snapshot(run_dir) == before and files(run_dir) == contents  # mtimes and bytes
    # the gate still judges the standing report
    gated = run(run_dir, "--data", slice_shards.directory, *QUICK, "--min-accuracy", "0.9999")
    assert gated.exit_code == 3
    # more epochs: trained on from the last checkpoint, and a new report
    longer = run(run_dir, "--data", slice_shards.directory, *QUICK[2:], "--epochs", "2")
    assert longer.exit_code == 0, longer.stderr
    assert "resumed from" in longer.stdout
    assert json.loads((run_dir / "report.json").read_text())["checkpoint"]["epoch"] == 2


def test_a_report_that_is_not_of_the_last_checkpoint_is_rewritten(
    slice_shards: Manifest, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    assert run(run_dir, "--data", slice_shards.directory, *QUICK).exit_code == 0
    doc = json.loads((run_dir / "report.json").read_text())
    doc["checkpoint"]["sha256"] = "0" * 64  # as if the checkpoint were replaced since
    (run_dir / "report.json").write_text(json.dumps(doc))
    again = run(run_dir, "--data", slice_shards.directory, *QUICK)
    assert again.exit_code == 0, again.stderr
    assert "up to date" not in again.stdout
    assert json.loads((run_dir / "report.json").read_text())["checkpoint"]["sha256"] != "0" * 64


def test_run_uses_a_set_of_another_dataset_in_data_and_says_which(
    slice_shards: Manifest, tmp_path: Path
) -> None:
    """--data holds a set built from idx:DIR; run without --source just uses it."""
    before = snapshot(slice_shards.directory)
    result = run(tmp_path / "run", "--data", slice_shards.directory, *QUICK)
    assert result.exit_code == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert f"{slice_shards.directory} already holds mnist-slice" in first
    assert snapshot(slice_shards.directory) == before


def test_a_conflicting_source_names_both(slice_shards: Manifest, tmp_path: Path) -> None:
    result = run(tmp_path / "run", "--data", slice_shards.directory, "--source", "embedded")
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --source embedded:"), lines
    built_from = slice_shards.raw["source"]["spec"]
    assert built_from in lines[0] and str(slice_shards.directory) in lines[0]
    assert not (tmp_path / "run").exists()


def test_run_without_data_puts_the_shards_in_the_run_dir(
    tmp_path: Path, mnist_slice_idx: Path
) -> None:
    run_dir = tmp_path / "run"
    result = run(run_dir, "--source", f"idx:{mnist_slice_idx}", *QUICK)
    assert result.exit_code == 0, result.stderr
    assert (run_dir / "shards" / "manifest.json").is_file()
    # the set it made is then found on its own, without --source
    again = run(run_dir, *QUICK)
    assert again.exit_code == 0, again.stderr
    assert "already holds" in again.stdout and "up to date" in again.stdout


def test_a_damaged_set_in_data_is_named_and_left_alone(
    slice_shards: Manifest, tmp_path: Path
) -> None:
    data = tmp_path / "shards"
    shutil.copytree(slice_shards.directory, data)
    (data / "manifest.json").write_text("{")
    before = snapshot(data)
    result = run(tmp_path / "run", "--data", data, *QUICK)
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error:") and str(data) in result.stderr
    assert "--force" not in result.stderr  # run has no --force
    assert snapshot(data) == before


@pytest.mark.parametrize("command", ["train", "run"])
def test_a_read_only_run_dir_is_not_writable_not_missing(
    slice_shards: Manifest, tmp_path: Path, mount_tmpfs, command: str
) -> None:
    run_dir = tmp_path / "run"
    assert mount_tmpfs(run_dir, "ro,size=1m"), "mounting a tmpfs needs root, as in CI"
    result = runner.invoke(
        app,
        [command, "--data", str(slice_shards.directory), "--run-dir", str(run_dir), *QUICK],
    )
    assert result.exit_code == 1, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and "not writable" in lines[0] and str(run_dir) in lines[0], lines
    assert "cannot create" not in lines[0]


def test_evaluate_removes_what_a_killed_evaluate_left_and_nothing_else(
    slice_shards: Manifest, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    assert run(run_dir, "--data", slice_shards.directory, *QUICK).exit_code == 0
    stale = [run_dir / ".curves.png.4242.tmp", run_dir / ".report.json.17.tmp"]
    foreign = [
        run_dir / ".notes.txt.4242.tmp",  # not a report file
        run_dir / "curves.png.4242.tmp",  # not hidden: not one of our temporary names
    ]
    for path in stale + foreign:
        path.write_bytes(b"half")
    result = runner.invoke(app, ["evaluate", "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.stderr
    assert [p for p in stale if p.exists()] == []
    assert all(p.read_bytes() == b"half" for p in foreign)


def test_a_batch_larger_than_the_train_split_is_refused_by_name(
    slice_shards: Manifest, tmp_path: Path
) -> None:
    result = run(tmp_path / "run", "--data", slice_shards.directory, "--batch-size", "10000000")
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: --batch-size 10000000: more than the 3,000 samples")
    assert not (tmp_path / "run").exists()


# --- the shard set is opened once: found or written, then handed to train and evaluate ------


class Opened:
    """Counts calls of the real manifest parser and of the real per-shard check (hashing),
    by wrappers that call them unchanged."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.parsed: list[Path] = []  # the directory of each manifest parsed
        self.checked: list[str] = []  # each shard file checked against the manifest
        parse, check = manifest_file.parse, integrity.shard_problem

        def counting_parse(directory: Path, text: bytes) -> Manifest:
            self.parsed.append(directory)
            return parse(directory, text)

        def counting_check(manifest: Manifest, shard: ShardInfo) -> Any:
            self.checked.append(shard.file)
            return check(manifest, shard)

        monkeypatch.setattr(manifest_file, "parse", counting_parse)
        monkeypatch.setattr(integrity, "shard_problem", counting_check)


def test_run_parses_the_manifest_of_a_set_in_data_once(
    slice_shards: Manifest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = Opened(monkeypatch)
    done = run(tmp_path / "run", "--data", slice_shards.directory, *QUICK)
    assert done.exit_code == 0, done.stderr
    assert (tmp_path / "run" / "report.json").is_file()
    assert opened.parsed == [slice_shards.directory]  # found, trained on, evaluated: once
    assert sorted(opened.checked) == sorted(slice_shards.files)  # every shard checked once


class LockProbe:
    """A listener that looks, as each epoch starts, whether a reader holds the shard set's
    reader lock (the lock a `prepare --force` waits for to delete files)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.free: list[bool] = []

    def __call__(self, event: Event) -> None:
        if event.name == EPOCH_STARTED:
            with fsutil.no_readers(self.directory) as free:
                self.free.append(free)


def test_a_run_that_writes_its_set_parses_it_once_and_reads_it_under_the_lock(
    small_idx: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "shards"
    opened = Opened(monkeypatch)
    probe = LockProbe(data)
    spec = job.Job(
        run_dir=tmp_path / "run",
        config=TrainConfig(epochs=2, hidden=(16,), lr=1.0),
        data_dir=data,
        source=f"idx:{small_idx}",
    )
    result = job.run(spec, Events(probe))
    assert result.prepared and result.evaluation is not None
    assert opened.parsed == [data]  # the manifest it wrote, parsed as written, and no more
    assert opened.checked == []  # its shards were hashed as they were written
    assert probe.free == [False, False]  # train read them under the reader lock
    assert result.manifest.identity == open_set(data).identity


def test_one_stream_tells_the_run_in_the_vocabulary(slice_shards: Manifest, tmp_path: Path) -> None:
    """What a tracker hears: the resolved config, each epoch with lr and speed, each
    checkpoint, the verdict; then, run again, only that it is up to date."""
    heard: list[Event] = []
    config = TrainConfig(epochs=2, hidden=(16,), lr=1.0)
    spec = job.Job(
        run_dir=tmp_path / "run", config=config, data_dir=slice_shards.directory, min_accuracy=0.5
    )
    job.run(spec, Events(heard.append))
    names = [e.name for e in heard if e.name != events.STEP]
    epoch = [events.EPOCH_STARTED, events.CHECKPOINT, events.EPOCH_ENDED]
    assert names == [
        events.SAY,
        events.RUN_STARTED,
        *epoch,
        *epoch,
        events.TRAINED,
        events.EVALUATED,
    ]
    started = heard[1].fields
    assert started["config"] == config.to_json() and started["resumed_from"] is None
    assert started["identity"] == slice_shards.identity and started["world_size"] == 1
    ended = [e.fields for e in heard if e.name == events.EPOCH_ENDED]
    metrics = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert ended[-1]["epoch"] == 2 and ended[-1]["metrics"]["lr"] == 1.0
    assert ended[-1]["metrics"]["samples_per_s"] > 0
    assert ended[-1]["metrics"]["test_accuracy"] == metrics["test_accuracy"]
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    verdict = heard[-1].fields
    assert verdict["accuracy"] == report["accuracy"] and verdict["passed"] is True
    assert set(verdict["per_class"]) == set(slice_shards.classes)
    heard.clear()
    job.run(spec, Events(heard.append))
    assert [e.name for e in heard] == [events.SAY, events.UP_TO_DATE]
