"""Checkpoints: a run's whole state in one `.npz`, written atomically, read without pickle.

Members, each a plain array stored uncompressed (as `np.savez` writes them):
    w0, b0, w1, b1, ...   the network, layer by layer: w (n_in, n_out), b (n_out,)
    state_<name>          the optimizer's buffers, if it keeps any (plain SGD keeps none)
    meta                  a `CheckpointMeta` as a JSON document in a 0-d unicode array
A file is checked before it is read whole: its size, then every member's zip entry and npy
header (dtype, shape, bytes), against the largest checkpoint this project writes. Storage
only: no numba, no `Network` at import; a `Checkpoint` builds its network when asked.
Naming, retention and where checkpoints live: `pipeline.training.rundir`.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import math
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.bounded import READ_ERRORS, Npy, read_npz
from pipeline.errors import CheckpointError, ConfigError
from pipeline.fsutil import atomic_path, read_file
from pipeline.training.config import MAX_PARAMETERS, TrainConfig

if TYPE_CHECKING:
    from pipeline.nn.network import Network

FORMAT_VERSION = 1
RECIPE = "mlp-sigmoid-mse-sgd"
STATE_PREFIX = "state_"
MAX_META_CHARS = 1 << 22  # 4 Mi characters: the history of ~20,000 epochs
STATE_PER_PARAMETER = 2  # the most buffers an optimizer keeps per weight (Adam's two moments)
# the largest checkpoint: MAX_PARAMETERS float64 weights and their optimizer buffers, the meta
# (UCS-4), and room for zip and npy headers
MAX_ARRAY_BYTES = 8 * MAX_PARAMETERS * (1 + STATE_PER_PARAMETER)
MAX_FILE_BYTES = MAX_ARRAY_BYTES + 4 * MAX_META_CHARS + (1 << 20)


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint says about itself besides its arrays (the `meta` member)."""

    config: TrainConfig
    sizes: tuple[int, ...]  # layer widths, input first
    epoch: int  # epochs finished
    step: int  # batches done in the current epoch
    loss_sum: float  # the epoch's summed loss so far, added step by step
    samples: int  # samples seen in the current epoch
    history: tuple[dict[str, Any], ...]  # one record per finished epoch (metrics.jsonl)
    loader: dict[str, Any]  # the loader's state (pipeline.data.loader.LoaderState)
    rng: dict[str, Any]  # the run's generator state (numpy bit_generator.state)
    data_identity: str  # the shard set's identity (stored as "manifest_sha256")
    dataset: str  # its name
    classes: tuple[str, ...]  # its class names
    optimizer: dict[str, Any] = field(default_factory=lambda: {"name": "sgd"})
    recipe: str = RECIPE
    dropout_counter: int = 0  # the dropout generator's position (pipeline.nn.recipe)
    created: str = ""
    image_shape: tuple[int, ...] = ()  # (rows, cols[, 3]) of the data; () in older checkpoints

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
            "history": list(self.history),
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
        if doc.get("format") != FORMAT_VERSION:
            raise ValueError(f"format {doc.get('format')!r}, not {FORMAT_VERSION}")
        get = functools.partial(_field, doc)
        try:
            config = TrainConfig.from_json(get("config", dict))
            config.check()  # a recipe this code knows (activation, loss, optimizer, ...)
        except (KeyError, TypeError, ValueError, ConfigError) as exc:
            raise ValueError(f"field 'config': not a training config ({exc})") from None
        sizes = tuple(get("sizes", list))
        history = tuple(get("history", list))
        if not all(isinstance(n, int) and n >= 1 for n in sizes) or len(sizes) < 2:
            raise ValueError(f"field 'sizes': {sizes!r} are not layer widths")
        for record in history:
            if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
                raise ValueError("field 'history': a record without its epoch number")
        classes = tuple(get("classes", list))
        shape = tuple(doc.get("image_shape", ()))  # absent in checkpoints older than predict
        if not all(isinstance(n, int) and n >= 1 for n in shape) or len(shape) not in (0, 2, 3):
            raise ValueError(f"field 'image_shape': {shape!r} is not an image shape")
        if not all(isinstance(c, str) for c in classes):
            raise ValueError("field 'classes': not a list of names")
        return cls(
            config=config,
            sizes=sizes,
            epoch=get("epoch", int),
            step=get("step", int),
            loss_sum=get("loss_sum", float),
            samples=get("samples", int),
            history=history,
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
        )


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


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    sha256: str  # of the bytes everything was read from
    meta: CheckpointMeta
    weights: tuple[np.ndarray, ...]  # (n_in, n_out) per layer, C-contiguous, writable
    biases: tuple[np.ndarray, ...]  # (n_out,) per layer
    state: dict[str, np.ndarray] = field(repr=False)  # the optimizer's buffers
    data: bytes = field(repr=False)  # the file as read

    @functools.cached_property
    def network(self) -> Network:
        from pipeline.nn.network import Network  # storage does not import compute up front

        config = self.meta.config
        return Network(
            list(self.weights), list(self.biases), activation=config.activation, loss=config.loss
        )


def save(
    path: Path,
    network: Network,
    meta: CheckpointMeta,
    *,
    state: Mapping[str, np.ndarray] | None = None,
) -> None:
    arrays: dict[str, np.ndarray] = {"meta": np.array(json.dumps(meta.to_json()))}
    arrays.update({STATE_PREFIX + name: a for name, a in (state or {}).items()})
    for i, (w, b) in enumerate(zip(network.weights, network.biases, strict=True)):
        arrays[f"w{i}"], arrays[f"b{i}"] = w, b
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez(f, allow_pickle=False, **arrays)


def _check_members(path: Path, headers: dict[str, Npy]) -> None:
    """Every member a stored .npy of ours within our bounds, before any array is read
    (`pipeline.bounded` has checked each header against its member's bytes)."""
    elements = 0
    for name, npy in headers.items():
        info = npy.info
        if not info.filename.endswith(".npy") or info.compress_type != zipfile.ZIP_STORED:
            raise CheckpointError(f"{path}: member {info.filename!r} is not a plain .npy array")
        if name == "meta":
            if npy.dtype.kind != "U" or npy.shape != () or npy.dtype.itemsize > 4 * MAX_META_CHARS:
                raise CheckpointError(f"{path}: its meta is not a bounded JSON text")
        elif npy.dtype not in (np.float32, np.float64):
            raise CheckpointError(f"{path}: member {name!r} is {npy.dtype}, not float32 or float64")
        else:
            elements += math.prod(npy.shape)
    if elements > MAX_PARAMETERS * (1 + STATE_PER_PARAMETER):
        raise CheckpointError(
            f"{path}: {elements:,} numbers, more than any network this project builds holds"
        )


def load(path: Path) -> Checkpoint:
    """Read a checkpoint; anything but our own plain arrays (pickles, damage) is refused.

    The file is read once: the network and the sha256 a report quotes come from the same
    bytes, even if a running `train` replaces the file meanwhile.
    """
    # bounded: a file larger than any checkpoint of a network this project builds is refused
    # from its size, unread (a FIFO or device too, never opened for a blocking read)
    data = read_file(
        path, error=CheckpointError, missing="no such checkpoint", limit=MAX_FILE_BYTES
    )
    if not data.startswith(b"PK"):
        raise CheckpointError(f"{path}: not a checkpoint (.npz) file")
    try:
        check = functools.partial(_check_members, path)
        members = read_npz(io.BytesIO(data), len(data), str(path), error=CheckpointError,
                           check=check)  # fmt: skip
    except READ_ERRORS as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({exc})") from None
    if "meta" not in members:
        raise CheckpointError(f"{path}: not a pipeline checkpoint (no meta member)")
    try:
        meta = CheckpointMeta.from_json(json.loads(str(members.pop("meta")[()])))
    except json.JSONDecodeError as exc:
        raise CheckpointError(
            f"{path}: its meta is not JSON ({exc}): not a pipeline checkpoint"
        ) from None
    except ValueError as exc:
        raise CheckpointError(f"{path}: not a pipeline checkpoint ({exc})") from None
    state = {
        k.removeprefix(STATE_PREFIX): np.ascontiguousarray(members.pop(k))
        for k in list(members)
        if k.startswith(STATE_PREFIX)
    }
    n = len(meta.sizes) - 1
    try:
        weights = tuple(np.ascontiguousarray(members.pop(f"w{i}")) for i in range(n))
        biases = tuple(np.ascontiguousarray(members.pop(f"b{i}")) for i in range(n))
    except KeyError as exc:
        raise CheckpointError(f"{path}: not a pipeline checkpoint (no layer {exc})") from None
    if members:
        raise CheckpointError(f"{path}: not a pipeline checkpoint (unknown {sorted(members)})")
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        if w.shape != meta.sizes[i : i + 2] or b.shape != (w.shape[1],) or b.dtype != w.dtype:
            raise CheckpointError(
                f"{path}: layer {i} has shapes {w.shape} and {b.shape}, its meta says "
                f"{meta.sizes[i]}-{meta.sizes[i + 1]}"
            )
    if weights[0].dtype != np.dtype(meta.config.dtype):
        raise CheckpointError(f"{path}: {weights[0].dtype} arrays, its config says otherwise")
    sha256 = hashlib.sha256(data).hexdigest()
    return Checkpoint(path, sha256, meta, weights, biases, state, data)
