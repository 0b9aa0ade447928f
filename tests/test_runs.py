"""The scheduled mode: `pipeline run --runs DIR`, `pipeline runs DIR`, on a slice of real MNIST.

Triggers run through typer's CliRunner (in-process) or as real processes where the test is about
processes: the lock between two triggers, a trigger killed half-way.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import TrainConfig
from pipeline.data import open_set, prepare, sources
from pipeline.runs import lock as run_lock
from pipeline.runs import store as runs
from tests.conftest import REPO, write_idx_dir

# a recipe that learns the slice in one short epoch (~80% test accuracy)
FAST = ["--epochs", "1", "--hidden", "30", "--lr", "3", "--batch-size", "10"]
runner = CliRunner()


def tree(directory: Path) -> dict[str, tuple[int, bytes | str]]:
    """Everything below `directory` and itself: path -> (mtime_ns, bytes, link target or "/")."""
    found: dict[str, tuple[int, bytes | str]] = {".": (directory.stat().st_mtime_ns, "/")}
    for path in sorted(directory.rglob("*")):
        stat, name = path.lstat(), str(path.relative_to(directory))
        if path.is_symlink():
            found[name] = (stat.st_mtime_ns, os.readlink(path))
        elif path.is_dir():
            found[name] = (stat.st_mtime_ns, "/")
        else:
            found[name] = (stat.st_mtime_ns, path.read_bytes())
    return found


def trigger(runs_dir: Path, data: Path, *extra: str) -> tuple[int, str]:
    args = ["run", "--runs", str(runs_dir), "--data", str(data), *FAST, *extra]
    result = runner.invoke(app, args)
    return result.exit_code, result.output


@pytest.fixture
def other_set(tmp_path: Path, real_mnist: sources.RawDataset) -> Path:
    """Another slice of the real MNIST (the next 3,000 train images): another content identity."""
    train, test = real_mnist.splits["train"], real_mnist.splits["test"]
    raw_dir = write_idx_dir(
        tmp_path / "raw-other",
        (train.images[3000:6000].reshape(-1, 28, 28), train.labels[3000:6000]),
        (test.images[:1000].reshape(-1, 28, 28), test.labels[:1000]),
    )
    out = tmp_path / "other-set"
    prepare.prepare(out, sources.load(f"idx:{raw_dir}", name="mnist-slice"), shard_size=1000)
    return out


def test_run_id_is_data_and_recipe(slice_set: Path, other_set: Path) -> None:
    ids = {open_set(d).identity for d in (slice_set, other_set)}
    assert len(ids) == 2
    base = TrainConfig()
    a, b = sorted(ids)
    assert runs.run_id(a, base) == runs.run_id(a, TrainConfig())
    assert runs.run_id(a, base) != runs.run_id(b, base)
    assert runs.run_id(a, base) != runs.run_id(a, TrainConfig(epochs=11))
    # how often to checkpoint does not change the weights: the same run
    assert runs.run_id(a, base) == runs.run_id(a, TrainConfig(checkpoint_every=100))


def test_second_trigger_is_up_to_date_and_touches_nothing(tmp_path: Path, slice_set: Path) -> None:
    runs_dir = tmp_path / "runs"
    code, output = trigger(runs_dir, slice_set, "--min-accuracy", "0.5")
    assert code == 0, output
    [run] = [p for p in runs_dir.iterdir() if runs.RUN_NAME.match(p.name)]
    assert (run / "report.json").is_file() and (run / runs.OUTCOME).is_file()
    assert os.readlink(runs_dir / runs.LATEST) == run.name
    before = tree(runs_dir)
    code, output = trigger(runs_dir, slice_set, "--min-accuracy", "0.5")
    assert code == 0, output
    assert "up to date" in output
    assert tree(runs_dir) == before


def test_the_outcome_counts_training_and_evaluation(tmp_path: Path, slice_set: Path) -> None:
    """outcome.json's seconds: the training of every try (the history's total) plus this
    trigger's evaluation, which draws two PNGs with matplotlib: never under 50 ms (it was
    left out, and the difference was the microseconds between evaluate and the outcome)."""
    code, output = trigger(tmp_path / "runs", slice_set)
    assert code == 0, output
    [run] = [p for p in (tmp_path / "runs").iterdir() if runs.RUN_NAME.match(p.name)]
    outcome = json.loads((run / runs.OUTCOME).read_text())
    trained = json.loads((run / "report.json").read_text())["history"][-1]["seconds_total"]
    assert outcome["seconds"] - trained > 0.05, (outcome["seconds"], trained)


def test_new_data_or_recipe_makes_a_new_run_and_leaves_the_old_one(
    tmp_path: Path, slice_set: Path, other_set: Path
) -> None:
    runs_dir = tmp_path / "runs"
    assert trigger(runs_dir, slice_set)[0] == 0
    first = tree(runs_dir)
    code, output = trigger(runs_dir, other_set)
    assert code == 0, output
    code, output = trigger(runs_dir, other_set, "--seed", "1")
    assert code == 0, output
    after = tree(runs_dir)
    for path, content in first.items():
        if path not in (".", runs.LATEST):  # the directory gains the new runs
            assert after[path] == content, f"{path} changed"
    listed = runs.listing(runs_dir)
    assert len(listed) == 3 and {r.status for r in listed} == {"finished"}
    assert len({r.data_identity for r in listed}) == 2
    assert [r.latest for r in listed] == [False, False, True]


def test_failed_gate_exits_3_and_keeps_latest(tmp_path: Path, slice_set: Path) -> None:
    runs_dir = tmp_path / "runs"
    assert trigger(runs_dir, slice_set, "--min-accuracy", "0.5")[0] == 0
    promoted = os.readlink(runs_dir / runs.LATEST)
    code, output = trigger(runs_dir, slice_set, "--seed", "2", "--min-accuracy", "0.999")
    assert code == 3, output
    assert "quality gate failed" in output and "latest unchanged" in output
    assert os.readlink(runs_dir / runs.LATEST) == promoted
    failed = [r for r in runs.listing(runs_dir) if r.passed is False]
    assert len(failed) == 1 and failed[0].status == "finished" and not failed[0].latest
    # the failed run is finished: the next trigger of it is up to date, not a retraining
    code, output = trigger(runs_dir, slice_set, "--seed", "2", "--min-accuracy", "0.999")
    assert code == 0 and "up to date" in output


def test_keep_prunes_oldest_finished_never_latest_nor_held(tmp_path: Path, slice_set: Path) -> None:
    runs_dir = tmp_path / "runs"
    assert trigger(runs_dir, slice_set, "--seed", "0")[0] == 0  # promoted, then kept as latest
    assert trigger(runs_dir, slice_set, "--seed", "1", "--min-accuracy", "0.999")[0] == 3
    assert trigger(runs_dir, slice_set, "--seed", "2", "--min-accuracy", "0.999")[0] == 3
    assert trigger(runs_dir, slice_set, "--seed", "3", "--min-accuracy", "0.999")[0] == 3
    oldest, second, third, newest = runs._ours(runs_dir)
    assert os.readlink(runs_dir / runs.LATEST) == oldest.name
    foreign = runs_dir / "2020-01-01-not-a-run"
    foreign.mkdir()
    with run_lock.trigger_lock(second):  # a trigger working on it (same flock as another process's)
        assert runs.prune(runs_dir, keep=1) == [third]
    assert runs.prune(runs_dir, keep=1) == [second]
    assert [p.name for p in runs._ours(runs_dir)] == [oldest.name, newest.name]
    assert foreign.is_dir()


def test_runs_lists_as_table_and_json(tmp_path: Path, slice_set: Path) -> None:
    runs_dir = tmp_path / "runs"
    assert trigger(runs_dir, slice_set, "--min-accuracy", "0.5")[0] == 0
    result = runner.invoke(app, ["runs", str(runs_dir), "--json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert row["status"] == "finished" and row["latest"] and row["passed"]
    assert row["dataset"] == "mnist-slice" and row["recipe"]["hidden"] == [30]
    assert 0.5 <= row["accuracy"] <= 1 and row["min_accuracy"] == 0.5
    assert row["data_identity"] == open_set(slice_set).identity
    table = runner.invoke(app, ["runs", str(runs_dir)])
    assert table.exit_code == 0
    line = next(line for line in table.output.splitlines() if row["id"] in line)
    for cell in ("mnist-slice", "h30 e1 b10 lr3.0 s0", "pass 0.5", "finished", "latest"):
        assert cell in line
    missing = runner.invoke(app, ["runs", str(tmp_path / "nowhere")])
    assert missing.exit_code == 1 and missing.output.startswith("error: ")


def test_json_logs_one_object_per_line(tmp_path: Path, slice_set: Path) -> None:
    env = {"PIPELINE_LOG_FORMAT": "json", "PIPELINE_EPOCHS": "1", "PIPELINE_HIDDEN": "30"}
    args = ["run", "--runs", str(tmp_path / "runs"), "--data", str(slice_set)]
    result = runner.invoke(app, [*args, "--lr", "3", "--batch-size", "10"], env=env)
    assert result.exit_code == 0, result.output
    events = [json.loads(line) for line in result.output.splitlines()]
    assert [e["event"] for e in events] == [
        "data", "claimed", "epoch", "trained", "evaluated", "promoted", "report"
    ]  # fmt: skip
    assert all({"event", "time"} <= set(e) for e in events)
    epoch = events[2]
    assert epoch["epoch"] == 1 and 0 < epoch["metrics"]["test_accuracy"] <= 1
    run = events[1]["run"]
    assert all(e["run"] == run for e in events[1:])
    assert Path(events[4]["report"]).is_file()
    bad = runner.invoke(app, [*args, "--lr", "-1"], env=env)
    assert bad.exit_code == 2  # a value out of range is bad usage
    *_, error = [json.loads(line) for line in bad.output.splitlines()]
    assert error["event"] == "error" and "--lr -1.0" in error["error"]


def test_env_vars_set_options_and_show_in_help() -> None:
    result = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "250"})
    for var in ("PIPELINE_RUNS", "PIPELINE_EPOCHS", "PIPELINE_MIN_ACCURACY", "PIPELINE_KEEP"):
        assert var in result.output
    for command in ("prepare", "verify", "train", "evaluate", "run", "runs", "show"):
        shown = runner.invoke(app, [command, "--help"])  # every help renders (rich markup)
        assert shown.exit_code == 0 and "Usage" in shown.output, (command, shown.output)
    both = runner.invoke(app, ["run", "--runs", "a", "--run-dir", "b"])
    assert both.exit_code == 2 and "either --run-dir" in both.output


# --- real processes -----------------------------------------------------------------------


def _pipeline(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=REPO,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen[str], contains: str = "") -> None:
    """Until `path` exists (holding `contains`): the processes synchronise on files, not time."""
    while not (path.exists() and contains in path.read_text()):
        assert proc.poll() is None, proc.communicate()
        os.sched_yield()


def test_overlapping_trigger_exits_75_naming_the_holder(tmp_path: Path, slice_set: Path) -> None:
    runs_dir = tmp_path / "runs"
    args = ["run", "--runs", str(runs_dir), "--data", str(slice_set), *FAST]
    first = _pipeline(*args)
    config = TrainConfig(hidden=(30,), epochs=1, lr=3.0, batch_size=10)
    rid = runs.run_id(open_set(slice_set).identity, config)
    try:
        while not (runs_dir.is_dir() and (run := runs.find(runs_dir, rid))):
            assert first.poll() is None, first.communicate()
            os.sched_yield()
        lock = run / run_lock.TRIGGER_LOCK
        _wait_for(lock, first, contains=f'"pid": {first.pid}')
        first.send_signal(signal.SIGSTOP)  # it holds the run while the second trigger comes
        second = subprocess.run(
            [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=REPO
        )
        assert second.returncode == 75, second.stderr
        [line] = second.stderr.splitlines()
        assert f"pid {first.pid}" in line and "another trigger" in line
        assert second.stdout.startswith("data: ") and len(second.stdout.splitlines()) == 1
    finally:
        first.send_signal(signal.SIGCONT)
    _, err = first.communicate()
    assert first.returncode == 0, err
    assert [r.status for r in runs.listing(runs_dir)] == ["finished"]


def test_a_killed_trigger_is_resumed_by_the_next(tmp_path: Path, slice_set: Path) -> None:
    runs_dir = tmp_path / "runs"
    args = ["run", "--runs", str(runs_dir), "--data", str(slice_set), *FAST]
    args[args.index("--epochs") + 1] = "5"  # 1,500 steps: a checkpoint long before the end
    victim = _pipeline(*args, "--checkpoint-every", "50")
    config = TrainConfig(hidden=(30,), epochs=5, lr=3.0, batch_size=10)
    rid = runs.run_id(open_set(slice_set).identity, config)
    while not (runs_dir.is_dir() and (run := runs.find(runs_dir, rid))):
        assert victim.poll() is None, victim.communicate()
        os.sched_yield()
    while not any((run / "checkpoints").glob("checkpoint-e0000-*.npz")):
        assert victim.poll() is None, victim.communicate()
        os.sched_yield()
    victim.send_signal(signal.SIGSTOP)  # frozen mid-run, then killed: no later file appears
    assert not (run / runs.OUTCOME).exists()
    victim.kill()
    victim.communicate()
    assert [r.status for r in runs.listing(runs_dir)] == ["unfinished"]
    again = subprocess.run(
        [sys.executable, "-m", "pipeline", *args], capture_output=True, text=True, cwd=REPO
    )
    assert again.returncode == 0, again.stderr
    assert "resumed from" in again.stdout
    [row] = runs.listing(runs_dir)
    assert row.status == "finished" and row.latest
    # bit-identical to a trigger never interrupted
    assert runner.invoke(app, [*args[:2], str(tmp_path / "calm"), *args[3:]]).exit_code == 0
    [calm] = runs._ours(tmp_path / "calm")
    final = "checkpoints/checkpoint-e0005-s0000000.npz"
    with np.load(run / final) as a, np.load(calm / final) as b:
        assert all(np.array_equal(a[k], b[k]) for k in a.files if k != "meta")
