"""Resuming a run: what must match before a checkpoint is continued, and where training starts.

A checkpoint is continued only on the shard set it was trained on and with the same config
(but for `TrainConfig.RESUMABLE` fields, as `epochs`): run.json and the checkpoint itself are
both checked. `load_state` reads the state a `Trainer` is built from (the network, the
loader's and the dropout generator's positions, the optimizer's buffers); `position` is what
every rank must agree on before the first step (the followers compare it with rank 0's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.communicator import digest
from pipeline.data.shards import Manifest
from pipeline.errors import CheckpointError, ConfigError
from pipeline.nn.step import StepState
from pipeline.training import checkpoint
from pipeline.training.config import TrainConfig
from pipeline.training.loop import RunState, Trainer, check_fits, fresh_state


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


def position(trainer: Trainer) -> dict[str, Any]:
    """Where training starts: what every rank must agree on before the first step."""
    network, step = trainer.state.network, trainer.step.state()
    # the weights, the optimizer's buffers and the dropout generator's position
    state = [*network.weights, *network.biases, *(v for _, v in sorted(step.arrays.items()))]
    return {
        "checkpoint": trainer.state.checkpoint.name if trainer.state.checkpoint else None,
        "epoch": trainer.state.epoch,
        "step": trainer.state.step,
        "dropout_counter": step.dropout_counter,
        "state_sha256": digest(state),
    }
