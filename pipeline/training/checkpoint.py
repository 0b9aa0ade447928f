"""Checkpoints: a run's whole state in one `.npz`, written atomically, read without pickle.

Members, each a plain array stored uncompressed (as `np.savez` writes them):
    w0, b0, w1, b1, ...   the network, layer by layer: w (n_in, n_out), b (n_out,)
    state_<name>          the optimizer's buffers, if it keeps any (plain SGD keeps none)
    meta                  a `CheckpointMeta` (checkpoint_meta.py) as JSON in a 0-d unicode array
A file is checked before it is read whole: its size, then every member's zip entry and npy
header (dtype, shape, bytes), against the largest checkpoint this project writes; then every
array must hold finite numbers (a NaN or inf weight or optimizer buffer is refused, read or
written, naming the member). Storage only: no numba, no `Network` at import; a `Checkpoint`
builds its network when asked. Naming, retention and where checkpoints live:
`pipeline.runs.rundir`.
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
from typing import TYPE_CHECKING

import numpy as np

from pipeline.bounded import READ_ERRORS, Npy, read_npz
from pipeline.config import MAX_PARAMETERS
from pipeline.errors import CheckpointError
from pipeline.fsutil import atomic_path, read_file
from pipeline.training.checkpoint_meta import CheckpointMeta as CheckpointMeta  # re-exported

if TYPE_CHECKING:
    from pipeline.nn.network import Network

STATE_PREFIX = "state_"
MAX_META_CHARS = 1 << 22  # 4 Mi characters: a format-1 meta with ~20,000 epochs of history
STATE_PER_PARAMETER = 2  # the most buffers an optimizer keeps per weight (Adam's two moments)
# the largest checkpoint: MAX_PARAMETERS float64 weights and their optimizer buffers, the meta
# (UCS-4), and room for zip and npy headers
MAX_ARRAY_BYTES = 8 * MAX_PARAMETERS * (1 + STATE_PER_PARAMETER)
MAX_FILE_BYTES = MAX_ARRAY_BYTES + 4 * MAX_META_CHARS + (1 << 20)


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
    arrays: dict[str, np.ndarray] = {STATE_PREFIX + name: a for name, a in (state or {}).items()}
    for i, (w, b) in enumerate(zip(network.weights, network.biases, strict=True)):
        arrays[f"w{i}"], arrays[f"b{i}"] = w, b
    check_finite(path, arrays, "refusing to write it")
    arrays["meta"] = np.array(json.dumps(meta.to_json()))
    with atomic_path(path) as tmp, tmp.open("wb") as f:
        np.savez(f, allow_pickle=False, **arrays)


def check_finite(path: Path, arrays: Mapping[str, np.ndarray], consequence: str) -> None:
    """Every number of every array finite: a NaN or inf weight or optimizer buffer would be
    trained on, scored and saved again without a word. Names the first member that is not."""
    for name, array in arrays.items():
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:
            kinds = " and ".join(
                k for k, test in (("NaN", np.isnan), ("inf", np.isinf)) if test(array).any()
            )
            raise CheckpointError(
                f"{path}: member {name!r} holds non-finite values ({bad:,} {kinds}); {consequence}"
            )


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
    named = {f"w{i}": w for i, w in enumerate(weights)} | {f"b{i}": b for i, b in enumerate(biases)}
    check_finite(path, named | {STATE_PREFIX + k: a for k, a in state.items()}, "refused")
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
