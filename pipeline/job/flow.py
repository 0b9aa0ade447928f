"""The one flow of a run: find or make the shard set, train (resuming), evaluate; or nothing.

    job = Job(run_dir=Path("runs/mnist"), config=TrainConfig())
    result = run(job, Events(view))       # what `pipeline run --run-dir runs/mnist` does

Called on an interrupted run, `run` resumes where the last checkpoint left off; called on a
finished one (`standing_report`: the one rule of "done"), it says "up to date" and writes
nothing. The scheduled mode (`pipeline.job.schedule`) goes the same way, then records the outcome
and promotes. A caller watches through `pipeline.events` (the CLI draws progress bars and
logs lines from them; a tracker records them). The stages (numpy, h5py, numba, matplotlib)
are imported when the job runs, not before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import TrainConfig
from pipeline.data import MANIFEST, Manifest
from pipeline.errors import ConfigError
from pipeline.events import EVALUATED, PREPARED, PREPARING, SAY, TRAINED, UP_TO_DATE, Events

if TYPE_CHECKING:
    from pipeline.communicator import Comm
    from pipeline.report.evaluate import Evaluation
    from pipeline.training.trainer import TrainResult

SHARDS = "shards"  # where a run keeps the shard set it made: RUN_DIR/shards


@dataclass(frozen=True, kw_only=True)
class Job:
    """What to run: a run directory, its config, and where its data is or comes from."""

    run_dir: Path
    config: TrainConfig = field(default_factory=TrainConfig)
    data_dir: Path | None = None  # a shard set to use or make; None: RUN_DIR/shards
    source: str | None = None  # None: whatever data_dir holds, else the embedded MNIST
    image_shape: tuple[int, ...] | None = None  # of a csv source's rows
    val_fraction: float | None = None  # carve a val split from train (None: what the set has)
    min_accuracy: float | None = None  # the gate; None: every run passes
    command: str = "pipeline run"  # recorded in a shard set's provenance

    @property
    def shards(self) -> Path:
        return self.data_dir if self.data_dir is not None else self.run_dir / SHARDS


@dataclass(frozen=True)
class JobResult:
    manifest: Manifest
    prepared: bool  # the shard set was written by this call
    trained: TrainResult | None  # None: the run was up to date
    evaluation: Evaluation | None  # None: the run was up to date, its report stands
    report: dict[str, Any]  # what report.json holds (new or standing)
    passed: bool  # the report's accuracy passes the job's gate

    @property
    def accuracy(self) -> float:
        return float(self.report["accuracy"])


def shard_set(job: Job, events: Events, *, any_source: bool = False) -> tuple[Manifest, bool]:
    """The job's shard set, written first if the directory holds none; (manifest, written).
    The manifest is opened (parsed, its shards verified) here, once, and holds the set's reader
    lock while it lives: train and evaluate read through it. A set built from another source
    than `job.source` is refused, unless `any_source` (the scheduled mode, where the source
    fills an empty directory and a set swapped in makes a new run)."""
    from pipeline.data import integrity, sources
    from pipeline.data.prepare import prepare

    directory = job.shards
    if (directory / MANIFEST).exists():  # a set is there: use it, never replace it
        manifest = integrity.open_set(directory)  # damaged: the error says what and where
        built_from = manifest.raw.get("source", {}).get("spec")
        if not any_source and job.source and built_from != sources.resolve(job.source):
            raise ConfigError(
                f"{directory} holds {manifest.name} built from {built_from}; "
                "pass that source or another --data",
                param="source",
                value=job.source,
            )
        val = manifest.raw.get("fingerprint", {}).get("val_fraction", 0.0)
        if job.val_fraction is not None and job.val_fraction != val:
            raise ConfigError(
                f"{directory} holds {manifest.name} with val_fraction {val}; "
                "pass that or another --data",
                param="val_fraction",
                value=job.val_fraction,
            )
        return manifest, False
    raw = sources.load(job.source, image_shape=job.image_shape, val_fraction=job.val_fraction)
    events.emit(PREPARING, totals={split: len(data.images) for split, data in raw.splits.items()})
    result = prepare(
        directory,
        raw,
        command=job.command,
        on_progress=lambda split, samples: events.emit(PREPARED, split=split, samples=samples),
    )
    # read under the reader lock, as a found set
    return integrity.under_reader_lock(result.manifest), True


def open_set(
    job: Job, events: Events, comm: Comm, *, any_source: bool = False
) -> tuple[Manifest, bool]:
    """`shard_set` under MPI too: the first rank writes the set if needed, the others wait for
    it and read the same. Refuses a config the set cannot train before anything is trained."""
    job.config.check()  # before anything is written
    if comm.rank == 0:
        manifest, prepared = shard_set(job, events, any_source=any_source)
    comm.barrier()
    if comm.rank != 0:
        manifest, prepared = shard_set(job, Events(), any_source=any_source)
    from pipeline.training.state import check_fits

    check_fits(job.config, manifest)
    return manifest, prepared


def standing_report(
    run_dir: Path, manifest: Manifest, config: TrainConfig
) -> dict[str, Any] | None:
    """The run's report if the run is done: trained to its end (`epochs`, or stopped early by
    `patience`) and its report is of the checkpoint evaluate chooses at that end (the best
    val epoch, else the last), on this shard set and config. None if anything is left to
    train or to evaluate. The one rule of "done", in both modes (reads, never writes)."""
    import json

    from pipeline.fsutil import sha256_file
    from pipeline.runs.rundir import (
        CHECKPOINT_NAME,
        REPORT_JSON,
        REPORT_MD,
        RunDir,
        best_epoch,
        stopped_early,
    )

    run = RunDir(run_dir)
    newest = run.newest_checkpoint()
    match = None if newest is None else CHECKPOINT_NAME.match(newest.name)
    if match is None or int(match["step"]) != 0 or not (run_dir / REPORT_MD).is_file():
        return None  # no checkpoint, or a mid-epoch one: training is not over
    epoch = int(match["epoch"])
    try:
        doc: dict[str, Any] = json.loads((run_dir / REPORT_JSON).read_bytes())
        history, saved = doc["history"], TrainConfig.from_json(doc["model"]["config"]).to_json()
        best = best_epoch(history)
        chosen = run.chosen_checkpoint(best, run.checkpoint_path(epoch, 0))
        standing = (
            doc["split"] == "test"
            and doc["dataset"]["manifest_sha256"] == manifest.identity
            and [r["epoch"] for r in history] == list(range(1, epoch + 1))
            and (epoch == config.epochs or stopped_early(epoch, best, config.patience))
            and doc["checkpoint"]["file"] == str(chosen.relative_to(run_dir))
            and doc["checkpoint"]["sha256"] == sha256_file(chosen)
            and all(
                saved[k] == v for k, v in config.to_json().items() if k not in TrainConfig.RESUMABLE
            )
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # no report, or one this job cannot vouch for: train and evaluate
    return doc if standing else None


def train_and_evaluate(
    run_dir: Path, manifest: Manifest, config: TrainConfig, events: Events, comm: Comm
) -> tuple[TrainResult, Evaluation]:
    """Train the run to its end (resuming it), then evaluate it: both modes' middle."""
    from pipeline.report.evaluate import evaluate
    from pipeline.training.trainer import train

    trained = train(manifest, run_dir, config, resume=True, events=events, comm=comm)
    resumed = None if trained.resumed_from is None else str(trained.resumed_from)
    checkpoint = str(trained.checkpoint)
    events.emit(TRAINED, run=run_dir.name, checkpoint=checkpoint, resumed_from=resumed)
    return trained, evaluate(run_dir, manifest=manifest, comm=comm)


def gate(run_dir: Path, report: dict[str, Any], min_accuracy: float | None, events: Events) -> bool:
    """Whether the report passes `min_accuracy`; tells EVALUATED with the report's figures."""
    from pipeline.runs.rundir import REPORT_FILES, REPORT_JSON

    accuracy = float(report["accuracy"])
    passed = min_accuracy is None or accuracy >= min_accuracy
    events.emit(
        EVALUATED,
        run=run_dir.name,
        run_dir=str(run_dir),
        report=str(run_dir / REPORT_JSON),
        accuracy=accuracy,
        macro_f1=report["macro"]["f1"],
        per_class={
            row["class"]: {k: row[k] for k in ("precision", "recall", "f1")}
            for row in report["per_class"]
        },
        passed=passed,
        min_accuracy=min_accuracy,
        artifacts=[str(run_dir / name) for name in REPORT_FILES if (run_dir / name).is_file()],
    )
    return passed


def run(job: Job, events: Events | None = None, *, comm: Comm | None = None) -> JobResult:
    """Prepare if needed, train (resuming the run if it exists), evaluate; or nothing, if the
    run is done. Under MPI (`comm`), every rank calls this: the first writes the shard set if
    needed, all train and evaluate together."""
    from pipeline import communicator
    from pipeline.training.trainer import agree

    events, comm = events or Events(), comm or communicator.LOCAL
    manifest, prepared = open_set(job, events, comm)
    agree(comm, job.config, manifest)  # under MPI: every rank the same recipe and data
    if not prepared:
        built_from = manifest.raw.get("source", {}).get("spec")
        where = f"{job.shards} already holds {manifest.name} (from {built_from})"
        events.emit(SAY, message=f"shards: {where}; using it")
    # rank 0's answer for all: a rank left training while the others return would wait forever
    standing = standing_report(job.run_dir, manifest, job.config) if comm.rank == 0 else None
    doc = comm.broadcast(standing)
    if doc is not None:
        events.emit(UP_TO_DATE, run=job.run_dir.name, path=str(job.run_dir))
        passed = job.min_accuracy is None or doc["accuracy"] >= job.min_accuracy
        return JobResult(manifest, prepared, None, None, doc, passed)
    trained, evaluation = train_and_evaluate(job.run_dir, manifest, job.config, events, comm)
    passed = comm.rank != 0 or gate(job.run_dir, evaluation.doc, job.min_accuracy, events)
    return JobResult(manifest, prepared, trained, evaluation, evaluation.doc, passed)
