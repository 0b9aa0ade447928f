"""Checkpoints: a run's whole state in one `.npz`, written atomically, read without pickle.

Members: `w0, b0, w1, b1, ...` (the network), `opt_*` (the optimizer's buffers, if it keeps
any) and `meta`, a JSON document (config, position, loader state, generator states, optimizer
step count, data identity, history) stored as a plain unicode array.
Names sort by position (`checkpoint-e{epochs done}-s{batches into the next epoch}.npz`), so
the newest is the last; a name is never reused within a run, so nothing is overwritten.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import CheckpointError
from pipeline.fsutil import atomic_path
from pipeline.nn.layers import ACTIVATIONS
from pipeline.nn.losses import LOSSES
from pipeline.nn.network import Network

FORMAT_VERSION = 1
STATE_PREFIX = "opt_"
NAME = re.compile(r"^checkpoint-e(?P<epoch>\d{4})-s(?P<step>\d{7})\.npz$")


@dataclass(frozen=True)
class Checkpoint:
    path: Path
    sha256: str  # of the bytes the network was read from
    network: Network
    meta: dict[str, Any]
    data: bytes = field(repr=False)  # the file as read
    state: dict[str, np.ndarray] = field(default_factory=dict, repr=False)  # optimizer's


def name_for(epoch: int, step: int) -> str:
    return f"checkpoint-e{epoch:04d}-s{step:07d}.npz"


def save(
    path: Path,
    network: Network,
    meta: dict[str, Any],
    *,
    state: dict[str, np.ndarray] | None = None,
) -> None:
    arrays: dict[str, np.ndarray] = {
        "meta": np.array(json.dumps({**meta, "format": FORMAT_VERSION}))
    }
    arrays.update({STATE_PREFIX + name: a for name, a in (state or {}).items()})
    for i, (w, b) in enumerate(zip(network.weights, network.biases, strict=True)):
        arrays[f"w{i}"], arrays[f"b{i}"] = w, b
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez(f, allow_pickle=False, **arrays)


def load(path: Path) -> Checkpoint:
    """Read a checkpoint; anything but our own plain arrays (pickles, damage) is refused.

    The file is read once: the network and the sha256 a report quotes come from the same
    bytes, even if a running `train` replaces the file meanwhile.
    """
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror})") from None
    if not data.startswith(b"PK"):
        raise CheckpointError(f"{path}: not a checkpoint (.npz) file")
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            members = {name: npz[name] for name in npz.files}
    except ValueError as exc:
        if "allow_pickle=False" in str(exc):
            raise CheckpointError(f"{path}: holds a pickled object array; refused") from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise CheckpointError(f"{path}: corrupt or truncated checkpoint ({exc})") from None
    try:
        meta = json.loads(str(members.pop("meta")[()]))
        state = {
            k[len(STATE_PREFIX) :]: members.pop(k)
            for k in list(members)
            if k.startswith(STATE_PREFIX)
        }
        n = len(members) // 2
        weights = [members.pop(f"w{i}") for i in range(n)]
        biases = [members.pop(f"b{i}") for i in range(n)]
    except (KeyError, ValueError, IndexError) as exc:
        raise CheckpointError(f"{path}: not a pipeline checkpoint (missing {exc})") from None
    if not isinstance(meta, dict) or members or meta.get("format") != FORMAT_VERSION or not weights:
        raise CheckpointError(f"{path}: not a pipeline checkpoint of format {FORMAT_VERSION}")
    for i, (w, b) in enumerate(zip(weights, biases, strict=True)):
        if w.ndim != 2 or b.shape != (w.shape[1],) or w.dtype.kind != "f" or b.dtype != w.dtype:
            raise CheckpointError(f"{path}: layer {i} has shapes {w.shape} and {b.shape}")
        if i and weights[i - 1].shape[1] != w.shape[0]:
            raise CheckpointError(f"{path}: layer {i} does not fit the layer before it")
    config = meta.get("config")
    config = config if isinstance(config, dict) else {}
    activation, loss = config.get("activation", "sigmoid"), config.get("loss", "mse")
    if activation not in ACTIVATIONS or loss not in LOSSES:
        raise CheckpointError(f"{path}: unknown activation {activation!r} or loss {loss!r}")
    network = Network(weights, biases, activation=activation, loss=loss)
    return Checkpoint(path, hashlib.sha256(data).hexdigest(), network, meta, data, state)


def is_kept(path: Path) -> bool:
    """Epoch-end checkpoints stay for good; mid-epoch ones are replaced by the next."""
    return NAME.match(path.name) is not None and path.name.endswith("-s0000000.npz")


def all_in(directory: Path) -> list[Path]:
    """The directory's checkpoints, oldest first."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if NAME.match(p.name))


def newest(directory: Path) -> Path | None:
    found = all_in(directory)
    return found[-1] if found else None


def best_epoch(history: list[dict[str, Any]]) -> int | None:
    """The epoch (1-based) with the best val accuracy, the earliest on a tie; None when the
    run has no val split. Test accuracy never chooses."""
    scored = [(r["val_accuracy"], -r["epoch"]) for r in history if "val_accuracy" in r]
    return -max(scored)[1] if scored else None
