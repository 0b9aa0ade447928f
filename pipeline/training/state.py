"""A run's state: where training starts, fresh or from a checkpoint, and what must match.

`RunState` is what every checkpoint saves and a `Trainer` is built from: `fresh_state` draws
it from the seed, `load_state` reads it from a checkpoint, which is continued only on the
shard set it was trained on and with the same config (but for `TrainConfig.RESUMABLE` fields,
as `epochs`): run.json and the checkpoint itself are both checked. `position` is what every
rank must agree on before the first step (the followers compare it with rank 0's).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.communicator import digest
from pipeline.config import MAX_PARAMETERS, TrainConfig
from pipeline.data import Manifest
from pipeline.errors import CheckpointError, ConfigError, ShardSetError
from pipeline.nn.network import Network
from pipeline.nn.step import Step, StepState
from pipeline.training import checkpoint


@dataclass
class RunState:
    """The mutable part of a run: what every checkpoint saves and a run starts from."""

    network: Network
    rng: dict[str, Any]  # the run's generator state (numpy bit_generator.state)
    epoch: int = 0  # epochs finished
    step: int = 0  # batches done in the current epoch
    loss_sum: float = 0.0  # summed loss over those batches
    samples: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # the epochs' records (rank 0)
    seconds_total: float = 0.0  # the finished epochs' training time
    best_epoch: int = 0  # of the best val accuracy (earliest on a tie); 0: none (no val split)
    best_accuracy: float = 0.0
    step_state: StepState = field(default_factory=StepState)  # optimizer buffers, dropout
    # loaded from a checkpoint: where the loader stood, the history's sha256, the file itself
    loader: dict[str, Any] | None = None
    history_sha256: str = ""
    checkpoint: Path | None = None


def check_fits(config: TrainConfig, manifest: Manifest) -> list[int]:
    """The layer sizes of `config`'s network on `manifest`, refused if they cannot train:
    before any array is allocated for them."""
    samples = manifest.split("train").samples
    if samples == 0:
        raise ShardSetError(f"{manifest.directory}: the train split is empty: nothing to train on")
    if config.batch_size > samples:  # refused, not clamped: the config is what runs
        raise ConfigError(
            f"more than the {samples:,} samples of {manifest.name}'s train split",
            param="batch_size",
            value=config.batch_size,
        )
    sizes = [manifest.features, *config.hidden, manifest.n_classes]
    if sum(a * b + b for a, b in itertools.pairwise(sizes)) > MAX_PARAMETERS:
        raise ConfigError(
            f"a {'-'.join(map(str, sizes))} network has more than the "
            f"{MAX_PARAMETERS:,} parameters this project builds",
            param="hidden",
            value=list(config.hidden),
        )
    return sizes


def fresh_state(config: TrainConfig, manifest: Manifest) -> RunState:
    """A new run: weights drawn from the seed, at epoch 0."""
    sizes = check_fits(config, manifest)
    rng = np.random.default_rng(config.seed)
    try:
        network = Network.initialize(
            sizes,
            rng=rng,
            std=config.init_std,
            dtype=config.dtype,
            init=config.init,
            activation=config.activation,
            loss=config.loss,
        )
    except MemoryError:
        raise ConfigError(
            "the network does not fit in memory", param="hidden", value=list(config.hidden)
        ) from None
    return RunState(network, dict(rng.bit_generator.state))


def check_compatible(
    where: Path, identity: str, saved: TrainConfig, config: TrainConfig, manifest: Manifest
) -> None:
    """A run trained on `identity` with `saved` may go on with `config` on `manifest`."""
    if identity != manifest.identity:
        raise ConfigError(
            f"{where}: was trained on another shard set ({identity[:12]}), not "
            f"{manifest.directory} ({manifest.identity[:12]})"
        )
    old, new = saved.to_json(), config.to_json()
    changed = [k for k in old if k not in TrainConfig.RESUMABLE and old[k] != new.get(k)]
    if changed:
        diffs = ", ".join(f"{k} {old[k]} -> {new.get(k)}" for k in changed)
        raise ConfigError(f"{where}: cannot resume with a different config ({diffs})")


def start_state(path: Path | None, config: TrainConfig, manifest: Manifest) -> RunState:
    """Where a run starts: the checkpoint at `path` (`load_state`), or afresh (None)."""
    return fresh_state(config, manifest) if path is None else load_state(path, config, manifest)


def load_state(path: Path, config: TrainConfig, manifest: Manifest) -> RunState:
    """The state the checkpoint at `path` saved, for a run of `config` on `manifest`: its own
    config and data must match (not only run.json's), its network must be the one `config`
    builds on `manifest`."""
    sizes = check_fits(config, manifest)
    ckpt = checkpoint.load(path)  # every array finite, or one line naming it
    meta = ckpt.meta
    check_compatible(path, meta.data_identity, meta.config, config, manifest)
    network = ckpt.network
    if network.sizes != sizes or str(network.dtype) != config.dtype:
        raise CheckpointError(
            f"{path}: layers {network.sizes} {network.dtype} do not fit {sizes} {config.dtype}"
        )
    try:
        step_count = int(meta.optimizer["step_count"])
        np.random.default_rng().bit_generator.state = meta.rng  # a state numpy accepts
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: unusable optimizer or generator state ({exc})") from None
    return RunState(
        network,
        meta.rng,
        meta.epoch,
        meta.step,
        meta.loss_sum,
        meta.samples,
        seconds_total=meta.seconds_total,
        best_epoch=meta.best_epoch,
        best_accuracy=meta.best_accuracy,
        step_state=StepState(ckpt.state, step_count, meta.dropout_counter),
        loader=meta.loader,
        history_sha256=meta.history_sha256,
        checkpoint=path,
    )


def position(state: RunState, step: Step) -> dict[str, Any]:
    """Where training starts: what every rank must agree on before the first step."""
    saved, network = step.state(), state.network
    # the weights, the optimizer's buffers and the dropout generator's position
    arrays = [*network.weights, *network.biases, *(v for _, v in sorted(saved.arrays.items()))]
    return {
        "checkpoint": state.checkpoint.name if state.checkpoint else None,
        "epoch": state.epoch,
        "step": state.step,
        "dropout_counter": saved.dropout_counter,
        "state_sha256": digest(arrays),
    }
