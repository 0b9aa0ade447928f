"""A trained model as it leaves the pipeline: a checkpoint and the preprocessing it was trained
with, found from a run directory, a runs directory (its `latest`) or a checkpoint file.

    Model.forward(pixels (B, features) uint8) -> labels (B,), probabilities (B, classes)

The pixels are normalized by `pipeline.data.pixels.normalize` (the shards' own rule), and the
labels are the argmax of `Network.feedforward`'s output, the very function `evaluate` scores:
predictions equal evaluate's, image for image. Probabilities are the softmax of the logits
(cross-entropy models) or the output sigmoids themselves (MSE models, which have no softmax).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.pixels import NORMALIZATION, normalize
from pipeline.errors import CheckpointError
from pipeline.nn.losses import log_softmax
from pipeline.runs.history import history_of
from pipeline.runs.rundir import REPORT_JSON, RunDir, run_of
from pipeline.runs.store import LATEST  # a runs directory's promoted run
from pipeline.training import checkpoint


def checkpoint_of(model: Path) -> Path:
    """The checkpoint `model` names: a file as it is; a runs directory's `latest`; a run
    directory's chosen checkpoint (the best val epoch if it has a val split, else its newest:
    what `evaluate` reports by default)."""
    if model.is_file():
        return model
    if not model.exists():
        raise CheckpointError(f"{model}: no such model (a run directory, runs directory or .npz)")
    if (model / LATEST).exists():
        model = model / LATEST
    run = RunDir(model)
    newest = run.newest_checkpoint()
    if newest is None:
        raise CheckpointError(f"{model}: holds no checkpoint; train first")
    return run.chosen_checkpoint(checkpoint.load(newest).meta.best_epoch, newest)


def _image_shape(meta: checkpoint.CheckpointMeta, path: Path) -> tuple[int, ...]:
    """The checkpoint's image shape; a checkpoint older than the field holds square grey
    images (the only ones the pipeline trained then on 784-style inputs) or is refused."""
    if meta.image_shape:
        return meta.image_shape
    side = math.isqrt(meta.sizes[0])
    if side * side != meta.sizes[0]:
        raise CheckpointError(f"{path}: records no image shape (a checkpoint of an older pipeline)")
    return (side, side)


@dataclass(frozen=True)
class Model:
    ckpt: checkpoint.Checkpoint
    image_shape: tuple[int, ...]  # (rows, cols) grey or (rows, cols, 3) RGB

    @classmethod
    def load(cls, model: Path) -> Model:
        path = checkpoint_of(model)
        ckpt = checkpoint.load(path)
        shape = _image_shape(ckpt.meta, path)
        if math.prod(shape) != ckpt.meta.sizes[0]:
            raise CheckpointError(f"{path}: image shape {shape} does not fit its input layer")
        return cls(ckpt, shape)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.ckpt.meta.classes

    @property
    def channels(self) -> int:
        return 3 if len(self.image_shape) == 3 else 1

    def forward(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, features) uint8 -> labels (B,) int64, probabilities (B, classes) float32."""
        network = self.ckpt.network
        x = normalize(pixels).astype(network.dtype, copy=False)
        out = network.feedforward(x)[-1]  # (B, classes): logits (CE) or sigmoids (MSE)
        labels: np.ndarray = np.argmax(out, axis=1)
        probs = np.exp(log_softmax(out)) if network.loss == "cross_entropy" else out
        return labels, probs.astype(np.float32, copy=False)

    def test_accuracy(self) -> float | None:
        """The report's accuracy on test for this very checkpoint, else its epoch's test score."""
        run = run_of(self.ckpt.path)  # a checkpoint outside a run has no report: {}
        try:
            doc = json.loads((run / REPORT_JSON).read_text()) if run else {}
            if doc["split"] == "test" and doc["checkpoint"]["sha256"] == self.ckpt.sha256:
                return float(doc["accuracy"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        meta = self.ckpt.meta
        history = history_of(self.ckpt.path, meta, strict=False)
        scored = [r for r in history if r["epoch"] == meta.epoch and "test_accuracy" in r]
        return float(scored[0]["test_accuracy"]) if scored and meta.step == 0 else None

    def describe(self) -> dict[str, Any]:
        """What a deployed model carries about itself (ONNX metadata_props, as strings)."""
        meta, accuracy = self.ckpt.meta, self.test_accuracy()
        return {
            "classes": json.dumps(list(meta.classes)),
            "image_shape": json.dumps(list(self.image_shape)),
            "normalization": NORMALIZATION,
            "dataset": meta.dataset,
            "data_identity": meta.data_identity,
            "recipe": meta.recipe,
            "config": json.dumps(meta.config.to_json(), sort_keys=True),
            "sizes": json.dumps(list(meta.sizes)),
            "checkpoint_sha256": self.ckpt.sha256,
            "test_accuracy": "" if accuracy is None else repr(accuracy),
        }
