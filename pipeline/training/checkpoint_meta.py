"""What a checkpoint says about itself besides its arrays: `CheckpointMeta`, its `meta` member.

Every field is validated on reading (`from_json`). A checkpoint's size does not grow with the
run: the epochs' records live in the run's append-only metrics.jsonl (`history.Metrics`), and
the meta carries what training needs of them (the total seconds, the best val epoch) and the
sha256 of their lines, which proves which lines of that file are its history. Format 1
carried the whole history; it is still read (`_from_format_1`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from pipeline.config import TrainConfig
from pipeline.errors import ConfigError

FORMAT_VERSION = 2
FORMATS = (1, 2)  # read; format 1 carried the run's history (see _from_format_1)
RECIPE = "mlp-sigmoid-mse-sgd"


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about itself besides its arrays (the `meta` member)."""

    config: TrainConfig
    sizes: tuple[int, ...]  # layer widths, input first
    epoch: int  # epochs finished
    step: int  # batches done in the current epoch
    loss_sum: float  # the epoch's summed loss so far, added step by step
    samples: int  # samples seen in the current epoch
    loader: dict[str, Any]  # the loader's state (pipeline.data.loader.LoaderState)
    rng: dict[str, Any]  # the run's generator state (numpy bit_generator.state)
    data_identity: str  # the shard set's identity (stored as "manifest_sha256")
    dataset: str  # its name
    classes: tuple[str, ...]  # its class names
    optimizer: dict[str, Any] = field(default_factory=lambda: {"name": "sgd"})
    recipe: str = RECIPE
    dropout_counter: int = 0  # the dropout generator's position (pipeline.nn.general_step)
    created: str = ""
    image_shape: tuple[int, ...] = ()  # (rows, cols[, 3]) of the data; () in older checkpoints
    # of the finished epochs' records (metrics.jsonl): all the training needs of them
    seconds_total: float = 0.0  # the last record's seconds_total
    best_epoch: int = 0  # the epoch (1-based) of the best val accuracy, earliest on a tie; 0: none
    best_accuracy: float = 0.0  # its val accuracy
    history_sha256: str = hashlib.sha256().hexdigest()  # of metrics.jsonl's first `epoch` lines

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT_VERSION,
            "config": self.config.to_json(),
            "sizes": list(self.sizes),
            "recipe": self.recipe,
            "epoch": self.epoch,
            "step": self.step,
            "loss_sum": self.loss_sum,
            "samples": self.samples,
            "seconds_total": self.seconds_total,
            "best_epoch": self.best_epoch,
            "best_accuracy": self.best_accuracy,
            "history_sha256": self.history_sha256,
            "loader": self.loader,
            "optimizer": self.optimizer,
            "dropout_counter": self.dropout_counter,
            "rng": self.rng,
            "manifest_sha256": self.data_identity,
            "dataset": self.dataset,
            "classes": list(self.classes),
            "created": self.created,
            "image_shape": list(self.image_shape),
        }

    @classmethod
    def from_json(cls, doc: object) -> CheckpointMeta:
        """Validate every field; raises ValueError naming the first one at fault."""
        if not isinstance(doc, dict):
            raise ValueError("meta is not a JSON object")
        if type(doc.get("format")) is not int or doc["format"] not in FORMATS:
            raise ValueError(f"format {doc.get('format')!r}, not {FORMAT_VERSION}")
        if doc["format"] == 1:
            doc = _from_format_1(doc)
        get = functools.partial(_field, doc)
        try:
            config = TrainConfig.from_json(get("config", dict))
            config.check()  # a recipe this code knows (activation, loss, optimizer, ...)
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ValueError(f"field 'config': not a training config ({exc})") from None
        sizes = tuple(get("sizes", list))
        if not all(isinstance(n, int) and n >= 1 for n in sizes) or len(sizes) < 2:
            raise ValueError(f"field 'sizes': {sizes!r} are not layer widths")
        epoch, best_epoch = get("epoch", int), get("best_epoch", int)
        if best_epoch > epoch:
            raise ValueError(f"field 'best_epoch': {best_epoch} is beyond epoch {epoch}")
        history_sha256 = get("history_sha256", str)
        if len(history_sha256) != 64 or not set(history_sha256) <= set("0123456789abcdef"):
            raise ValueError(f"field 'history_sha256': {history_sha256[:40]!r} is not a sha256")
        classes = tuple(get("classes", list))
        shape = tuple(doc.get("image_shape", ()))  # absent in checkpoints older than predict
        if not all(isinstance(n, int) and n >= 1 for n in shape) or len(shape) not in (0, 2, 3):
            raise ValueError(f"field 'image_shape': {shape!r} is not an image shape")
        if not all(isinstance(c, str) for c in classes):
            raise ValueError("field 'classes': not a list of names")
        return cls(
            config=config,
            sizes=sizes,
            epoch=epoch,
            step=get("step", int),
            loss_sum=get("loss_sum", float),
            samples=get("samples", int),
            loader=get("loader", dict),
            rng=get("rng", dict),
            data_identity=get("manifest_sha256", str),
            dataset=get("dataset", str),
            classes=classes,
            optimizer=get("optimizer", dict),
            recipe=get("recipe", str),
            dropout_counter=get("dropout_counter", int) if "dropout_counter" in doc else 0,
            created=doc.get("created", "") if isinstance(doc.get("created"), str) else "",
            image_shape=shape,
            seconds_total=get("seconds_total", float),
            best_epoch=best_epoch,
            best_accuracy=get("best_accuracy", float),
            history_sha256=history_sha256,
        )


def _from_format_1(doc: dict[str, Any]) -> dict[str, Any]:
    """A format-1 meta (the whole history inside) as format 2: its summary, and the sha256 of
    the metrics.jsonl lines that format wrote from it."""
    history = _field(doc, "history", list)
    if not all(isinstance(r, dict) and type(r.get("epoch")) is int for r in history):
        raise ValueError("field 'history': a record without its epoch number")
    scored = [(r["val_accuracy"], -r["epoch"]) for r in history if "val_accuracy" in r]
    if not all(type(accuracy) is float for accuracy, _ in scored):
        raise ValueError("field 'history': a val accuracy that is not a number")
    best = max(scored) if scored else (0.0, 0)
    lines = "".join(json.dumps(record) + "\n" for record in history).encode()
    return {
        **doc,
        "seconds_total": history[-1].get("seconds_total", 0.0) if history else 0.0,
        "best_epoch": -best[1],
        "best_accuracy": best[0],
        "history_sha256": hashlib.sha256(lines).hexdigest(),
    }


def _field(doc: dict[str, Any], name: str, kind: type) -> Any:
    if name not in doc:
        raise ValueError(f"field {name!r} is missing")
    value = doc[name]
    if kind is int:
        ok = type(value) is int and value >= 0
    elif kind is float:
        ok = type(value) in (int, float) and math.isfinite(value)
    else:
        ok = isinstance(value, kind)
    if not ok:
        raise ValueError(f"field {name!r}: {str(value)[:40]!r} is not a valid {kind.__name__}")
    return float(value) if kind is float else value
