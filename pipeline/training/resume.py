"""Resuming a run: what must match before a checkpoint is continued, and where training starts.

A checkpoint is continued only on the shard set it was trained on and with the same config
(but for `TrainConfig.RESUMABLE` fields, as `epochs`): run.json and the checkpoint itself are
both checked. `restore` then puts the network, the loader's and the dropout generator's
positions and the optimizer's buffers back into a `Trainer`; `position` is what every rank
must agree on before the first step (the followers compare it with rank 0's).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.data.loader import LoaderState
from pipeline.data.shards import Manifest
from pipeline.errors import CheckpointError, ConfigError
from pipeline.training import checkpoint, distributed
from pipeline.training.config import TrainConfig
from pipeline.training.loop import RunState, Trainer


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


def restore(trainer: Trainer, path: Path | None = None) -> Path | None:
    """Continue `trainer` from `path` [default: the newest checkpoint, if there is one];
    returns it."""
    path = path or trainer.rundir.newest_checkpoint()
    if path is None:
        if trainer.writer:
            trainer.metrics.start()
        return None
    ckpt = checkpoint.load(path)
    meta = ckpt.meta
    # the checkpoint's own config and data, not only run.json's, must match
    check_compatible(path, meta.data_identity, meta.config, trainer.config, trainer.manifest)
    network, fresh = ckpt.network, trainer.state.network
    if network.sizes != fresh.sizes or network.dtype != fresh.dtype:
        raise CheckpointError(
            f"{path}: layers {network.sizes} {network.dtype} do not fit {fresh.sizes} {fresh.dtype}"
        )
    steps = len(trainer.train_loader)
    if meta.step > steps:
        raise CheckpointError(f"{path}: step {meta.step} of a {steps}-step epoch")
    try:
        trainer.train_loader.check_state(LoaderState(**meta.loader), meta.epoch, meta.step)
        trainer.rng.bit_generator.state = meta.rng
        if trainer.recipe is not None:
            trainer.recipe = trainer.make_recipe(network)
            trainer.recipe.optimizer.load_state(ckpt.state, int(meta.optimizer["step_count"]))
            trainer.recipe.dropout_counter = meta.dropout_counter
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: unusable loader or generator state ({exc})") from None
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    history: list[dict[str, Any]] = []  # the writer's: the checkpoint's lines; beyond them, cut
    if trainer.writer:
        history = trainer.metrics.load(meta.epoch, meta.history_sha256, of=path.name, cut=True)
    trainer.state = RunState(
        network,
        meta.epoch,
        meta.step,
        meta.loss_sum,
        meta.samples,
        history=history,
        seconds_total=meta.seconds_total,
        best_epoch=meta.best_epoch,
        best_accuracy=meta.best_accuracy,
    )
    trainer.last = path
    return path


def position(trainer: Trainer, resumed_from: Path | None) -> dict[str, Any]:
    """Where training starts: what every rank must agree on before the first step."""
    network, recipe = trainer.state.network, trainer.recipe
    state = [*network.weights, *network.biases]
    if recipe is not None:  # the optimizer's buffers and the dropout generator too
        state += [v for _, v in sorted(recipe.optimizer.state_arrays().items())]
    return {
        "checkpoint": resumed_from.name if resumed_from else None,
        "epoch": trainer.state.epoch,
        "step": trainer.state.step,
        "dropout_counter": recipe.dropout_counter if recipe is not None else 0,
        "state_sha256": distributed.digest(state),
    }
