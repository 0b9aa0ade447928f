"""MLflow tracking against a real MLflow: a sqlite:/// store in a temp dir and a real
`mlflow server` on loopback, read back with MlflowClient. The tracker hears real events (fed
directly, then from real `pipeline train` / `run` processes, killed and resumed)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import TrainConfig
from pipeline.data import Manifest
from pipeline.events import EPOCH_ENDED, EVALUATED, EXPORTED, RUN_STARTED, Event
from pipeline.runs.rundir import TRACKING_FILE
from tests.test_distributed import MPIEXEC, job, run_job

MlflowClient = pytest.importorskip("mlflow.tracking").MlflowClient
# MLflow's sqlite store calls a loader SQLAlchemy 2.1 deprecates: theirs, not ours
pytestmark = pytest.mark.filterwarnings("ignore::sqlalchemy.exc.SADeprecationWarning")
TIMING = ("seconds", "seconds_total", "samples_per_s")  # differ between any two runs


@pytest.fixture(scope="module")
def migrated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty sqlite store with MLflow's schema, made once (its migrations take seconds)."""
    db = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{db}").search_experiments(max_results=1)
    return db


@pytest.fixture
def store(migrated: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh store of this test's own (MLflow keeps artifacts in ./mlruns: the cwd is tmp)."""
    db = tmp_path / "mlflow.db"
    shutil.copy(migrated, db)
    monkeypatch.chdir(tmp_path)
    return f"sqlite:///{db}"


def _tracked_run(run_dir: Path, uri: str) -> str:
    return str(json.loads((run_dir / TRACKING_FILE).read_text())["mlflow"][uri])


def _history(client: Any, run_id: str) -> dict[str, list[tuple[int, float]]]:
    """Every metric's (step, value) entries in logging order; timing metrics by step only."""
    found = {}
    for key in client.get_run(run_id).data.metrics:
        entries = client.get_metric_history(run_id, key)
        found[key] = [(m.step, 0.0 if key in TIMING else m.value) for m in entries]
    return found


def _started(run_dir: Path, config: TrainConfig, epoch: int = 0, **more: Any) -> Event:
    fields: dict[str, Any] = {
        "path": str(run_dir),
        "run": None,
        "config": config.to_json(),
        "preset": config.preset,
        "identity": "ab" * 32,
        "dataset": "digits",
        "world_size": 1,
        "resumed_from": None,
        "epoch": epoch,
        "history": [],
    }
    return Event(RUN_STARTED, {**fields, **more})


def _epoch(epoch: int) -> Event:
    metrics = {"train_loss": 1.0 / epoch, "val_accuracy": 0.5 + epoch / 100, "lr": 0.1}
    return Event(EPOCH_ENDED, {"epoch": epoch, "metrics": {**metrics, "seconds": 1.5}})


def _warnings() -> tuple[list[str], Any]:
    seen: list[str] = []
    return seen, seen.append


def test_events_become_params_tags_metrics_and_artifacts(store: str, tmp_path: Path) -> None:
    from pipeline.tracking.mlflow import MlflowTracker

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    files = {n: run_dir / n for n in ("report.md", "report.json", "confusion.png", "model.onnx")}
    for name, path in files.items():
        path.write_bytes(name.encode() * 3)
    config = TrainConfig(hidden=(30, 20), epochs=3, lr=0.5, preset="fast")
    seen, warn = _warnings()
    tracker = MlflowTracker(store, experiment="exp", warn=warn)
    tracker(_started(run_dir, config, run="2026-12-04-abcdef012345", world_size=2))
    for epoch in (1, 2, 3):
        tracker(_epoch(epoch))
    per_class = {"T-shirt/top": {"precision": 0.75, "recall": 0.5, "f1": 0.6}}
    report = [str(files[n]) for n in ("report.md", "report.json", "confusion.png")]
    tracker(Event(EVALUATED, {"accuracy": 0.9, "macro_f1": 0.8, "per_class": per_class,
                              "artifacts": [*report, str(run_dir / "curves.png")]}))  # fmt: skip
    tracker(Event(EXPORTED, {"path": str(files["model.onnx"]), "format": "onnx"}))
    tracker.close()

    client = MlflowClient(store)
    run = client.get_run(_tracked_run(run_dir, store))
    assert seen == []
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "exp"
    expected = {
        k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in config.to_json().items()
    }
    assert run.data.params == expected  # every field, the preset's name among them
    tags = run.data.tags
    assert tags["pipeline.data_identity"] == "ab" * 32 and tags["pipeline.dataset"] == "digits"
    assert tags["pipeline.run_id"] == "2026-12-04-abcdef012345"
    assert tags["pipeline.world_size"] == "2" and tags["pipeline.version"] == "0.1.0"
    history = _history(client, run.info.run_id)
    for key in ("train_loss", "val_accuracy", "lr", "seconds"):
        assert [step for step, _ in history[key]] == [1, 2, 3], key  # each epoch once
    assert history["train_loss"] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert history["test/accuracy"] == [(3, 0.9)] and history["test/macro_f1"] == [(3, 0.8)]
    assert history["test/precision/T-shirt/top"] == [(3, 0.75)]
    assert history["test/recall/T-shirt/top"] == [(3, 0.5)]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts == {"config.json", "report.md", "report.json", "confusion.png", "model.onnx"}
    local = Path(client.download_artifacts(run.info.run_id, "config.json", str(tmp_path)))
    assert json.loads(local.read_text()) == config.to_json()


def test_a_resumed_run_continues_its_mlflow_run_and_logs_each_epoch_once(
    store: str, tmp_path: Path
) -> None:
    """A process that sent epochs 1-2, then died with epoch 3 checkpointed but unsent; the
    resume hears the run's history (1-3) and goes on: the history of an uninterrupted run."""
    from pipeline.tracking.mlflow import MlflowTracker

    config = TrainConfig(epochs=4)
    records = [{"epoch": e, **_epoch(e).fields["metrics"]} for e in (1, 2, 3)]
    histories = []
    for name in ("whole", "resumed"):
        run_dir = tmp_path / name
        run_dir.mkdir()
        first = MlflowTracker(store, warn=pytest.fail)
        first(_started(run_dir, config))
        for epoch in (1, 2) if name == "resumed" else (1, 2, 3, 4):
            first(_epoch(epoch))
        first.close("KILLED" if name == "resumed" else "FINISHED")
        if name == "resumed":
            again = MlflowTracker(store, warn=pytest.fail)
            again(_started(run_dir, config, epoch=3, history=records))
            again(_epoch(4))
            again.close()
        run_id = _tracked_run(run_dir, store)
        assert MlflowClient(store).get_run(run_id).info.status == "FINISHED"
        histories.append(_history(MlflowClient(store), run_id))
    assert histories[0] == histories[1]
    assert [s for s, _ in histories[0]["train_loss"]] == [1, 2, 3, 4]
    assert len(MlflowClient(store).search_runs(["1"])) == 2  # one MLflow run per pipeline run


def test_a_deleted_mlflow_run_is_started_anew_and_a_strange_tracking_file_is_a_warning(
    store: str, tmp_path: Path
) -> None:
    from pipeline.tracking.mlflow import MlflowTracker

    run_dir, config = tmp_path / "run", TrainConfig(epochs=2)
    run_dir.mkdir()
    first = MlflowTracker(store, warn=pytest.fail)
    first(_started(run_dir, config))
    first(_epoch(1))
    first.close()
    deleted = _tracked_run(run_dir, store)
    MlflowClient(store).delete_run(deleted)
    again = MlflowTracker(store, warn=pytest.fail)
    again(_started(run_dir, config, epoch=1, history=[{"epoch": 1, **_epoch(1).fields["metrics"]}]))
    again.close()
    renewed = _tracked_run(run_dir, store)
    assert renewed != deleted
    assert [s for s, _ in _history(MlflowClient(store), renewed)["train_loss"]] == [1]

    (run_dir / TRACKING_FILE).unlink()
    (run_dir / TRACKING_FILE).mkdir()  # not a file: named in one warning, nothing raised
    seen, warn = _warnings()
    odd = MlflowTracker(store, warn=warn)
    odd(_started(run_dir, config))
    odd(_epoch(1))
    odd.close()
    assert len(seen) == 1 and f"{TRACKING_FILE}: is a directory" in seen[0], seen


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pipeline(*args: str, cwd: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=cwd,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _train_args(data: Path, run_dir: Path, epochs: int = 3, command: str = "train") -> list[str]:
    args = ["--data", str(data), "--run-dir", str(run_dir), "--hidden", "30", "--lr", "3"]
    return [command, *args, "--batch-size", "100", "--epochs", str(epochs), "--shuffle"]


def test_kill_then_resume_gives_the_metric_history_of_an_uninterrupted_run(
    store: str, tmp_path: Path, slice_shards: Manifest
) -> None:
    """`run` uninterrupted, against `train` killed, `train --resume`, then `evaluate`."""
    data = slice_shards.directory
    whole = _pipeline(
        *_train_args(data, tmp_path / "whole", 4, "run"), cwd=tmp_path, MLFLOW_TRACKING_URI=store
    )
    _, err = whole.communicate()
    assert whole.returncode == 0, err
    killed = tmp_path / "killed"
    proc = _pipeline(*_train_args(data, killed, 4), cwd=tmp_path, MLFLOW_TRACKING_URI=store)
    metrics = killed / "metrics.jsonl"
    while proc.poll() is None and not (
        metrics.is_file() and len(metrics.read_text().splitlines()) >= 2
    ):
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL  # killed, not ended
    resumed = _pipeline(
        *_train_args(data, killed, 4), "--resume", cwd=tmp_path, MLFLOW_TRACKING_URI=store
    )
    _, err = resumed.communicate()
    assert resumed.returncode == 0, err
    assert "warning" not in err
    evaluate = _pipeline("evaluate", "--run-dir", "killed", cwd=tmp_path, MLFLOW_TRACKING_URI=store)
    assert evaluate.communicate()[1] == "" and evaluate.returncode == 0  # into the same run
    client = MlflowClient(store)
    one, two = (_history(client, _tracked_run(tmp_path / n, store)) for n in ("whole", "killed"))
    # a rate over one process's part of an epoch, not kept in the run: an epoch the killed
    # process trained but did not send (the usual case: its queue dies with it) has none
    assert {s for s, _ in two.pop("samples_per_s")} <= {1, 2, 3, 4}
    one.pop("samples_per_s")
    assert one == two
    assert [step for step, _ in one["train_loss"]] == [1, 2, 3, 4]
    report = json.loads((killed / "report.json").read_text())
    assert one["test/accuracy"] == [(4, report["accuracy"])]
    assert len(client.search_runs(["1"])) == 2  # one MLflow run per pipeline run


def test_an_export_is_logged_into_the_runs_mlflow_run(
    store: str, tmp_path: Path, slice_shards: Manifest
) -> None:
    """`pipeline export` on a tracked run adds model.onnx to that run's MLflow run."""
    trained = _pipeline(
        *_train_args(slice_shards.directory, tmp_path / "run", 1), cwd=tmp_path,
        MLFLOW_TRACKING_URI=store,
    )  # fmt: skip
    assert trained.communicate()[1] == "" and trained.returncode == 0
    exported = _pipeline("export", "--model", "run", cwd=tmp_path, MLFLOW_TRACKING_URI=store)
    _, err = exported.communicate()
    assert exported.returncode == 0 and err == "", err
    client = MlflowClient(store)
    (run,) = client.search_runs(["1"])  # the one the training made, not a second
    assert run.info.run_id == _tracked_run(tmp_path / "run", store)
    assert "model.onnx" in [a.path for a in client.list_artifacts(run.info.run_id)]


def test_a_closed_port_is_one_warning_and_training_goes_on(
    tmp_path: Path, slice_shards: Manifest
) -> None:
    uri = f"http://127.0.0.1:{_free_port()}"  # nothing listens there
    proc = _pipeline(
        *_train_args(slice_shards.directory, tmp_path / "run", 2),
        cwd=tmp_path,
        MLFLOW_TRACKING_URI=uri,
    )
    _, err = proc.communicate()
    assert proc.returncode == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: mlflow tracking stopped"), err
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2
    assert not (tmp_path / "run" / TRACKING_FILE).exists()

    proc = _pipeline(
        *_train_args(slice_shards.directory, tmp_path / "required", 2),
        "--mlflow-required",
        cwd=tmp_path,
        MLFLOW_TRACKING_URI=uri,
    )
    _, err = proc.communicate()
    assert proc.returncode == 1
    assert err.startswith("error: ") and err.count("\n") == 1 and uri in err, err
    assert not (tmp_path / "required").exists()  # refused before training started


def test_a_silent_server_is_one_warning_and_training_goes_on(
    tmp_path: Path, slice_shards: Manifest
) -> None:
    """A server that accepts connections (the kernel's backlog) and never answers: the client's
    timeout (1 s here, 10 s by default) and its 2 retries bound the wait, once."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        args = _train_args(slice_shards.directory, tmp_path / "run", 2)
        proc = _pipeline(
            *args, cwd=tmp_path, MLFLOW_TRACKING_URI=uri, MLFLOW_HTTP_REQUEST_TIMEOUT="1"
        )
        _, err = proc.communicate()
    assert proc.returncode == 0, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: mlflow tracking stopped"), err
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 2


def test_without_the_extra_asking_is_one_line_naming_it(
    tmp_path: Path, slice_shards: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [m for m in sys.modules if m == "mlflow" or m.startswith("mlflow.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "mlflow", None)  # `import mlflow` fails, as uninstalled
    args = _train_args(slice_shards.directory, tmp_path / "run", 1)
    asked = CliRunner().invoke(app, [*args, "--mlflow"])
    assert asked.exit_code == 1
    assert asked.stderr == "error: mlflow is not installed: pip install 'mnist-pipeline[mlflow]'\n"
    assert not (tmp_path / "run").exists()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///unused.db")
    implied = CliRunner().invoke(app, args)
    assert implied.exit_code == 0, implied.output
    assert implied.stderr.count("warning: ") == 1 and "mnist-pipeline[mlflow]" in implied.stderr
    declined = CliRunner().invoke(app, [*args, "--run-dir", str(tmp_path / "off"), "--no-mlflow"])
    assert declined.exit_code == 0 and declined.stderr == ""  # off: mlflow is not even imported


def test_under_mpi_rank_0_alone_tracks(
    store: str,
    tmp_path: Path,
    slice_shards: Manifest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`train --run-dir`, `run --runs` and `evaluate` on 2 ranks: ONE MLflow run per pipeline
    run, with its config and every metric once. Followers emit no events; a tracker built on
    rank 1 too would still make `evaluate` report on rank 1 (which has no report)."""
    assert MPIEXEC is not None, "no mpiexec: pip install -e '.[dev]' (it has the mpi extra)"
    recipe = ["--preset", "fast", "--hidden", "30", "--epochs", "2", "--batch-size", "100"]
    data = ["--data", str(slice_shards.directory), "--mlflow", *recipe]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)  # every rank's (mpiexec passes it on)
    for name, args in {
        "mpi-train": ["train", "--run-dir", str(tmp_path / "train")],
        "mpi-runs": ["run", "--runs", str(tmp_path / "runs")],
    }.items():
        proc = run_job(job(MPIEXEC, 2, *args, *data, "--mlflow-experiment", name))
        assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    # evaluate reports to the run's MLflow run (tracking.json) only where a tracker was built
    proc = run_job(job(MPIEXEC, 2, "evaluate", "--run-dir", str(tmp_path / "train"), "--mlflow"))
    assert proc.returncode == 0 and "warning" not in proc.stderr, proc.stderr
    client = MlflowClient(store)
    run_dirs = [tmp_path / "train", *(tmp_path / "runs").glob("20*")]
    for name, run_dir in zip(("mpi-train", "mpi-runs"), run_dirs, strict=True):
        experiment = client.get_experiment_by_name(name)
        (run,) = client.search_runs([experiment.experiment_id])  # one, not one per rank
        assert run.info.run_id == _tracked_run(run_dir, store) and run.info.status == "FINISHED"
        config = json.loads((run_dir / "run.json").read_text())["config"]
        assert run.data.params == {
            k: json.dumps(v) if isinstance(v, list) else str(v) for k, v in config.items()
        }
        assert run.data.tags["pipeline.world_size"] == "2"
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        history = _history(client, run.info.run_id)
        epochs = {k: v for k, v in history.items() if not k.startswith("test/")}
        tested = {k: v for k, v in history.items() if k.startswith("test/")}
        assert len(tested) > 10 and all(len(v) == 1 for v in tested.values())  # once, by rank 0
        assert epochs.pop("samples_per_s") == [(1, 0.0), (2, 0.0)]  # a rate not in the run
        assert epochs == {
            k: [(r["epoch"], 0.0 if k in TIMING else r[k]) for r in records]
            for k in records[0]
            if k != "epoch" and isinstance(records[0][k], float | int)
        }  # every epoch's metrics, each once at step=epoch
        assert [s for s, _ in epochs["train_loss"]] == [1, 2]


@pytest.fixture
def server(migrated: Path, tmp_path: Path) -> Iterator[str]:
    """A real `mlflow server` on a loopback port, on a store of this test's; stopped after."""
    db = tmp_path / "server.db"
    shutil.copy(migrated, db)
    port = _free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
        "--port", str(port), "--workers", "1", "--backend-store-uri", f"sqlite:///{db}",
        "--artifacts-destination", str(tmp_path / "artifacts"),
    ]  # fmt: skip
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "DO_NOT_TRACK": "true"}
    log = (tmp_path / "server.log").open("w")
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=log, start_new_session=True)
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, (tmp_path / "server.log").read_text()
            assert time.monotonic() < deadline, "mlflow server did not answer"
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2):
                    break
            except OSError:
                time.sleep(0.5)
        yield uri
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        log.close()


def test_scheduled_runs_against_a_real_mlflow_server(
    server: str, tmp_path: Path, slice_shards: Manifest
) -> None:
    runs = tmp_path / "runs"
    args = ["run", "--runs", str(runs), "--data", str(slice_shards.directory), "--export", "onnx"]
    recipe = ["--hidden", "30", "--epochs", "2", "--batch-size", "100", "--lr", "3"]
    for _ in range(2):  # the second trigger is "up to date": nothing new is tracked
        proc = _pipeline(
            *args,
            *recipe,
            "--mlflow-experiment",
            "nightly",
            cwd=tmp_path,
            MLFLOW_TRACKING_URI=server,
        )
        _, err = proc.communicate()
        assert proc.returncode == 0, err
    (run_dir,) = [
        p for p in runs.iterdir() if p.name != "latest" and p.is_dir() and not p.is_symlink()
    ]
    client = MlflowClient(server)
    run = client.get_run(_tracked_run(run_dir, server))
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "nightly"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    assert run.data.tags["pipeline.run_id"] == run_dir.name
    config = json.loads((run_dir / "run.json").read_text())["config"]
    assert run.data.params["hidden"] == "[30]" and run.data.params["epochs"] == "2"
    assert set(run.data.params) == set(config)
    report = json.loads((run_dir / "report.json").read_text())
    history = _history(client, run.info.run_id)
    assert history["test/accuracy"] == [(2, report["accuracy"])]
    assert [s for s, _ in history["train_loss"]] == [1, 2]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"report.md", "report.json", "confusion.png", "curves.png", "config.json"} <= artifacts
    assert "model.onnx" in artifacts  # the EXPORTED event's file
    local = client.download_artifacts(run.info.run_id, "config.json", str(tmp_path))
    assert json.loads(Path(local).read_text()) == config  # the run's config, as run.json has it
