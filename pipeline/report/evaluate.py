"""The evaluate stage: a checkpoint and a split in, a precision report out.

Streams the split through the loader (never holding it), accumulates a confusion matrix, and
writes into the run directory: `report.json` (schema: `pipeline/report/report.schema.json`),
`report.md` for people, and two PNGs (`confusion.png`, `curves.png`) that it links.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.data.loader import Loader
from pipeline.data.shards import Manifest, load_manifest
from pipeline.errors import CheckpointError, ConfigError, OutputError, ShardSetError
from pipeline.fsutil import atomic_write_bytes
from pipeline.report import plots
from pipeline.report.metrics import ClassificationReport, classification_report, confusion_on
from pipeline.training import checkpoint
from pipeline.training.trainer import (
    CHECKPOINT_DIR,
    EVAL_BATCH,
    RUN_FILE,
    epoch_accuracy,
    read_run_file,
)

REPORT_JSON, REPORT_MD = "report.json", "report.md"
CONFUSION_PNG, CURVES_PNG = "confusion.png", "curves.png"


@dataclass(frozen=True)
class Evaluation:
    report: ClassificationReport
    doc: dict[str, Any]  # what report.json holds
    run_dir: Path


def _data_dir(run_dir: Path, data_dir: Path | None) -> Path:
    if data_dir is not None:
        return data_dir
    saved = read_run_file(run_dir)
    if saved is None:
        raise ConfigError(f"{run_dir}: no {RUN_FILE} to find the shards by; pass --data")
    return Path(saved["data"])


def _keep(ckpt: checkpoint.Checkpoint, run_dir: Path) -> Path:
    """The report's checkpoint, where no later run can remove or overwrite it: the run's own
    epoch-end checkpoints stay as they are; any other is copied in under its content hash."""
    ckpt_dir = run_dir / CHECKPOINT_DIR
    if ckpt.path.resolve().parent == ckpt_dir.resolve() and checkpoint.is_kept(ckpt.path):
        return ckpt.path
    kept = ckpt_dir / f"evaluated-{ckpt.sha256[:16]}.npz"
    ckpt_dir.mkdir(exist_ok=True)
    atomic_write_bytes(kept, ckpt.data)
    return kept


def evaluate(
    run_dir: Path,
    *,
    data_dir: Path | None = None,
    split: str = "test",
    checkpoint_path: Path | None = None,
) -> Evaluation:
    if not run_dir.is_dir():
        raise ConfigError(f"--run-dir {run_dir}: no such run directory")
    path = checkpoint_path or checkpoint.newest(run_dir / CHECKPOINT_DIR)
    if path is None:
        raise CheckpointError(f"{run_dir}: holds no checkpoint; run `pipeline train` first")
    ckpt = checkpoint.load(path)
    manifest = load_manifest(_data_dir(run_dir, data_dir))
    sizes = ckpt.network.sizes
    if (sizes[0], sizes[-1]) != (manifest.features, manifest.n_classes):
        raise CheckpointError(
            f"{path}: a {sizes[0]}-input, {sizes[-1]}-class model does not fit "
            f"{manifest.directory} ({manifest.features} features, {manifest.n_classes} classes)"
        )
    if manifest.split(split).samples == 0:
        raise ShardSetError(f"{manifest.directory}: split {split!r} is empty")
    if not os.access(run_dir, os.W_OK):
        raise OutputError(f"--run-dir {run_dir}: not writable, the report cannot be saved")

    confusion = confusion_on(ckpt.network, Loader(manifest, split, batch_size=EVAL_BATCH))
    report = classification_report(confusion)
    history = ckpt.meta.get("history") or []  # the epochs that made this checkpoint
    try:
        kept = _keep(ckpt, run_dir)
        doc = _report_doc(report, manifest, split, ckpt, kept, run_dir, history)
        plots.save_confusion_heatmap(
            confusion,
            manifest.classes,
            run_dir / CONFUSION_PNG,
            title=f"{manifest.name} {split}: accuracy {report.accuracy:.2%}",
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
    return Evaluation(report, doc, run_dir)


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
            "epoch": meta.get("epoch"),
            "step": meta.get("step"),
        },
        "dataset": {
            "name": manifest.name,
            "manifest_sha256": manifest.identity,
            "directory": str(manifest.directory),
            "trained_on_same_data": meta.get("manifest_sha256") == manifest.identity,
        },
        "model": {
            "sizes": ckpt.network.sizes,
            "dtype": str(ckpt.network.dtype),
            "recipe": meta.get("recipe"),
            "config": meta.get("config"),
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
        f'# {doc["dataset"]["name"]} {doc["split"]}: accuracy ("precision") {doc["accuracy"]:.2%}',
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
