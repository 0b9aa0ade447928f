"""The train stage: stream batches from the shards through the network, checkpointing as it goes.

    train()          agree on the arguments under MPI, open the run directory (its lock),
                     refuse what cannot be resumed, write run.json, agree on the start, run
                     the loop
    state.py         `RunState`: fresh from the seed, or loaded from a checkpoint (what must
                     match to continue it); the start position every rank agrees on
    step.py          `make_step`: the one choice of a run's training step
    loop.py          `Trainer`, built from a state: the step, the loaders, the epoch loop,
                     the checkpoints

The run directory's layout (run.json, metrics.jsonl, checkpoints/) is `rundir`'s. Every
file is replaced atomically, so a run killed at any instant resumes from its newest
checkpoint and ends bit-identical to a run that was never interrupted, every recorded
number included (a checkpoint holds the optimizer's state and the dropout generator's
position too). A directory with no checkpoint yet holds no run: it starts afresh.
Under MPI (`comm`, pipeline/communicator.py) every rank trains its share of each global batch and
rank 0 alone writes the run.

The step (`step.make_step`) is the original recipe's compiled kernel where it is exact, the
general step for every other recipe. When the shard set has a "val" split, each epoch is
scored on it, the run's chosen checkpoint is the epoch with the best val accuracy (never the
test accuracy), and `patience` epochs without a better one stop the run early.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import communicator
from pipeline.communicator import LOCAL, Comm
from pipeline.config import TrainConfig
from pipeline.data import Manifest, open_set
from pipeline.errors import CheckpointError, ConfigError, OutputError
from pipeline.events import RUN_STARTED, Events
from pipeline.nn.network import Network
from pipeline.runs.rundir import RUN_FILE, RunDir, RunFile
from pipeline.training.loop import Trainer
from pipeline.training.state import check_compatible, position, start_state
from pipeline.training.step import check_batch

__all__ = ["TrainResult", "train"]


@dataclass(frozen=True)
class TrainResult:
    network: Network
    history: list[dict[str, Any]]
    checkpoint: Path
    resumed_from: Path | None


def train(
    data: Manifest | Path,
    run_dir: Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    events: Events | None = None,
    comm: Comm = LOCAL,
) -> TrainResult:
    """Train (or continue) the run in `run_dir` on a shard set: `data` is the set as the
    caller opened it (`integrity.open_set`: verified, under its reader lock), or its
    directory, opened here. `events` hears RUN_STARTED, then each epoch, step and checkpoint."""
    config.check()
    manifest = data if isinstance(data, Manifest) else open_set(data)
    agree(comm, config, manifest)
    check_batch(config.batch_size, comm)
    run = RunDir(run_dir)
    if comm.rank != 0:  # a follower: trains its share, writes nothing
        return _train_follower(manifest, run, config, comm)
    run.create()
    try:
        with run.training():
            return _train_locked(manifest, run, config, resume, events or Events(), comm)
    except OSError as exc:  # a full disk, a read-only volume: whatever the OS refused
        raise OutputError(f"{run_dir}: cannot write the run ({exc})") from None


def agree(comm: Comm, config: TrainConfig, manifest: Manifest) -> None:
    """Under MPI, before the first step: every rank trains the same resolved config (every
    field, `epochs` too: ranks that differ there would leave one waiting forever) on data of
    the same identity (node-local copies of a set may sit at other paths)."""
    communicator.agree(comm, {**config.to_json(), "data_dir": f"shard set {manifest.identity}"})


def _train_locked(
    manifest: Manifest,
    run: RunDir,
    config: TrainConfig,
    resume: bool,
    events: Events,
    comm: Comm,
) -> TrainResult:
    saved = run.read_run_file()
    newest = run.newest_checkpoint()
    if newest is not None and not resume:
        why = "already holds a run" if saved else f"holds checkpoints but no {RUN_FILE}"
        raise ConfigError(
            f"{run.path}: {why} (newest {newest.name}); resume it, or use another run directory"
        )
    if newest is not None and saved is not None:
        check_compatible(run.path / RUN_FILE, saved.data_identity, saved.config, config, manifest)
    # before run.json: bad input leaves none; the checkpoint's own config and data are checked
    trainer = Trainer(manifest, run, config, start_state(newest, config, manifest), events, comm)
    resumed_from = newest
    if newest is None or saved is None:  # a new run, one that failed before its first
        # checkpoint (started again with this config), or one whose run.json was lost
        created = datetime.now(UTC).isoformat(timespec="seconds")
        data = str(manifest.directory.resolve())
        run.write_run_file(RunFile(config, manifest.identity, data, manifest.name, created))
    comm.broadcast(position(trainer.state, trainer.step))  # the followers start from here
    events.emit(
        RUN_STARTED,
        run=run.path.name,
        path=str(run.path),
        config=config.to_json(),
        preset=config.preset,
        identity=manifest.identity,
        dataset=manifest.name,
        world_size=comm.size,
        resumed_from=None if resumed_from is None else str(resumed_from),
        epoch=trainer.state.epoch,
        history=list(trainer.state.history),  # what a tracker may have missed
    )
    last = trainer.run()
    return TrainResult(trainer.state.network, trainer.state.history, last, resumed_from)


def _train_follower(
    manifest: Manifest, run: RunDir, config: TrainConfig, comm: Comm
) -> TrainResult:
    """Rank > 0: start where rank 0 starts (its checkpoint, read from the shared run
    directory), prove it by comparing positions and weight digests, then train in step."""
    expected = comm.broadcast(None)
    name = expected["checkpoint"]
    resumed_from = run.checkpoints / name if name else None
    state = start_state(resumed_from, config, manifest)
    trainer = Trainer(manifest, run, config, state, Events(), comm)
    mine = position(trainer.state, trainer.step)
    if mine != expected:
        raise CheckpointError(
            f"{run.path}: rank {comm.rank} would start from {mine} but rank 0 from {expected}; "
            "every rank must see the same run directory (a shared file system)"
        )
    last = trainer.run()
    return TrainResult(trainer.state.network, trainer.state.history, last, resumed_from)
