"""Data-parallel training over MPI: the split of a batch, detection, and real 2-rank jobs.

The MPI tests start real `mpiexec -n 2` jobs (the `mpi` extra, part of `dev`: mpi4py and
MPICH's wheel) on the real-MNIST slice; kills synchronise on files the job writes, never on
time.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline import communicator
from pipeline.config import TrainConfig
from pipeline.data import Manifest, prepare, sources
from pipeline.errors import ConfigError
from pipeline.runs.rundir import RunDir
from pipeline.training import checkpoint
from pipeline.training import trainer as train
from pipeline.training.step import check_batch
from tests.conftest import random_split, write_idx_dir

BIN = Path(sys.executable).parent
MPIEXEC = shutil.which("mpiexec", path=str(BIN))
ARGS = ["--hidden", "32", "--batch-size", "64", "--lr", "5", "--shuffle"]
CONFIG = TrainConfig(hidden=(32,), batch_size=64, lr=5.0, shuffle=True, epochs=2)


@pytest.fixture
def mpiexec() -> str:
    if MPIEXEC is None:
        pytest.fail(f"no mpiexec in {BIN}: pip install -e '.[dev]' (it includes the mpi extra)")
    return MPIEXEC


def job(mpiexec: str, ranks: int, *args: str) -> list[str]:
    return [mpiexec, "-n", str(ranks), str(BIN / "pipeline"), *args]


def run_job(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run(
        cmd,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def params(run_dir: Path) -> list[np.ndarray]:
    newest = RunDir(run_dir).newest_checkpoint()
    assert newest is not None
    ckpt = checkpoint.load(newest)
    return ckpt.network.weights + ckpt.network.biases


def max_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x.astype(np.float64) - y).max()) for x, y in zip(a, b, strict=True))


# --- the split, detection, the gradient sum (no MPI needed) ---------------------------------


@pytest.mark.parametrize(("rows", "size"), [(64, 2), (65, 2), (1024, 8), (3, 4), (100, 7)])
def test_shares_cover_the_batch_in_order(rows: int, size: int) -> None:
    parts = [communicator.rows_of_rank(rows, r, size) for r in range(size)]
    assert parts[0].start == 0 and parts[-1].stop == rows
    assert all(a.stop == b.start for a, b in itertools.pairwise(parts))
    lengths = [p.stop - p.start for p in parts]
    assert max(lengths) - min(lengths) <= 1


def test_launcher_detection() -> None:
    assert communicator.launched_by_mpi({"PMI_SIZE": "2", "PMI_RANK": "1"})
    assert communicator.launched_by_mpi({"OMPI_COMM_WORLD_SIZE": "4"})
    assert communicator.launched_by_mpi({"PMIX_RANK": "0"})
    assert not communicator.launched_by_mpi({"PMI_SIZE": "1"})
    assert not communicator.launched_by_mpi({"SLURM_NTASKS": "4"})  # a batch script's shell
    assert not communicator.launched_by_mpi({})


def test_off_and_auto_without_launcher_stay_one_process_without_mpi4py() -> None:
    code = (
        "import sys; from pipeline import communicator as d\n"
        "assert d.connect('off') is d.LOCAL and d.connect('auto') is d.LOCAL\n"
        "assert 'mpi4py' not in sys.modules\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)
    with pytest.raises(ConfigError, match="auto, mpi or off"):
        communicator.connect("yes")


def test_asking_for_mpi_without_the_extra_is_one_line_naming_it(
    slice_shards: Manifest, tmp_path: Path
) -> None:
    code = (  # mpi4py made unimportable, as in an install without the extra
        "import sys; sys.modules['mpi4py'] = None\n"
        "from pipeline.cli import app; sys.argv[0] = 'pipeline'; app()\n"
    )
    cmd = [sys.executable, "-c", code, "train", "--data", str(slice_shards.directory)]
    cmd += ["--run-dir", str(tmp_path / "run"), "--distributed", "mpi", *ARGS]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: --distributed mpi")
    assert "mnist-pipeline[mpi]" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_gradient_sum_scales_by_the_share_and_carries_the_loss() -> None:
    grads = [np.full((3, 2), 4.0), np.full(2, 8.0)]
    reducer = communicator.GradientSum([(3, 2), (2,)], np.dtype("float64"))
    summed, loss = reducer(communicator.LOCAL, grads, 5.0, 0.25)
    assert np.array_equal(summed[0], np.full((3, 2), 1.0)) and np.array_equal(summed[1], [2, 2])
    assert loss == 5.0 and not communicator.stop_agreed()


def test_the_original_recipe_is_refused_under_mpi() -> None:
    class Two(communicator.Local):
        rank, size = 0, 2

    with pytest.raises(ConfigError, match="batch_size 3: too small to split among 2 ranks"):
        check_batch(TrainConfig().batch_size, Two())
    check_batch(64, Two())
    check_batch(3, communicator.LOCAL)


# --- real 2-rank jobs -----------------------------------------------------------------------


def test_two_ranks_train_like_one_process_and_write_once(
    mpiexec: str, slice_shards: Manifest, tmp_path: Path
) -> None:
    one = tmp_path / "one"
    train.train(slice_shards.directory, one, CONFIG)
    two = tmp_path / "two"
    data = ["--data", str(slice_shards.directory)]
    proc = run_job(job(mpiexec, 2, "train", *data, "--run-dir", str(two), "--epochs", "2", *ARGS))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("trained 2 epochs") == 1  # rank 0 alone reports
    assert max_diff(params(one), params(two)) < 1e-5  # float32; same samples, other sum order
    assert sorted(p.name for p in two.rglob("*")) == sorted(p.name for p in one.rglob("*"))
    history = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    runs = RunDir(one).read_run_file(), RunDir(two).read_run_file()
    assert runs[0] is not None and runs[1] is not None
    assert runs[0].config == runs[1].config and runs[0].data_identity == runs[1].data_identity
    assert [r["epoch"] for r in history] == [1, 2]
    assert history[-1]["test_accuracy"] > 0.3  # chance: 0.1

    # evaluation split among the ranks sums to the one-process confusion matrix
    proc = run_job(job(mpiexec, 2, "evaluate", "--run-dir", str(two)))
    assert proc.returncode == 0, proc.stderr
    split_doc = json.loads((two / "report.json").read_text())
    proc = run_job([str(BIN / "pipeline"), "evaluate", "--run-dir", str(two)])
    assert proc.returncode == 0, proc.stderr
    assert (
        json.loads((two / "report.json").read_text())["confusion_matrix"]
        == (split_doc["confusion_matrix"])
    )


def test_batch_of_three_is_refused_by_every_rank(
    mpiexec: str, slice_shards: Manifest, tmp_path: Path
) -> None:
    cmd = job(mpiexec, 2, "train", "--data", str(slice_shards.directory))
    proc = run_job([*cmd, "--run-dir", str(tmp_path / "run")])
    assert proc.returncode != 0
    assert "error: --batch-size 3: too small to split among 2 ranks" in proc.stderr
    assert not (tmp_path / "run").exists()


def rank_pids(root: int) -> dict[int, int]:
    """MPI rank -> pid among the descendants of `root` (mpiexec), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    ranks, todo = {}, [root]
    while todo:
        pid = todo.pop()
        todo += children.get(pid, [])
        try:
            env = dict(
                v.split("=", 1)
                for v in Path(f"/proc/{pid}/environ").read_text().split("\0")
                if "=" in v
            )
        except OSError:
            continue
        if "PMI_RANK" in env and "pipeline" in Path(f"/proc/{pid}/cmdline").read_text():
            ranks[int(env["PMI_RANK"])] = pid
    return ranks


def start_until_checkpoint(cmd: list[str], ckpt_dir: Path) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        while not RunDir(ckpt_dir.parent).all_checkpoints():  # the first one: mid-epoch
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.02)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def assert_run_whole(run_dir: Path) -> None:
    """Every file of the run is complete: checkpoints load, metrics parse, no tmp survives."""
    for path in RunDir(run_dir).all_checkpoints():
        checkpoint.load(path)
    metrics = run_dir / "metrics.jsonl"  # written at the first epoch's end
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        json.loads(line)
    json.loads((run_dir / "run.json").read_text())


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


FAST = ["--preset", "fast", "--hidden", "64"]  # dropout, momentum, a cosine schedule


@pytest.mark.parametrize(
    ("how", "resume_ranks", "recipe"),
    [("kill-rank-1", 2, ARGS), ("sigterm-job", 1, ARGS), ("kill-rank-1", 2, FAST)],
    ids=["kill-original-resume-2", "sigterm-original-resume-1", "kill-fast-resume-2"],
)
def test_a_lost_rank_stops_the_job_and_resume_continues_with_any_rank_count(
    mpiexec: str,
    slice_shards: Manifest,
    tmp_path: Path,
    how: str,
    resume_ranks: int,
    recipe: list[str],
) -> None:
    data = ["--data", str(slice_shards.directory), *recipe, "--epochs", "4"]
    reference = tmp_path / "reference"
    done = run_job(job(mpiexec, 2, "train", *data, "--run-dir", str(reference)))
    assert done.returncode == 0, done.stderr

    run_dir = tmp_path / "run"
    cmd = job(mpiexec, 2, "train", *data, "--run-dir", str(run_dir), "--checkpoint-every", "5")
    for proc in start_until_checkpoint(cmd, run_dir / "checkpoints"):
        ranks = rank_pids(proc.pid)
        assert set(ranks) == {0, 1}
        if how == "kill-rank-1":
            os.kill(ranks[1], signal.SIGKILL)
        else:
            proc.send_signal(signal.SIGTERM)  # mpiexec forwards it to every rank
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode != 0, stderr
        # mpiexec may return while a rank it killed is still being torn down (seen at load 4):
        # a rank that outlives the job is one still there long after, not in the same instant
        deadline = time.monotonic() + 60
        while not all(gone(p) for p in ranks.values()) and time.monotonic() < deadline:
            time.sleep(0.1)
        alive = {r: Path(f"/proc/{p}/stat").read_text() for r, p in ranks.items() if not gone(p)}
        assert not alive, f"a rank outlived the job by 60 s: {alive} {stderr}"
        if how == "sigterm-job":
            assert "interrupted" in stderr
    newest = RunDir(run_dir).newest_checkpoint()
    assert newest is not None and newest.name != "checkpoint-e0004-s0000000.npz"  # mid-run
    assert_run_whole(run_dir)

    if resume_ranks == 1:
        cmd = [str(BIN / "pipeline"), "train", *data]
    else:
        cmd = job(mpiexec, resume_ranks, "train", *data)
    resumed = run_job([*cmd, "--run-dir", str(run_dir), "--resume", "--checkpoint-every", "5"])
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {newest}" in resumed.stdout and "trained 4 epochs" in resumed.stdout
    assert_run_whole(run_dir)
    assert not list(run_dir.rglob("*.tmp*"))
    if resume_ranks == 2:  # the same world: bit-identical to the run never interrupted
        for a, b in zip(params(reference), params(run_dir), strict=True):
            assert a.dtype == b.dtype and np.array_equal(a, b)
    else:  # another world size: the same samples, sums in another order
        assert max_diff(params(reference), params(run_dir)) < 1e-5


def test_ranks_that_see_different_runs_refuse_to_start(
    mpiexec: str, slice_shards: Manifest, tmp_path: Path
) -> None:
    train.train(slice_shards.directory, tmp_path / "a", CONFIG)
    # b: a's run, but its newest checkpoint holds other weights under the same name and config
    # (as a stale copy of the run directory on another node would)
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    newest = RunDir(tmp_path / "b").newest_checkpoint()
    assert newest is not None
    ckpt = checkpoint.load(newest)
    ckpt.network.weights[0] += np.float32(1e-3)
    checkpoint.save(newest, ckpt.network, ckpt.meta)
    # MPMD: rank 0 resumes run a, rank 1 is pointed at run b
    data = ["--data", str(slice_shards.directory), *ARGS, "--epochs", "3", "--resume"]
    cmd = [mpiexec, "-n", "1", str(BIN / "pipeline"), "train", *data, "--run-dir"]
    proc = run_job([*cmd, str(tmp_path / "a"), ":", *cmd[1:], str(tmp_path / "b")])
    assert proc.returncode != 0
    assert "rank 1 would start from" in proc.stderr and "shared file system" in proc.stderr
    assert [p.name for p in RunDir(tmp_path / "a").all_checkpoints()] == [
        "checkpoint-e0001-s0000000.npz",
        "checkpoint-e0002-s0000000.npz",
    ]  # nothing trained, nothing written


def test_run_under_mpi_prepares_once_trains_and_reports(
    mpiexec: str, mnist_slice_idx: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    args = ["run", "--run-dir", str(run_dir), "--source", f"idx:{mnist_slice_idx}"]
    proc = run_job(job(mpiexec, 2, *args, *ARGS, "--epochs", "1"))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("accuracy") >= 1 and "rank" not in proc.stderr
    doc = json.loads((run_dir / "report.json").read_text())
    assert doc["samples"] == 1000  # every test image, counted once
    assert (run_dir / "shards" / "manifest.json").exists()


def test_a_modern_recipe_with_dropout_and_momentum_trains_like_one_process(
    mpiexec: str, slice_shards: Manifest, tmp_path: Path
) -> None:
    args = ["--data", str(slice_shards.directory), *FAST, "--epochs", "2"]
    args += ["--checkpoint-every", "10"]
    one, two = tmp_path / "one", tmp_path / "two"
    proc = run_job([str(BIN / "pipeline"), "train", *args, "--run-dir", str(one)])
    assert proc.returncode == 0, proc.stderr
    proc = run_job(job(mpiexec, 2, "train", *args, "--run-dir", str(two)))
    assert proc.returncode == 0, proc.stderr
    # the same dropout masks, momentum and schedule: only the order of sums differs (float32)
    assert max_diff(params(one), params(two)) < 1e-4
    metas = [checkpoint.load(RunDir(r).all_checkpoints()[-1]).meta for r in (one, two)]
    assert metas[0].dropout_counter == metas[1].dropout_counter > 0
    assert metas[0].optimizer == metas[1].optimizer
    accuracy = [json.loads((r / "metrics.jsonl").read_text().splitlines()[-1]) for r in (one, two)]
    assert abs(accuracy[0]["test_accuracy"] - accuracy[1]["test_accuracy"]) <= 0.005
    assert accuracy[1]["test_accuracy"] > 0.8


@pytest.fixture(scope="module")
def other_shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another shard set (other images, so another identity) of the same shape and classes."""
    rng = np.random.default_rng(3)
    raw_dir = write_idx_dir(
        tmp_path_factory.mktemp("other-raw"), random_split(rng, 300), random_split(rng, 100)
    )
    out = tmp_path_factory.mktemp("other-shards")
    raw = sources.load(f"idx:{raw_dir}", classes=[str(d) for d in range(10)])
    return prepare.prepare(out, raw, shard_size=1000).manifest.directory


@pytest.mark.parametrize(
    ("command", "rank_1", "code", "says"),
    [
        ("train", ["--lr", "1"], 2, "--lr 5.0: rank 1 has 1.0"),
        ("train", ["--epochs", "3"], 2, "--epochs 2: rank 1 has 3"),  # it waited forever
        ("train", ["--data", "OTHER"], 1, "--data shard set "),
        ("run", ["--dropout", "0.5"], 2, "--dropout 0.0: rank 1 has 0.5"),
        ("evaluate", ["--split", "train"], 1, "--split test: rank 1 has train"),
    ],
    ids=["train-lr", "train-epochs", "train-data", "run-recipe", "evaluate-split"],
)
def test_ranks_given_different_arguments_refuse_together_in_one_line(
    mpiexec: str,
    slice_shards: Manifest,
    other_shards: Path,
    tmp_path: Path,
    command: str,
    rank_1: list[str],
    code: int,
    says: str,
) -> None:
    """MPMD: rank 1 gets one argument (or a shard set) rank 0 does not. Every rank refuses
    before the first step, together and at once (no abort, no rank left waiting), rank 0
    naming what differs in one line; nothing is trained or written."""
    run_dir = tmp_path / "run"
    args = [command, "--run-dir", str(run_dir), "--data", str(slice_shards.directory)]
    if command == "evaluate":
        train.train(slice_shards.directory, run_dir, CONFIG)
    else:
        args += [*ARGS, "--epochs", "2"]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    theirs = [str(other_shards) if a == "OTHER" else a for a in rank_1]
    cmd = [mpiexec, "-n", "1", str(BIN / "pipeline"), *args, ":"]
    cmd += ["-n", "1", str(BIN / "pipeline"), *args, *theirs]
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "COLUMNS": "200"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, check=False)
    assert proc.returncode == code, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {says}"), proc.stderr
    assert lines[0].endswith("every rank must be started with the same arguments and data")
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written
