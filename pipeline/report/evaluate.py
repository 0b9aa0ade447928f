"""The evaluate stage: a checkpoint and a split in, a precision report out.

Streams the split through the loader (never holding it), accumulates a confusion matrix, and
writes into the run directory: `report.json` (schema: `pipeline/report/report.schema.json`),
`report.md` for people, and two PNGs (`confusion.png`, `curves.png`) that it links.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import communicator
from pipeline.communicator import LOCAL, Comm
from pipeline.data import Manifest, open_set
from pipeline.data.loader import Loader
from pipeline.errors import CheckpointError, ConfigError, OutputError, ShardSetError
from pipeline.fsutil import atomic_write_bytes
from pipeline.metrics import (
    EVAL_BATCH,
    ClassificationReport,
    classification_report,
    confusion_on,
)
from pipeline.runs.history import history_of
from pipeline.runs.rundir import (
    CONFUSION_PNG,
    CURVES_PNG,
    REPORT_JSON,
    REPORT_MD,
    RUN_FILE,
    RunDir,
    epoch_accuracy,
)
from pipeline.training import checkpoint

__all__ = ["REPORT_MD", "Evaluation", "evaluate"]


@dataclass(frozen=True)
class Evaluation:
    report: ClassificationReport
    doc: dict[str, Any]  # what report.json holds
    run_dir: Path
    seconds: float  # scoring and writing the report


def _data_dir(run: RunDir, data_dir: Path | None) -> Path:
    if data_dir is not None:
        return data_dir
    saved = run.read_run_file()
    if saved is None:
        raise ConfigError(
            f"no {RUN_FILE} in {run.path} to find the shards by; name them",
            param="data_dir",
            value=None,
        )
    return Path(saved.data)


def _check_same_data(ckpt: checkpoint.Checkpoint, manifest: Manifest, allow: bool) -> None:
    """A model is scored on the data it learned, unless other data is asked for by name."""
    meta = ckpt.meta
    same_kind = meta.dataset == manifest.name and list(meta.classes) == manifest.classes
    if allow or (same_kind and meta.data_identity == manifest.identity):
        return
    if same_kind:
        what = (
            f"another shard set of {meta.dataset} ({meta.data_identity[:12]}), not on the one "
            f"in {manifest.directory} ({manifest.identity[:12]})"
        )
    else:
        what = (
            f"{_names(meta.dataset, meta.classes)}, not on "
            f"{_names(manifest.name, manifest.classes)} in {manifest.directory}"
        )
    raise ConfigError(
        f"{ckpt.path.name} was trained on {what}", param="allow_other_data", value="not given"
    )


def _names(dataset: str, classes: tuple[str, ...] | list[str]) -> str:
    shown = ", ".join(classes[:4]) + (", ..." if len(classes) > 4 else "")
    return f"{dataset or 'unnamed data'} (classes {shown})"


def evaluate(
    run_dir: Path,
    *,
    data_dir: Path | None = None,
    manifest: Manifest | None = None,
    split: str = "test",
    checkpoint_path: Path | None = None,
    allow_other_data: bool = False,
    comm: Comm = LOCAL,
) -> Evaluation:
    """Score a checkpoint on a split and write the report. The data: `manifest`, a set the
    caller opened (`integrity.open_set`), else the set in `data_dir` [default: the one the run
    trained on], opened here. Under MPI every rank scores its part of the split, and rank 0
    alone writes (the others return an empty `doc`)."""
    assert manifest is None or data_dir is None, "the data once: a manifest or a directory"
    started, run = time.perf_counter(), RunDir(run_dir)
    if not run_dir.is_dir():
        raise ConfigError("no such run directory", param="run_dir", value=run_dir)
    path = comm.broadcast(checkpoint_path or run.newest_checkpoint())
    if path is None:
        raise CheckpointError(f"{run_dir}: holds no checkpoint; train first")
    ckpt = checkpoint.load(path)  # every array finite, or one line naming the member
    # the curves: the run's whole history (its newest checkpoint's), or the named checkpoint's
    history = history_of(ckpt.path, ckpt.meta, strict=checkpoint_path is None)
    chosen = run.chosen_checkpoint(ckpt.meta.best_epoch, path)
    if checkpoint_path is None and chosen != path:
        # a run with a val split reports the epoch it chose by val accuracy, not its last
        ckpt = checkpoint.load(chosen)
    if manifest is None:
        manifest = open_set(_data_dir(run, data_dir))
    claims: dict[str, object] = {"split": split, "data_dir": f"shard set {manifest.identity}"}
    claims |= {"checkpoint_path": f"sha256 {ckpt.sha256}", "allow_other_data": allow_other_data}
    communicator.agree(comm, claims)  # under MPI: every rank scores the same model and data
    sizes = ckpt.network.sizes
    if (sizes[0], sizes[-1]) != (manifest.features, manifest.n_classes):
        raise CheckpointError(
            f"{path}: a {sizes[0]}-input, {sizes[-1]}-class model does not fit "
            f"{manifest.directory} ({manifest.features} features, {manifest.n_classes} classes)"
        )
    if manifest.split(split).samples == 0:
        raise ShardSetError(f"{manifest.directory}: split {split!r} is empty")
    _check_same_data(ckpt, manifest, allow_other_data)
    if comm.rank == 0 and not os.access(run_dir, os.W_OK):
        raise OutputError(
            "not writable, the report cannot be saved", param="run_dir", value=run_dir
        )

    part = Loader(manifest, split, batch_size=EVAL_BATCH, rank=comm.rank, world_size=comm.size)
    # (classes, classes) int64, this rank's part
    confusion = confusion_on(ckpt.network, part, ckpt.network.sizes[-1])
    comm.allreduce_sum(confusion)
    report = classification_report(confusion)
    if comm.rank != 0:
        return Evaluation(report, {}, run_dir, time.perf_counter() - started)
    from pipeline.report import plots  # matplotlib: only when a report is drawn

    try:
        with run.reporting():
            kept = run.keep_for_report(ckpt.path, ckpt.data, ckpt.sha256)
            doc = _report_doc(report, manifest, split, ckpt, kept, run_dir, history)
            plots.save_confusion_heatmap(
                confusion,
                manifest.classes,
                run_dir / CONFUSION_PNG,
                title=_headline(doc, "accuracy", f"{report.accuracy:.2%}"),
            )
            if history:
                plots.save_learning_curves(
                    [r["epoch"] for r in history],
                    [r["train_loss"] for r in history],
                    [epoch_accuracy(r)[1] for r in history],
                    run_dir / CURVES_PNG,
                    label=f"{epoch_accuracy(history[0])[0]} accuracy",
                )
            atomic_write_bytes(run_dir / REPORT_MD, _markdown(doc, history).encode())
            atomic_write_bytes(run_dir / REPORT_JSON, (json.dumps(doc, indent=2) + "\n").encode())
    except OSError as exc:
        raise OutputError(f"{run_dir}: cannot write the report ({exc})") from None
    return Evaluation(report, doc, run_dir, time.perf_counter() - started)


def _headline(doc: dict[str, Any], what: str, value: str) -> str:
    """ "mnist test: accuracy 97%"; on other data it names both: "... (model trained on X)"."""
    head = f"{doc['dataset']['name']} {doc['split']}: {what} {value}"
    trained = doc["dataset"]["trained_on"]
    if not doc["dataset"]["trained_on_same_data"]:
        head += f" (model trained on {trained['name'] or 'other data'})"
    return head


def _report_doc(
    report: ClassificationReport,
    manifest: Manifest,
    split: str,
    ckpt: checkpoint.Checkpoint,
    kept: Path,
    run_dir: Path,
    history: list[dict[str, Any]],
) -> dict[str, Any]:
    meta = ckpt.meta
    return {
        **report.to_dict(manifest.classes),
        "split": split,
        "samples": int(report.support.sum()),
        "classes": manifest.classes,
        "checkpoint": {
            "file": str(kept.resolve().relative_to(run_dir.resolve())),
            "evaluated": str(ckpt.path),
            "sha256": ckpt.sha256,
            "epoch": meta.epoch,
            "step": meta.step,
        },
        "dataset": {
            "name": manifest.name,
            "manifest_sha256": manifest.identity,
            "directory": str(manifest.directory),
            "trained_on_same_data": meta.data_identity == manifest.identity
            and list(meta.classes) == manifest.classes,
            "trained_on": {
                "name": meta.dataset,
                "manifest_sha256": meta.data_identity,
                "classes": list(meta.classes),
            },
        },
        "model": {
            "sizes": ckpt.network.sizes,
            "dtype": str(ckpt.network.dtype),
            "recipe": meta.recipe,
            "config": meta.config.to_json(),
        },
        "history": history,
        "images": {
            "confusion_matrix": CONFUSION_PNG,
            "learning_curves": CURVES_PNG if history else None,
        },
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _markdown(doc: dict[str, Any], history: list[dict[str, Any]]) -> str:
    classes = doc["classes"]
    lines = [
        "# " + _headline(doc, 'accuracy ("precision")', f"{doc['accuracy']:.2%}"),
        "",
        f"- samples: {doc['samples']}",
        f"- model: {'-'.join(map(str, doc['model']['sizes']))} {doc['model']['dtype']}, "
        f"recipe {doc['model']['recipe']}",
        f"- checkpoint: `{doc['checkpoint']['file']}` (sha256 `{doc['checkpoint']['sha256']}`)",
        f"- data: `{doc['dataset']['directory']}` (manifest sha256 "
        f"`{doc['dataset']['manifest_sha256']}`)",
        f"- macro precision {doc['macro']['precision']:.4f}, recall {doc['macro']['recall']:.4f}, "
        f"F1 {doc['macro']['f1']:.4f}",
        "",
        "## Per class",
        "",
        "| class | precision | recall | F1 | support |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    lines += [
        f"| {c['class']} | {c['precision']:.4f} | {c['recall']:.4f} | {c['f1']:.4f} | "
        f"{c['support']} |"
        for c in doc["per_class"]
    ]
    lines += [
        "",
        "## Confusion matrix (rows: true, columns: predicted)",
        "",
        "| true \\ predicted | " + " | ".join(classes) + " |",
        "| --- |" + " ---: |" * len(classes),
    ]
    lines += [
        f"| {name} | " + " | ".join(map(str, row)) + " |"
        for name, row in zip(classes, doc["confusion_matrix"], strict=True)
    ]
    lines += ["", f"![confusion matrix]({CONFUSION_PNG})", ""]
    if history:
        lines += [
            "## Training curve",
            "",
            f"| epoch | train loss | {epoch_accuracy(history[0])[0]} accuracy | seconds |",
            "| ---: | ---: | ---: | ---: |",
        ]
        lines += [
            f"| {r['epoch']} | {r['train_loss']:.5f} | {epoch_accuracy(r)[1]:.4f} | "
            f"{r['seconds']:.1f} |"
            for r in history
        ]
        lines += ["", f"![learning curves]({CURVES_PNG})", ""]
    return "\n".join(lines)
