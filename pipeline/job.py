"""The whole job in one call: find or make the shard set, train (resuming), evaluate.

    job = Job(run_dir=Path("runs/mnist"), config=TrainConfig())
    result = run(job)                     # what `pipeline run --run-dir runs/mnist` does

Called on an interrupted run, `run` resumes where the last checkpoint left off; called on a
finished one whose report is current, it says "up to date" and writes nothing. A caller
watches through `Hooks` (the CLI draws progress bars with them; a scheduler logs lines).
The stages (numpy, h5py, numba, matplotlib) are imported when the job runs, not before.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import ConfigError
from pipeline.training.config import TrainConfig

if TYPE_CHECKING:
    from pipeline.data.shards import Manifest
    from pipeline.report.evaluate import Evaluation
    from pipeline.training.distributed import Comm
    from pipeline.training.trainer import Reporter, TrainResult

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
    command: str = "pipeline run"  # recorded in a shard set's provenance

    @property
    def shards(self) -> Path:
        return self.data_dir if self.data_dir is not None else self.run_dir / SHARDS


def _ignore(_: object) -> None:
    return None


def _no_progress(totals: dict[str, int]) -> Callable[[str, int], None]:
    return lambda split, samples: None


@dataclass(frozen=True)
class Hooks:
    """How a job reports as it goes; every hook is optional."""

    say: Callable[[str], None] = _ignore  # one line of news: the set used, a resume
    # called with the samples per split before a set is written; returns prepare's on_progress
    prepare_progress: Callable[[dict[str, int]], Callable[[str, int], None]] = _no_progress
    reporter: Reporter | None = None  # training progress (pipeline.training.trainer.Reporter)


@dataclass(frozen=True)
class JobResult:
    manifest: Manifest
    prepared: bool  # the shard set was written by this call
    trained: TrainResult | None  # None: the run was up to date
    evaluation: Evaluation | None  # None: the run was up to date, its report stands
    report: dict[str, Any]  # what report.json holds (new or standing)

    @property
    def accuracy(self) -> float:
        return float(self.report["accuracy"])


def shard_set(job: Job, hooks: Hooks) -> tuple[Manifest, bool]:
    """The job's shard set, written first if the directory holds none; (manifest, written).
    The manifest is opened (parsed, its shards verified) here, once, and holds the set's reader
    lock while it lives: train and evaluate read through it."""
    from pipeline.data import integrity, sources
    from pipeline.data.prepare import prepare
    from pipeline.data.shards import MANIFEST, load_manifest

    directory = job.shards
    if (directory / MANIFEST).exists():  # a set is there: use it, never replace it
        manifest = load_manifest(directory)  # damaged: the error says what and where
        built_from = manifest.raw.get("source", {}).get("spec")
        if job.source is not None and built_from != sources.resolve(job.source):
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
        hooks.say(
            f"shards: {directory} already holds {manifest.name} (from {built_from}); using it"
        )
        return manifest, False
    raw = sources.load(job.source, image_shape=job.image_shape, val_fraction=job.val_fraction)
    totals = {split: len(data.images) for split, data in raw.splits.items()}
    result = prepare(
        directory, raw, command=job.command, on_progress=hooks.prepare_progress(totals)
    )
    return integrity.hold(result.manifest), True  # read under the reader lock, as a found set


def standing_report(job: Job, manifest: Manifest) -> dict[str, Any] | None:
    """The run's report if the run is finished and the report is of its last checkpoint, on
    this shard set and config; None if anything is left to train or to evaluate."""
    import json

    from pipeline.fsutil import sha256_file
    from pipeline.training.rundir import REPORT_JSON, REPORT_MD, RunDir

    run = RunDir(job.run_dir)
    last = run.checkpoint_path(job.config.epochs, 0)
    if run.newest_checkpoint() != last or not (job.run_dir / REPORT_MD).is_file():
        return None
    try:
        doc: dict[str, Any] = json.loads((job.run_dir / REPORT_JSON).read_bytes())
        config = TrainConfig.from_json(doc["model"]["config"]).to_json()
        standing = (
            doc["split"] == "test"
            and doc["dataset"]["manifest_sha256"] == manifest.identity
            and doc["checkpoint"]["file"] == str(last.relative_to(job.run_dir))
            and doc["checkpoint"]["sha256"] == sha256_file(last)
            and all(
                config[k] == v
                for k, v in job.config.to_json().items()
                if k not in TrainConfig.RESUMABLE
            )
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # no report, or one this job cannot vouch for: train and evaluate
    return doc if standing else None


def run(job: Job, hooks: Hooks | None = None, *, comm: Comm | None = None) -> JobResult:
    """Prepare if needed, train (resuming the run if it exists), evaluate; or nothing, if the
    run is finished and its report is current. Under MPI (`comm`), every rank calls this: the
    first writes the shard set if needed, all train and evaluate together."""
    from pipeline.report.evaluate import evaluate
    from pipeline.training import distributed
    from pipeline.training.trainer import agree, train

    hooks, comm = hooks or Hooks(), comm or distributed.LOCAL
    job.config.check()  # before anything is written
    if comm.rank == 0:
        manifest, prepared = shard_set(job, hooks)
    comm.barrier()  # the others wait for its shards, then read the same set
    if comm.rank != 0:
        manifest, prepared = shard_set(job, Hooks())
    agree(comm, job.config, manifest)  # under MPI: every rank the same recipe and data
    samples = manifest.split("train").samples
    if job.config.batch_size > samples:  # refused: clamping would change the recipe silently
        raise ConfigError(
            f"more than the {samples:,} samples of {manifest.name}'s train split",
            param="batch_size",
            value=job.config.batch_size,
        )
    # rank 0's answer for all: a rank left training while the others return would wait forever
    doc = comm.broadcast(standing_report(job, manifest) if comm.rank == 0 else None)
    if doc is not None:
        hooks.say(
            f"up to date: {job.run_dir} has trained {job.config.epochs} epochs and its report "
            "is of the last checkpoint; nothing written"
        )
        return JobResult(manifest, prepared, None, None, doc)
    trained = train(
        manifest,
        job.run_dir,
        job.config,
        resume=True,
        reporter=hooks.reporter,
        comm=comm,
    )
    if trained.resumed_from is not None:
        hooks.say(f"resumed from {trained.resumed_from}")
    evaluation = evaluate(job.run_dir, manifest=manifest, comm=comm)
    return JobResult(manifest, prepared, trained, evaluation, evaluation.doc)
