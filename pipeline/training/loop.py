"""The training loop: one run's network and position, its loaders, the checkpoints it writes.

`Trainer` builds the network and the loaders from the config and the shard set; `run` trains
epoch after epoch from the run's position (`resume` restores it from a checkpoint), each epoch
in calls of many batches (`train_epoch`, `_steps`), scores it (`end_epoch`) and checkpoints
(`save`). The original recipe steps through `Network.steps` (its compiled kernel), every other
recipe through `pipeline.nn.recipe.RecipeStep`; under MPI each rank steps its share of every
global batch and rank 0 alone writes.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.data.loader import Loader
from pipeline.data.shards import Manifest
from pipeline.errors import CheckpointError, ConfigError, DivergedError, ShardSetError
from pipeline.events import CHECKPOINT, EPOCH_ENDED, EPOCH_STARTED, STEP, Events
from pipeline.nn.network import Network
from pipeline.nn.optimizers import Hyper
from pipeline.nn.recipe import RecipeStep, Spec
from pipeline.nn.schedules import Schedule
from pipeline.report.evaluate import EVAL_BATCH, confusion_on
from pipeline.training import checkpoint, distributed
from pipeline.training.checkpoint_meta import CheckpointMeta
from pipeline.training.config import MAX_PARAMETERS, TrainConfig
from pipeline.training.distributed import LOCAL, Comm
from pipeline.training.history import Metrics
from pipeline.training.rundir import METRICS_FILE, RunDir, stopped_early


@dataclass
class RunState:
    """The mutable part of a run, saved in every checkpoint."""

    network: Network
    epoch: int = 0  # epochs finished
    step: int = 0  # batches done in the current epoch
    loss_sum: float = 0.0  # summed loss over those batches
    samples: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # the epochs' records (rank 0)
    seconds_total: float = 0.0  # the finished epochs' training time
    best_epoch: int = 0  # of the best val accuracy (earliest on a tie); 0: none (no val split)
    best_accuracy: float = 0.0


class Trainer:
    """One run: the network and its position, the loaders, and the checkpoints they go to."""

    def __init__(
        self,
        manifest: Manifest,
        run: RunDir,
        config: TrainConfig,
        events: Events,
        comm: Comm = LOCAL,
    ) -> None:
        self.manifest, self.rundir, self.config, self.events = manifest, run, config, events
        self.comm, self.writer = comm, comm.rank == 0
        self.reducer: distributed.GradientSum | None = None  # the Allreduce buffer, under MPI
        samples = manifest.split("train").samples
        if samples == 0:
            raise ShardSetError(
                f"{manifest.directory}: the train split is empty: nothing to train on"
            )
        if config.batch_size > samples:  # refused, not clamped: the config is what runs
            raise ConfigError(
                f"larger than the {samples} samples of {manifest.name}'s train split",
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
        self.rng = np.random.default_rng(config.seed)
        try:
            network = Network.initialize(
                sizes,
                rng=self.rng,
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
        self.state = RunState(network)
        self.train_loader = Loader(
            manifest,
            "train",
            batch_size=config.batch_size,
            shuffle=config.shuffle,
            seed=config.seed,
        )
        # scored each epoch: val when the set has one (test then waits for evaluate); under
        # MPI each rank scores its part and the confusions are summed
        self.scored_split = "val" if "val" in manifest.splits else "test"
        self.test_loader = Loader(
            manifest,
            self.scored_split,
            batch_size=EVAL_BATCH,
            rank=comm.rank,
            world_size=comm.size,
        )
        self.last: Path | None = None  # the newest checkpoint on disk
        self.metrics = Metrics(run.path / METRICS_FILE)  # appended by rank 0 (resume.restore)
        self.recipe = None if config.is_original else self.make_recipe(network)
        per_epoch = len(self.train_loader)
        self.schedule = Schedule(
            config.schedule,
            config.lr,
            total=config.epochs * per_epoch,
            per_epoch=per_epoch,
            warmup=round(config.warmup_epochs * per_epoch),
            step_epochs=config.step_epochs,
            gamma=config.step_gamma,
        )

    def make_recipe(self, network: Network) -> RecipeStep:
        """The step of a recipe other than the original: optimizer, dropout, its buffers."""
        c = self.config
        hyper = Hyper(c.optimizer, c.momentum, c.beta1, c.beta2, c.eps, c.weight_decay)
        spec = Spec(c.activation, c.loss, c.dropout, c.input_dropout, c.max_norm, hyper)
        # the dropout generator's key: from the seed, apart from the init's and the loader's
        key = int(np.random.default_rng([c.seed, 1]).integers(2**63))
        return RecipeStep(network, spec, batch_size=c.batch_size, dropout_key=key, comm=self.comm)

    def run(self) -> Path:
        """Train up to `config.epochs`; returns the final checkpoint."""
        while self.state.epoch < self.config.epochs and not self.stop_early():
            started = time.perf_counter()
            self.train_epoch()
            self.end_epoch(time.perf_counter() - started)
        if self.last is None:
            raise CheckpointError(f"{self.rundir.checkpoints}: no checkpoint written")
        best = self.state.best_epoch  # by val accuracy, when there is a val split
        return self.rundir.checkpoint_path(best, 0) if best else self.last

    def train_epoch(self) -> None:
        """The rest of the current epoch, from the shards, in calls of many batches each."""
        state, config = self.state, self.config
        size, every = config.batch_size, config.checkpoint_every
        steps = len(self.train_loader)
        self.events.emit(
            EPOCH_STARTED, epoch=state.epoch, epochs=config.epochs, steps=steps, done=state.step
        )
        # a block of rows per call: the step's call overhead is paid once per ~1,000 batches
        group = max(1, self.train_loader.block_rows // size)
        for x, y in self.train_loader.epoch(state.epoch, start_batch=state.step, group=group):
            done, batches = 0, -(-len(x) // size)
            while done < batches:
                todo = batches - done
                if every:  # stop exactly at the next checkpoint step
                    todo = min(todo, every - state.step % every)
                rows = slice(done * size, (done + todo) * size)
                # the epoch's loss sum goes through every step in order: the same bits
                # whichever block boundaries (or resume points) split the epoch
                loss_sum = self._steps(x[rows], y[rows], todo, state.loss_sum)
                if not math.isfinite(loss_sum):
                    self._diverged(loss_sum, todo)
                done += todo
                state.step += todo
                state.samples += len(x[rows])
                state.loss_sum = loss_sum
                if every and state.step % every == 0 and state.step < len(self.train_loader):
                    self.save()
            self.events.emit(STEP, step=state.step, samples=state.samples, loss_sum=state.loss_sum)

    def _steps(self, x: np.ndarray, y: np.ndarray, batches: int, loss_sum: float) -> float:
        """`batches` consecutive steps over the global batches in x, y (locally, or each rank
        its share); returns loss_sum plus their losses, added one batch at a time."""
        network, config = self.state.network, self.config
        if self.recipe is not None:
            x = np.ascontiguousarray(x, dtype=network.dtype)
            y = np.ascontiguousarray(y, dtype=network.dtype)
            first = self.state.epoch * len(self.train_loader) + self.state.step
            lrs = [self.schedule.lr_at(first + k) for k in range(batches)]
            return self.recipe.steps(x, y, lrs, config.batch_size, loss_sum=loss_sum)
        if self.comm.size == 1:
            return network.steps(x, y, config.lr, config.batch_size, loss_sum=loss_sum)
        if self.reducer is None:
            shapes = [p.shape for p in (*network.weights, *network.biases)]
            self.reducer = distributed.GradientSum(shapes, network.dtype)
        return distributed.network_steps(
            self.comm, network, self.reducer, x, y, config.lr, config.batch_size, loss_sum
        )

    def stop_early(self) -> bool:
        """`patience` epochs in a row without a better val accuracy than the best before."""
        state = self.state  # every rank's (its history is rank 0's alone)
        return stopped_early(state.epoch, state.best_epoch, self.config.patience)

    def end_epoch(self, seconds: float) -> None:
        """Score the val split (else test), log the epoch (before its checkpoint, which
        carries the log's sha256), checkpoint."""
        state = self.state
        confusion = confusion_on(state.network, self.test_loader)  # this rank's part
        self.comm.allreduce_sum(confusion)
        accuracy = float(np.trace(confusion) / confusion.sum())
        record = {
            "epoch": state.epoch + 1,
            "train_loss": state.loss_sum / state.samples,  # mean loss per sample
            f"{self.scored_split}_accuracy": accuracy,
            # the lr of the epoch's last step: in the record, so a resumed run's history (a
            # tracker's backfill) has it too
            "lr": self.schedule.lr_at((state.epoch + 1) * len(self.train_loader) - 1),
            "seconds": round(seconds, 3),
            "seconds_total": round(state.seconds_total + seconds, 3),
        }
        if self.scored_split == "val" and (not state.best_epoch or accuracy > state.best_accuracy):
            state.best_epoch, state.best_accuracy = state.epoch + 1, accuracy
        state.history.append(record)
        state.seconds_total = record["seconds_total"]
        rate = state.samples / seconds if seconds > 0 else 0.0  # over this session's part
        state.epoch, state.step, state.loss_sum, state.samples = state.epoch + 1, 0, 0.0, 0
        if self.writer:
            self.metrics.append(record)
        self.save()
        metrics = {k: v for k, v in record.items() if k != "epoch"}
        self.events.emit(
            EPOCH_ENDED, epoch=record["epoch"], metrics={**metrics, "samples_per_s": rate}
        )

    def save(self) -> None:
        state = self.state
        path = self.rundir.checkpoint_path(state.epoch, state.step)
        if not self.writer:  # rank 0 writes it; the name is the same on every rank
            self.last = path
            return
        arrays = self.recipe.optimizer.state_arrays() if self.recipe else {}
        checkpoint.save(path, state.network, self._meta(), state=arrays)
        self.rundir.prune(newest=path)
        self.last = path
        self.events.emit(CHECKPOINT, path=str(path), epoch=state.epoch, step=state.step)

    def _diverged(self, loss: float, steps: int) -> None:
        first = self.state.step + 1
        where = f"step {first}" + (f"-{first + steps - 1}" if steps > 1 else "")
        raise DivergedError(
            f"loss became {loss} in epoch {self.state.epoch + 1}, {where}: lower the learning "
            f"rate (lr) or check the data (pipeline verify); last good checkpoint: "
            f"{self.last.name if self.last else 'none yet'}"
        )

    def _meta(self) -> CheckpointMeta:
        state, config, manifest = self.state, self.config, self.manifest
        return CheckpointMeta(
            config=config,
            sizes=tuple(state.network.sizes),
            epoch=state.epoch,
            step=state.step,
            loss_sum=state.loss_sum,
            samples=state.samples,
            loader=asdict(self.train_loader.state(state.epoch, state.step)),
            rng=dict(self.rng.bit_generator.state),
            data_identity=manifest.identity,
            dataset=manifest.name,
            classes=tuple(manifest.classes),
            image_shape=tuple(manifest.image_shape),
            optimizer={  # its buffers are the checkpoint's state arrays
                "name": config.optimizer,
                "lr": config.lr,
                "step_count": self.recipe.optimizer.step_count if self.recipe else 0,
            },
            recipe=f"mlp-{config.activation}-{config.loss}-{config.optimizer}",
            dropout_counter=self.recipe.dropout_counter if self.recipe else 0,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            seconds_total=state.seconds_total,
            best_epoch=state.best_epoch,
            best_accuracy=state.best_accuracy,
            history_sha256=self.metrics.sha256,
        )
