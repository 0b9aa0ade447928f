"""MLflow tracking: a listener on the job's event stream, one MLflow run per pipeline run.

    tracker = MlflowTracker(uri, experiment=None, required=False, warn=print_warning)
    events.add(tracker)                   # hears RUN_STARTED, EPOCH_ENDED, EVALUATED, EXPORTED
    tracker.close("FINISHED")             # flush (bounded in time), end the MLflow run

What is logged: README, "Experiment tracking". The MLflow run's id is kept in
RUN_DIR/tracking.json (per tracking URI): a resumed or re-triggered run continues it, and on
(re)start the tracker backfills the done epochs (RUN_STARTED's `history`) the MLflow run
lacks, so each (metric, step) is logged once. Training never waits on it: a bounded queue to
one worker thread, a bounded HTTP client; the first failure is one warning, after which the
tracker drops what comes (`required`: an unreachable store is a TrackingError, before work).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.errors import TrackingError
from pipeline.events import EPOCH_ENDED, EVALUATED, EXPORTED, RUN_STARTED, Event
from pipeline.fsutil import atomic_write_bytes, read_file
from pipeline.runs.rundir import TRACKING_FILE

EXTRA = "pip install 'mnist-pipeline[mlflow]'"
# unless the user set them: our client's HTTP limits (mlflow's own, 120 s and 7 retries with
# exponential backoff, can hold a request for many minutes); no usage telemetry sent to MLflow
SETTINGS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
            "MLFLOW_DISABLE_TELEMETRY": "true"}  # fmt: skip
QUEUE_EVENTS = 1000  # events waiting for the worker; beyond, the tracker gives up (warning)
FLUSH_SECONDS = 60.0  # how long close() waits for the worker to send what is queued
IDS_BYTES = 1 << 16  # tracking.json: a few run ids
HANDLED = (RUN_STARTED, EPOCH_ENDED, EVALUATED, EXPORTED)
_STOP = Event("stop", {})


def _metric_key(name: str) -> str:
    """MLflow keys take letters, digits and `_-. /`; anything else in a class name is `_`."""
    return re.sub(r"[^\w\-. /]", "_", name)


def git_commit() -> str | None:
    """The commit of the pipeline's source when it runs from a git checkout, else None."""
    source = Path(__file__).resolve().parents[2]
    try:
        done = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and re.fullmatch(r"[0-9a-f]{40}", commit) else None


class MlflowTracker:
    """An `Events` listener; `close` ends it. Build it on rank 0 only (the stream's rule)."""

    def __init__(
        self,
        uri: str | None,
        *,
        experiment: str | None = None,
        required: bool = False,
        warn: Callable[[str], None],
    ) -> None:
        for name, value in SETTINGS.items():  # before mlflow reads them
            os.environ.setdefault(name, value)
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise TrackingError(f"mlflow is not installed: {EXTRA}") from None
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no INFO lines among ours
        self.warn, self.experiment = warn, experiment
        self.broken = False
        self.run_id: str | None = None
        self.logged: set[tuple[str, int]] = set()  # (metric, step) the MLflow run holds
        self.epoch = 0  # the newest epoch heard of: evaluate's metrics are logged at it
        try:
            self.client = MlflowClient(uri)
            self.uri = self.client.tracking_uri
            self.client.search_experiments(max_results=1)  # reachable, or fail before training
        except Exception as exc:
            if required:
                raise TrackingError(f"{uri or 'mlflow'}: cannot reach ({_brief(exc)})") from None
            self._fail(exc)
        self.queue: queue.Queue[Event] = queue.Queue(QUEUE_EVENTS)
        self.worker = threading.Thread(target=self._work, name="mlflow-tracker", daemon=True)
        self.worker.start()

    # --- the listener: never blocks, never raises -------------------------------------------

    def __call__(self, event: Event) -> None:
        if self.broken or event.name not in HANDLED:
            return
        try:
            self.queue.put_nowait(event)
        except queue.Full:
            self._fail(RuntimeError(f"{QUEUE_EVENTS} events waiting: the server is too slow"))

    def close(self, status: str = "FINISHED") -> None:
        """Send what is queued (waiting up to FLUSH_SECONDS), then end the MLflow run with
        `status` (FINISHED, FAILED, KILLED); a resumed run sets it RUNNING again."""
        with contextlib.suppress(queue.Full):
            self.queue.put(_STOP, timeout=FLUSH_SECONDS)
        self.worker.join(FLUSH_SECONDS)
        if self.worker.is_alive():
            self._fail(RuntimeError(f"not all sent within {FLUSH_SECONDS:.0f} s"))
        elif self.run_id is not None and not self.broken:
            try:
                self.client.set_terminated(self.run_id, status)
            except Exception as exc:
                self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        if not self.broken:
            self.broken = True
            self.warn(f"mlflow tracking stopped, training goes on: {_brief(exc)}")

    def _work(self) -> None:
        handlers = {
            RUN_STARTED: self._started,
            EPOCH_ENDED: self._epoch_ended,
            EVALUATED: self._evaluated,
            EXPORTED: self._exported,
        }
        while (event := self.queue.get()) is not _STOP:
            if self.broken:
                continue  # drain: the listener stops adding soon
            try:
                if event.name in (EVALUATED, EXPORTED) and self.run_id is None:
                    self._attach(Path(event.fields["run_dir"]))  # `pipeline evaluate`, `export`
                if event.name == RUN_STARTED or self.run_id is not None:
                    handlers[event.name](event.fields)
            except Exception as exc:
                self._fail(exc)

    # --- the handlers (on the worker thread) ---------------------------------------------------

    def _started(self, fields: Mapping[str, Any]) -> None:
        path = Path(fields["path"])
        saved = _read_ids(path)
        run = self._existing(saved.get(self.uri))
        if run is None:
            run = self._create(path, fields)
            ids = json.dumps({"mlflow": {**saved, self.uri: run}}, indent=2) + "\n"
            atomic_write_bytes(path / TRACKING_FILE, ids.encode())
        self._resume(run)
        config = dict(fields["config"])
        self._log(params={**config, "preset": fields.get("preset", config.get("preset"))})
        for record in fields.get("history") or ():  # epochs done before this process
            self._epoch_ended({"epoch": record["epoch"], "metrics": record})
        self.epoch = int(fields.get("epoch") or 0)

    def _resume(self, run: str) -> None:
        """Continue the MLflow run `run`: RUNNING again, and which (metric, step) it holds."""
        self.run_id = run
        self.client.update_run(run, status="RUNNING")
        self.logged = {
            (key, m.step)
            for key in self.client.get_run(run).data.metrics
            for m in self.client.get_metric_history(run, key)
        }
        self.epoch = max((step for _, step in self.logged), default=0)

    def _attach(self, run_dir: Path) -> None:
        """Continue the MLflow run of `run_dir`, if it has one (else nothing is tracked)."""
        run = self._existing(_read_ids(run_dir).get(self.uri))
        if run is not None:
            self._resume(run)

    def _existing(self, run_id: str | None) -> str | None:
        """The MLflow run kept for this URI, if the store still has it (not deleted)."""
        from mlflow.exceptions import MlflowException

        if run_id is None:
            return None
        try:
            run = self.client.get_run(run_id)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        return None if run.info.lifecycle_stage == "deleted" else run_id

    def _create(self, path: Path, fields: Mapping[str, Any]) -> str:
        name = self.experiment or str(fields.get("dataset") or "pipeline")
        found = self.client.get_experiment_by_name(name)
        experiment = found.experiment_id if found else self.client.create_experiment(name)
        tags = {
            "pipeline.data_identity": fields.get("identity"),
            "pipeline.dataset": fields.get("dataset"),
            "pipeline.run_dir": str(path.resolve()),
            "pipeline.world_size": fields.get("world_size"),
            "pipeline.version": __version__,
            "mlflow.source.git.commit": git_commit(),
            "mlflow.source.name": "mnist-pipeline",
        }
        if fields.get("run"):
            tags["pipeline.run_id"] = fields["run"]
        created = self.client.create_run(
            experiment,
            tags={k: str(v) for k, v in tags.items() if v is not None},
            run_name=path.name,
        )
        self.client.log_dict(created.info.run_id, dict(fields["config"]), "config.json")
        return str(created.info.run_id)

    def _epoch_ended(self, fields: Mapping[str, Any]) -> None:
        self.epoch = max(self.epoch, int(fields["epoch"]))
        self._log(metrics=fields["metrics"], step=int(fields["epoch"]))

    def _evaluated(self, fields: Mapping[str, Any]) -> None:
        split = fields.get("split", "test")
        metrics = {"accuracy": fields["accuracy"], "macro_f1": fields["macro_f1"]}
        for cls, scores in (fields.get("per_class") or {}).items():
            for what in ("precision", "recall", "f1"):
                metrics[f"{what}/{cls}"] = scores[what]
        self._log(metrics={f"{split}/{k}": v for k, v in metrics.items()}, step=self.epoch)
        self._artifacts(Path(p) for p in fields.get("artifacts") or ())

    def _exported(self, fields: Mapping[str, Any]) -> None:
        self._artifacts([Path(fields["path"])])

    def _artifacts(self, paths: Iterable[Path]) -> None:
        assert self.run_id is not None
        for path in paths:
            if path.is_file():  # a report without curves has no curves.png
                self.client.log_artifact(self.run_id, str(path))

    def _log(
        self,
        *,
        metrics: Mapping[str, Any] | None = None,
        step: int = 0,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        """One batch: the metrics not yet logged at `step` (numbers only), the params not yet
        set (a resumed run may change `epochs`: the first value stays)."""
        from mlflow.entities import Metric, Param

        assert self.run_id is not None
        now = int(time.time() * 1000)
        batch = [
            Metric(_metric_key(k), float(v), now, step)
            for k, v in (metrics or {}).items()
            if isinstance(v, int | float)
            and not isinstance(v, bool)
            and k != "epoch"
            and (_metric_key(k), step) not in self.logged
        ]
        known = self.client.get_run(self.run_id).data.params if params else {}
        settings = [
            Param(k, json.dumps(v) if isinstance(v, list) else str(v))
            for k, v in (params or {}).items()
            if k not in known
        ]
        if batch or settings:
            self.client.log_batch(self.run_id, metrics=batch, params=settings)
        self.logged |= {(m.key, step) for m in batch}


def _brief(exc: BaseException) -> str:
    """An exception as one short line (mlflow's messages can span a traceback's worth)."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


def _read_ids(run_dir: Path) -> dict[str, str]:
    """tracking.json's {tracking URI: MLflow run id}; {} if none or not ours (a new MLflow
    run replaces it); TrackingError for one that is not a file or is too large."""
    path = run_dir / TRACKING_FILE
    if not path.exists():
        return {}
    try:
        runs = json.loads(read_file(path, error=TrackingError, limit=IDS_BYTES))["mlflow"]
    except (ValueError, KeyError, TypeError):
        return {}
    if not isinstance(runs, dict):
        return {}
    return {k: v for k, v in runs.items() if isinstance(k, str) and isinstance(v, str)}
