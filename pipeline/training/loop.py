"""The training loop: one run's network and position, its loaders, the checkpoints it writes.

`Trainer` is built from a run state (`state.py`: fresh, or loaded from a checkpoint) and makes
the loaders from the config and the shard set; `run` trains epoch after epoch from the run's
position, each epoch in calls of many batches (`train_epoch`, `_steps`), scores it
(`end_epoch`) and checkpoints (`save`). Its step is `pipeline.training.step.make_step`'s
choice; under MPI each rank steps its share of every global batch and rank 0 alone writes.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pipeline.communicator import LOCAL, Comm
from pipeline.config import TrainConfig
from pipeline.data import Manifest
from pipeline.data.loader import Loader, LoaderState
from pipeline.errors import CheckpointError, ConfigError, DivergedError
from pipeline.events import CHECKPOINT, EPOCH_ENDED, EPOCH_STARTED, STEP, Events
from pipeline.metrics import EVAL_BATCH, confusion_on
from pipeline.nn.schedules import Schedule
from pipeline.runs.history import Metrics
from pipeline.runs.rundir import METRICS_FILE, RunDir, improves, stopped_early
from pipeline.training import checkpoint
from pipeline.training.checkpoint_meta import CheckpointMeta
from pipeline.training.state import RunState
from pipeline.training.step import make_step


class Trainer:
    """One run from its state (`fresh_state`, or `state.load_state`): the network and its
    position, its step, the loaders, and the checkpoints they go to."""

    def __init__(
        self,
        manifest: Manifest,
        run: RunDir,
        config: TrainConfig,
        state: RunState,
        events: Events,
        comm: Comm = LOCAL,
    ) -> None:
        self.manifest, self.rundir, self.config, self.events = manifest, run, config, events
        self.comm, self.writer = comm, comm.rank == 0
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
        self.state = state
        self.step = make_step(config, state.network, comm)
        self.last = state.checkpoint  # the newest checkpoint on disk
        self.metrics = Metrics(run.path / METRICS_FILE)  # appended by rank 0
        if state.checkpoint is not None:
            self._continue(state.checkpoint)
        elif self.writer:
            self.metrics.start()

    def _continue(self, path: Path) -> None:
        """Take up a loaded state: its loader position, its step's state and (rank 0) the
        history its checkpoint proves, cutting whatever a killed run logged beyond it."""
        state, steps = self.state, len(self.train_loader)
        if state.step > steps:
            raise CheckpointError(f"{path}: step {state.step} of a {steps}-step epoch")
        try:
            loader = LoaderState(**state.loader or {})
            self.train_loader.check_state(loader, state.epoch, state.step)
            self.step.load_state(state.step_state)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: unusable loader or generator state ({exc})") from None
        except ConfigError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        if self.writer:
            state.history = self.metrics.load(
                state.epoch, state.history_sha256, of=path.name, cut=True
            )

    def run(self) -> Path:
        """Train up to `config.epochs`; returns the final checkpoint."""
        while self.state.epoch < self.config.epochs and not self.stop_early():
            started = time.perf_counter()
            self.train_epoch()
            self.end_epoch(time.perf_counter() - started)
        if self.last is None:
            raise CheckpointError(f"{self.rundir.checkpoints}: no checkpoint written")
        return self.rundir.chosen_checkpoint(self.state.best_epoch, self.last)

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
        dtype = self.state.network.dtype
        x = np.ascontiguousarray(x, dtype=dtype)  # (rows, n_0)
        y = np.ascontiguousarray(y, dtype=dtype)  # (rows, n_L)
        first = self.state.epoch * len(self.train_loader) + self.state.step
        lrs = [self.schedule.lr_at(first + k) for k in range(batches)]
        return self.step.steps(x, y, lrs, self.config.batch_size, loss_sum)

    def stop_early(self) -> bool:
        """`patience` epochs in a row without a better val accuracy than the best before."""
        state = self.state  # every rank's (its history is rank 0's alone)
        return stopped_early(state.epoch, state.best_epoch, self.config.patience)

    def end_epoch(self, seconds: float) -> None:
        """Score the val split (else test), log the epoch (before its checkpoint, which
        carries the log's sha256), checkpoint."""
        state = self.state
        n = self.manifest.n_classes
        confusion = confusion_on(state.network, self.test_loader, n)  # this rank's part
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
        if self.scored_split == "val" and improves(accuracy, state.best_epoch, state.best_accuracy):
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
        checkpoint.save(path, state.network, self._meta(), state=self.step.state().arrays)
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
        step = self.step.state()
        return CheckpointMeta(
            config=config,
            sizes=tuple(state.network.sizes),
            epoch=state.epoch,
            step=state.step,
            loss_sum=state.loss_sum,
            samples=state.samples,
            loader=asdict(self.train_loader.state(state.epoch, state.step)),
            rng=state.rng,
            data_identity=manifest.identity,
            dataset=manifest.name,
            classes=tuple(manifest.classes),
            image_shape=tuple(manifest.image_shape),
            optimizer={  # its buffers are the checkpoint's state arrays
                "name": config.optimizer,
                "lr": config.lr,
                "step_count": step.step_count,
            },
            recipe=f"mlp-{config.activation}-{config.loss}-{config.optimizer}",
            dropout_counter=step.dropout_counter,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            seconds_total=state.seconds_total,
            best_epoch=state.best_epoch,
            best_accuracy=state.best_accuracy,
            history_sha256=self.metrics.sha256,
        )
