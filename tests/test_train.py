"""The trainer: determinism, exact resume after SIGKILL, refusals, bad input."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
from typer.testing import CliRunner, Result

from pipeline.cli import app
from pipeline.config import TrainConfig
from pipeline.data import MANIFEST, Manifest
from pipeline.data.manifest import identity_of
from pipeline.errors import (
    CheckpointError,
    ConfigError,
    DivergedError,
    LockedError,
    OutputError,
    ShardSetError,
)
from pipeline.events import EPOCH_STARTED, STEP, Event, Events
from pipeline.fsutil import dir_lock, sha256_file
from pipeline.report import evaluate
from pipeline.runs import rundir
from pipeline.training import checkpoint
from pipeline.training import trainer as train
from tests.conftest import run_size_limited

SMALL = TrainConfig(hidden=(32,), epochs=2, lr=1.0)  # a larger lr learns in 2 short epochs


def weights(run_dir: Path) -> list[np.ndarray]:
    ckpt = checkpoint.load(rundir.RunDir(run_dir).newest_checkpoint())  # type: ignore[arg-type]
    return ckpt.network.weights + ckpt.network.biases


def assert_identical(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.dtype == y.dtype and np.array_equal(x, y)


def test_run_writes_checkpoints_metrics_and_learns(slice_shards: Manifest, tmp_path: Path) -> None:
    result = train.train(slice_shards.directory, tmp_path / "run", SMALL)
    names = [p.name for p in rundir.RunDir(tmp_path / "run").all_checkpoints()]
    assert names == ["checkpoint-e0001-s0000000.npz", "checkpoint-e0002-s0000000.npz"]
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2]
    assert records[1]["train_loss"] < records[0]["train_loss"]
    assert records[1]["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert result.history == records
    meta = checkpoint.load(result.checkpoint).meta
    assert meta.data_identity == slice_shards.identity
    assert meta.config == SMALL
    assert meta.loader == {
        "epoch": 2,
        "batches": 0,
        "seed": 0,
        "batch_size": 3,
        "shuffle": False,
        "manifest_sha256": slice_shards.identity,
        "order": "file order",
    }
    assert meta.sizes == (784, 32, 10)


@pytest.mark.parametrize("shuffle", [False, True])
def test_same_seed_same_data_gives_bit_identical_weights(
    slice_shards: Manifest, tmp_path: Path, shuffle: bool
) -> None:
    config = TrainConfig(hidden=(16,), epochs=2, shuffle=shuffle, seed=5)
    train.train(slice_shards.directory, tmp_path / "a", config)
    train.train(slice_shards.directory, tmp_path / "b", config)
    assert_identical(weights(tmp_path / "a"), weights(tmp_path / "b"))
    other = TrainConfig(hidden=(16,), epochs=2, shuffle=shuffle, seed=6)
    train.train(slice_shards.directory, tmp_path / "c", other)
    assert not np.array_equal(weights(tmp_path / "a")[0], weights(tmp_path / "c")[0])


def test_resume_in_process_matches_uninterrupted(slice_shards: Manifest, tmp_path: Path) -> None:
    """A run stopped after epoch 1 (epochs=1) and extended to 3 equals a 3-epoch run."""
    config = TrainConfig(hidden=(16,), epochs=3, shuffle=True, checkpoint_every=170)
    train.train(slice_shards.directory, tmp_path / "full", config)
    train.train(
        slice_shards.directory,
        tmp_path / "part",
        TrainConfig(hidden=(16,), epochs=1, shuffle=True, checkpoint_every=170),
    )
    resumed = train.train(slice_shards.directory, tmp_path / "part", config, resume=True)
    assert resumed.resumed_from is not None
    assert_identical(weights(tmp_path / "full"), weights(tmp_path / "part"))
    full_log = (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    part_log = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    drop_time = lambda line: {k: v for k, v in json.loads(line).items() if "seconds" not in k}  # noqa: E731
    assert [drop_time(x) for x in full_log] == [drop_time(x) for x in part_log]


FAST_EPOCHS = TrainConfig(hidden=(16,), epochs=3, lr=1.0, batch_size=100, shuffle=True)


@pytest.mark.parametrize("killed", ["after-the-append", "mid-append"])
def test_metrics_lines_beyond_the_checkpoint_are_cut_on_resume(
    slice_shards: Manifest, tmp_path: Path, killed: str
) -> None:
    """metrics.jsonl is only appended, each record before its epoch's checkpoint. A kill after
    epoch 3 was logged but before its checkpoint, or in the middle of the append (the half line
    it leaves), leaves what the newest checkpoint (epoch 2) has not seen: the resume cuts it and
    logs epoch 3 again, so weights and every logged number are those of the run never killed."""
    data = slice_shards.directory
    train.train(data, tmp_path / "full", FAST_EPOCHS)
    train.train(data, tmp_path / "part", replace(FAST_EPOCHS, epochs=2))
    metrics = tmp_path / "part" / "metrics.jsonl"
    logged = metrics.read_bytes()
    epoch_3 = (tmp_path / "full" / "metrics.jsonl").read_bytes().splitlines(keepends=True)[2]
    with metrics.open("ab") as f:  # what each kill leaves: the whole line, or its first part
        f.write(epoch_3 if killed == "after-the-append" else epoch_3[:40])
    resumed = train.train(data, tmp_path / "part", FAST_EPOCHS, resume=True)
    assert_identical(weights(tmp_path / "full"), weights(tmp_path / "part"))
    assert untimed_metrics(tmp_path / "full") == untimed_metrics(tmp_path / "part")
    assert metrics.read_bytes().startswith(logged)  # the checkpoint's lines, kept as they were
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3]


def test_a_history_that_is_not_the_checkpoints_is_refused(
    slice_shards: Manifest, tmp_path: Path
) -> None:
    """The newest checkpoint carries the sha256 of its epochs' lines: a metrics.jsonl short of
    them, or holding another run's, stops the resume (and the run's report) with one line
    naming the file, before anything is cut or written."""
    data, run_dir = slice_shards.directory, tmp_path / "run"
    train.train(data, run_dir, replace(FAST_EPOCHS, epochs=2))
    train.train(data, tmp_path / "other", replace(FAST_EPOCHS, epochs=2, seed=1))
    metrics = run_dir / "metrics.jsonl"
    lines = metrics.read_bytes().splitlines(keepends=True)
    for damaged, says in [
        (lines[0], "line 2 is not epoch 2's record"),
        (b"", "line 1 is not epoch 1's record"),
        ((tmp_path / "other" / "metrics.jsonl").read_bytes(), "its first 2 lines are other"),
    ]:
        metrics.write_bytes(damaged)
        for call in (
            lambda: train.train(data, run_dir, FAST_EPOCHS, resume=True),
            lambda: evaluate.evaluate(run_dir),
        ):
            with pytest.raises(ConfigError) as caught:
                call()
            message = str(caught.value)
            assert message.startswith(f"{metrics}: {says}") and "\n" not in message
            assert message.endswith("history of checkpoint-e0002-s0000000.npz")
            assert metrics.read_bytes() == damaged
    assert [p.name for p in rundir.RunDir(run_dir).all_checkpoints()][-1].startswith(
        "checkpoint-e0002"
    )


class _Interrupted(Exception):
    """Raised by StopAt: the run stops as a killed one would, between two blocks of steps."""


class StopAt:
    """A listener that interrupts the run once it has passed (epoch, step)."""

    def __init__(self, epoch: int, step: int) -> None:
        self.at, self.epoch = (epoch, step), 0

    def __call__(self, event: Event) -> None:
        if event.name == EPOCH_STARTED:
            self.epoch = event.fields["epoch"]
        elif event.name == STEP and (self.epoch, event.fields["step"]) >= self.at:
            raise _Interrupted


def untimed_metrics(run_dir: Path) -> list[dict[str, object]]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if "seconds" not in k} for line in lines]


@pytest.mark.parametrize("shuffle", [False, True])
def test_resume_from_mid_epoch_checkpoints_records_the_same_numbers(
    mnist_shards: Manifest, tmp_path: Path, shuffle: bool
) -> None:
    """Interrupted three times mid-epoch (shards larger than the loader's blocks, so a resume
    starts inside a block), the run's weights AND every number in metrics.jsonl are those of
    an uninterrupted run, to the last bit. float64: float32 squared errors of an untrained
    small network add up exactly in a float64 sum, which would hide a change of order."""
    config = TrainConfig(
        hidden=(16,), epochs=2, shuffle=shuffle, checkpoint_every=1000, dtype="float64"
    )
    data = mnist_shards.directory
    train.train(data, tmp_path / "full", config)
    for n, (epoch, step) in enumerate([(0, 2500), (0, 9100), (1, 7700)]):
        with pytest.raises(_Interrupted):
            train.train(
                data, tmp_path / "part", config, resume=n > 0, events=Events(StopAt(epoch, step))
            )
    newest = rundir.RunDir(tmp_path / "part").newest_checkpoint()
    assert newest is not None and newest.name.startswith("checkpoint-e0001-")
    assert not rundir.is_kept(newest)  # a mid-epoch one: the resume starts inside a block
    resumed = train.train(data, tmp_path / "part", config, resume=True)
    assert resumed.resumed_from == newest
    assert_identical(weights(tmp_path / "full"), weights(tmp_path / "part"))
    assert len(untimed_metrics(tmp_path / "full")) == 2
    assert untimed_metrics(tmp_path / "full") == untimed_metrics(tmp_path / "part")


def _train_cmd(data: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "pipeline",
        "train",
        "--data",
        str(data),
        "--run-dir",
        str(run_dir),
        "--epochs",
        "2",
        "--checkpoint-every",
        "997",
        *extra,
    ]


def _kill_when(proc: subprocess.Popen[bytes], event: Callable[[], bool]) -> bool:
    """SIGKILL `proc` as soon as `event()` holds (a file event, polled); False if it ended
    first. No deadline on speed: only a guard against a hung process, far beyond any run."""
    guard = time.monotonic() + 1800
    while proc.poll() is None:
        if event():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        assert time.monotonic() < guard, "the training process hangs"
        time.sleep(0.001)
    return False


@pytest.mark.parametrize("shuffle", [False, True])
def test_sigkill_at_any_moment_then_resume_is_bit_identical(
    mnist_shards: Manifest, tmp_path: Path, shuffle: bool
) -> None:
    """Kill a real training process four times, each at a moment named by what it has
    written (not by time: a loaded machine only moves the moments); resume each time."""
    data = mnist_shards.directory
    reference = tmp_path / "reference"
    config = TrainConfig(epochs=2, checkpoint_every=997, shuffle=shuffle)
    train.train(data, reference, config)
    order = ["--shuffle"] if shuffle else []

    run_dir = tmp_path / "killed"
    ckpts = run_dir / "checkpoints"

    def position() -> int:  # steps done at the newest checkpoint (20,000 steps an epoch)
        found = rundir.RunDir(run_dir).newest_checkpoint()
        match = rundir.CHECKPOINT_NAME.match(found.name) if found else None
        return int(match["epoch"]) * 20_000 + int(match["step"]) if match else -1

    def writing(pid: int) -> bool:  # the process `pid` is half-way through a checkpoint
        return any(ckpts.glob(f".checkpoint-*.{pid}.tmp"))

    moments: list[Callable[[int, int], bool]] = [
        # right after the first checkpoint's rename (before the directory fsync, maybe)
        lambda start, pid: position() > start,
        # half-way through writing a checkpoint (else three checkpoints on)
        lambda start, pid: writing(pid) or position() >= start + 3 * 997,
        # just after the epoch-end checkpoint: metrics.jsonl may not be written yet
        lambda start, pid: position() >= 20_000,
        # in the second epoch, two checkpoints further on
        lambda start, pid: position() >= max(start, 20_000) + 2 * 997,
    ]
    for n, moment in enumerate(moments):
        proc = subprocess.Popen(
            _train_cmd(data, run_dir, *order, *(["--resume"] if n else [])),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        event = functools.partial(moment, position(), proc.pid)
        assert _kill_when(proc, event), f"run {n} ended before its moment to be killed"
    done = subprocess.run(
        _train_cmd(data, run_dir, *order, "--resume"), capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    assert_identical(weights(reference), weights(run_dir))
    leftovers = [p.name for p in run_dir.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
    assert len(untimed_metrics(reference)) == 2
    assert untimed_metrics(reference) == untimed_metrics(run_dir)  # same losses and accuracies


def test_resume_refuses_other_data(
    slice_shards: Manifest, mnist_shards: Manifest, tmp_path: Path
) -> None:
    train.train(slice_shards.directory, tmp_path / "run", SMALL)
    with pytest.raises(ConfigError, match="another shard set"):
        train.train(mnist_shards.directory, tmp_path / "run", SMALL, resume=True)


@pytest.mark.parametrize(
    "change", [{"lr": 0.2}, {"hidden": (33,)}, {"batch_size": 4}, {"seed": 1}, {"shuffle": True}]
)
def test_resume_refuses_an_incompatible_config(
    slice_shards: Manifest, tmp_path: Path, change: dict[str, object]
) -> None:
    train.train(slice_shards.directory, tmp_path / "run", SMALL)
    config = TrainConfig(**{**SMALL.__dict__, **change})
    with pytest.raises(ConfigError, match="different config"):
        train.train(slice_shards.directory, tmp_path / "run", config, resume=True)


def test_existing_run_needs_resume(slice_shards: Manifest, tmp_path: Path) -> None:
    train.train(slice_shards.directory, tmp_path / "run", SMALL)
    before = weights(tmp_path / "run")
    with pytest.raises(ConfigError, match="already holds a run"):
        train.train(slice_shards.directory, tmp_path / "run", SMALL)
    assert_identical(before, weights(tmp_path / "run"))


def test_pickled_checkpoint_is_refused(slice_shards: Manifest, tmp_path: Path) -> None:
    result = train.train(slice_shards.directory, tmp_path / "run", SMALL)
    evil = result.checkpoint.with_name("checkpoint-e0009-s0000000.npz")
    with evil.open("wb") as f:
        np.savez(f, meta=np.array([{"format": 1}], dtype=object), w0=np.zeros((784, 32)))
    with pytest.raises(CheckpointError, match="pickled"):
        checkpoint.load(evil)
    with pytest.raises(CheckpointError, match="pickled"):
        train.train(slice_shards.directory, tmp_path / "run", SMALL, resume=True)


def test_truncated_checkpoint_is_refused(slice_shards: Manifest, tmp_path: Path) -> None:
    result = train.train(slice_shards.directory, tmp_path / "run", SMALL)
    data = result.checkpoint.read_bytes()
    result.checkpoint.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        checkpoint.load(result.checkpoint)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    slice_shards: Manifest, tmp_path: Path
) -> None:
    """A team's shard set with a NaN pixel (only `verify` checks values): training stops."""
    data = tmp_path / "shards"
    shutil.copytree(slice_shards.directory, data)
    doc = json.loads((data / MANIFEST).read_text())
    shard = doc["splits"]["train"]["shards"][2]  # samples 2000-2999: step 667 at batch 3
    with h5py.File(data / shard["file"], "r+") as f:
        f["images"][0, 300] = np.nan
    shard["bytes"] = (data / shard["file"]).stat().st_size
    shard["sha256"] = sha256_file(data / shard["file"])
    (data / MANIFEST).write_text(json.dumps(doc))

    config = TrainConfig(hidden=(8,), epochs=1, checkpoint_every=100)
    with pytest.raises(DivergedError, match=r"step 667: .*checkpoint-e0000-s0000600\.npz"):
        train.train(data, tmp_path / "run", config)
    newest = rundir.RunDir(tmp_path / "run").newest_checkpoint()
    assert newest is not None and newest.name == "checkpoint-e0000-s0000600.npz"
    assert all(np.isfinite(w).all() for w in checkpoint.load(newest).network.weights)
    result = runner.invoke(app, ["train", "--data", str(data), "--run-dir", str(tmp_path / "cli")])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and "loss became nan" in result.stderr


def test_locked_run_dir_is_refused(slice_shards: Manifest, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    with dir_lock(tmp_path / "run", what="train"), pytest.raises(LockedError, match="lock"):
        train.train(slice_shards.directory, tmp_path / "run", SMALL)


runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "needle", "code"),
    [
        (["--lr", "0"], "--lr", 2),
        (["--lr", "-1"], "--lr", 2),
        (["--lr", "nan"], "--lr", 2),
        (["--lr", "inf"], "--lr", 2),
        (["--seed", "-1"], "--seed", 2),
        (["--batch-size", "0"], "--batch-size", 2),
        (["--epochs", "0"], "--epochs", 2),
        (["--hidden", "0"], "--hidden", 2),
        (["--checkpoint-every", "-1"], "--checkpoint-every", 2),
    ],
)
def test_cli_bad_options_one_line(
    slice_shards: Manifest, tmp_path: Path, args: list[str], needle: str, code: int
) -> None:
    """Out-of-range option values are usage errors (2), whether typer or TrainConfig judges."""
    result = runner.invoke(
        app,
        ["train", "--data", str(slice_shards.directory), "--run-dir", str(tmp_path / "run"), *args],
    )
    assert result.exit_code == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0]
    assert "Traceback" not in result.output
    # nothing that would make the next, corrected command fail ("already holds a run")
    assert not (tmp_path / "run" / "run.json").exists()
    ok = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(slice_shards.directory),
            "--run-dir",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--hidden",
            "4",
        ],
    )
    assert ok.exit_code == 0, ok.stderr


def test_full_disk_during_training(slice_shards: Manifest, tmp_path: Path, mount_tmpfs) -> None:
    """A real full disk: a tiny tmpfs (as root), else a file-size limit (EFBIG): one line."""
    args = ["train", "--data", str(slice_shards.directory), "--hidden", "32"]
    if mount_tmpfs(tmp_path / "small", "size=64k"):  # less than one checkpoint
        full = tmp_path / "small"
        with pytest.raises(OutputError, match="cannot write the run"):
            train.train(slice_shards.directory, full / "run", SMALL)
        assert [p.name for p in full.rglob("*.tmp")] == []
        result = runner.invoke(app, [*args, "--run-dir", str(full / "cli")])
        stderr, code = result.stderr, result.exit_code
    else:
        done = run_size_limited(64 * 1024, *args, "--run-dir", str(tmp_path / "cli"))
        stderr, code = done.stderr, done.returncode
    assert code == 1 and stderr.count("\n") == 1 and "cannot write the run" in stderr
    assert "Traceback" not in stderr


def test_read_only_run_dir(slice_shards: Manifest, tmp_path: Path, mount_tmpfs) -> None:
    roomy = tmp_path / "roomy"
    if not mount_tmpfs(roomy, "size=64m"):
        roomy.mkdir(exist_ok=True)
    train.train(slice_shards.directory, roomy / "run", SMALL)
    before = weights(roomy / "run")
    if os.geteuid() == 0:
        subprocess.run(["mount", "-o", "remount,ro", str(roomy)], check=True)
    else:  # chmod stops everyone but root
        for path in [roomy / "run", *(roomy / "run").rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)
    with pytest.raises(OutputError, match="run: not writable"):  # it exists: not "cannot create"
        train.train(slice_shards.directory, roomy / "run", SMALL, resume=True)
    assert_identical(before, weights(roomy / "run"))


def test_stale_temporary_files_of_a_killed_run_are_removed(
    slice_shards: Manifest, tmp_path: Path
) -> None:
    train.train(slice_shards.directory, tmp_path / "run", SMALL)
    stale = tmp_path / "run" / "checkpoints" / ".checkpoint-e0003-s0000000.npz.999.tmp"
    stale.write_bytes(b"half a checkpoint")
    train.train(slice_shards.directory, tmp_path / "run", SMALL, resume=True)
    assert not stale.exists()


@pytest.mark.parametrize(
    "run_json",
    ['{"config": {"hidden": [32]}}', "[1]", '{"config": {"hidden": [32]}, "manifest_sha256": 1}'],
)
def test_damaged_run_file_is_one_line(
    slice_shards: Manifest, tmp_path: Path, run_json: str
) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text(run_json)
    with pytest.raises(ConfigError, match=r"run\.json: not a readable run file"):
        train.train(slice_shards.directory, tmp_path / "run", SMALL, resume=True)


def test_cli_bad_data_dirs(tmp_path: Path) -> None:
    for data in (tmp_path / "missing", tmp_path):
        result = runner.invoke(
            app, ["train", "--data", str(data), "--run-dir", str(tmp_path / "r")]
        )
        assert result.exit_code == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and str(data) in lines[0]


def test_cli_train_end_to_end_on_a_real_mnist_slice(slice_shards: Manifest, tmp_path: Path) -> None:
    def cli_train(epochs: int, *extra: str) -> Result:
        args = ["--data", str(slice_shards.directory), "--run-dir", str(tmp_path / "run")]
        recipe = ["--epochs", str(epochs), "--hidden", "64", "--lr", "1"]
        return runner.invoke(app, ["train", *args, *recipe, *extra])

    result = cli_train(2)
    assert result.exit_code == 0, result.stderr
    assert "epoch 2:" in result.stdout and "test accuracy" in result.stdout
    last = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1]
    assert json.loads(last)["test_accuracy"] > 0.8  # 3,000 real digits, 2 epochs
    again = cli_train(2)
    assert again.exit_code == 1 and "already holds a run" in again.stderr
    assert "resume it" in again.stderr
    resumed = cli_train(3, "--resume")
    assert resumed.exit_code == 0, resumed.stderr
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 3
    assert os.path.exists(tmp_path / "run" / "checkpoints" / "checkpoint-e0003-s0000000.npz")


def test_checkpoint_without_its_config_is_refused(slice_shards: Manifest, tmp_path: Path) -> None:
    result = train.train(slice_shards.directory, tmp_path / "run", SMALL)
    ckpt = checkpoint.load(result.checkpoint)
    meta = {k: v for k, v in ckpt.meta.to_json().items() if k != "config"}
    later = result.checkpoint.with_name("checkpoint-e0003-s0000000.npz")
    with later.open("wb") as f:
        np.savez(f, meta=np.array(json.dumps(meta)), w0=ckpt.weights[0], b0=ckpt.biases[0])
    with pytest.raises(CheckpointError, match="field 'config' is missing"):
        train.train(slice_shards.directory, tmp_path / "run", SMALL, resume=True)


def test_a_failed_first_train_does_not_poison_its_run_dir(
    slice_shards: Manifest, tmp_path: Path
) -> None:
    """Stopped before its first checkpoint (a divergence, an out-of-memory, Ctrl-C), the run
    directory holds no run: the same command, or one with another config, starts it again."""
    data, run_dir = slice_shards.directory, tmp_path / "run"
    with pytest.raises(_Interrupted):  # no mid-epoch checkpoints: stopped inside epoch 1
        train.train(data, run_dir, SMALL, events=Events(StopAt(0, 1)))
    assert (run_dir / "run.json").exists() and rundir.RunDir(run_dir).newest_checkpoint() is None
    other = TrainConfig(hidden=(8,), epochs=1, lr=1.0)
    train.train(data, run_dir, other)  # another config, no resume: a new start
    assert rundir.RunDir(run_dir).read_run_file().config == other  # type: ignore[union-attr]
    train.train(data, tmp_path / "clean", other)
    assert_identical(weights(run_dir), weights(tmp_path / "clean"))
    with pytest.raises(_Interrupted):  # the same with resume (the CLI's `run` passes it)
        train.train(data, tmp_path / "again", SMALL, events=Events(StopAt(0, 1)))
    train.train(data, tmp_path / "again", other, resume=True)
    assert_identical(weights(tmp_path / "again"), weights(tmp_path / "clean"))


def test_a_run_with_checkpoints_is_not_silently_mixed(
    slice_shards: Manifest, tmp_path: Path
) -> None:
    data, run_dir = slice_shards.directory, tmp_path / "run"
    with pytest.raises(_Interrupted):
        train.train(
            data, run_dir, replace(SMALL, checkpoint_every=100), events=Events(StopAt(0, 300))
        )
    assert rundir.RunDir(run_dir).newest_checkpoint() is not None
    with pytest.raises(ConfigError, match="different config"):
        train.train(data, run_dir, replace(SMALL, checkpoint_every=100, hidden=(8,)), resume=True)
    (run_dir / "run.json").unlink()  # lost: the checkpoints remain
    with pytest.raises(ConfigError, match=r"holds checkpoints but no run\.json") as caught:
        train.train(data, run_dir, replace(SMALL, hidden=(8,)))
    assert "resume it" in str(caught.value)
    with pytest.raises(ConfigError, match="different config"):  # the checkpoint's own config
        train.train(data, run_dir, replace(SMALL, hidden=(8,)), resume=True)
    train.train(data, run_dir, replace(SMALL, checkpoint_every=100), resume=True)
    assert rundir.RunDir(run_dir).read_run_file() is not None  # written again
    train.train(data, tmp_path / "whole", SMALL)
    assert_identical(weights(run_dir), weights(tmp_path / "whole"))


def test_a_batch_larger_than_the_train_split_is_refused(
    slice_shards: Manifest, tmp_path: Path
) -> None:
    """Refused (not clamped: the config is what runs) before anything is written."""
    with pytest.raises(ConfigError, match="more than the 3,000 samples") as caught:
        train.train(slice_shards.directory, tmp_path / "run", replace(SMALL, batch_size=10**7))
    assert caught.value.param == "batch_size"
    assert not (tmp_path / "run" / "run.json").exists()
    args = ["--data", str(slice_shards.directory), "--run-dir", str(tmp_path / "cli")]
    result = runner.invoke(app, ["train", *args, "--batch-size", "10000000"])
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--batch-size" in lines[0] and "3,000 samples" in lines[0]
    assert "memory" not in lines[0]


def test_cleanup_removes_only_the_temporaries_of_its_own_files(
    slice_shards: Manifest, tmp_path: Path
) -> None:
    """A train removes what killed trains left (run.json, metrics, checkpoints); an
    evaluate's half-written report beside it belongs to the evaluate, and stays."""
    run_dir = tmp_path / "run"
    train.train(slice_shards.directory, run_dir, SMALL)
    stale = [run_dir / ".metrics.jsonl.999.tmp", run_dir / "checkpoints" / ".checkpoint-x.9.tmp"]
    theirs = [run_dir / ".report.json.999.tmp", run_dir / ".notes.txt.1.tmp"]
    for path in stale + theirs:
        path.write_bytes(b"half")
    train.train(slice_shards.directory, run_dir, SMALL, resume=True)
    assert [p.exists() for p in stale + theirs] == [False, False, True, True]


def test_an_empty_train_split_is_named(slice_shards: Manifest, tmp_path: Path) -> None:
    data = tmp_path / "shards"
    shutil.copytree(slice_shards.directory, data)
    doc = json.loads((data / MANIFEST).read_text())
    for shard in doc["splits"]["train"]["shards"]:
        (data / shard["file"]).unlink()
    doc["splits"]["train"].update(samples=0, label_histogram=[0] * 10, shards=[])
    doc["identity"] = identity_of(doc)  # a manifest consistent in itself
    (data / MANIFEST).write_text(json.dumps(doc))
    with pytest.raises(ShardSetError, match="the train split is empty"):
        train.train(data, tmp_path / "run", SMALL)
    assert not (tmp_path / "run" / "run.json").exists()
