"""The train stage: stream batches from the shards through the network, checkpointing as it goes.

A run directory holds one run:
    run.json                 the config and the data it trains on (written once)
    checkpoints/*.npz        one per finished epoch, plus the newest mid-epoch one
    metrics.jsonl            one line per finished epoch (rewritten from the checkpoint)
Every file is replaced atomically, so a run killed at any instant resumes from its newest
checkpoint and ends bit-identical to a run that was never interrupted.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.data.loader import Loader, LoaderState
from pipeline.data.shards import Manifest, load_manifest
from pipeline.errors import CheckpointError, ConfigError, DivergedError, OutputError
from pipeline.fsutil import atomic_write_bytes, dir_lock, remove_stale_tmp
from pipeline.nn.network import Network
from pipeline.report.metrics import confusion_on
from pipeline.training import checkpoint
from pipeline.training.config import TrainConfig

RUN_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoints"
EVAL_BATCH = 1000


def epoch_accuracy(record: dict[str, Any]) -> tuple[str, float]:
    """The split an epoch record was scored on ("val" when the set has one) and its accuracy."""
    split = "val" if "val_accuracy" in record else "test"
    return split, float(record[f"{split}_accuracy"])


class Reporter(Protocol):
    """What the trainer tells a progress display; the CLI implements it with rich."""

    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int) -> None: ...
    def advance(self, step: int, samples: int, loss_sum: float) -> None: ...
    def end_epoch(self, record: dict[str, Any]) -> None: ...


class Silent:
    def start_epoch(self, epoch: int, epochs: int, steps: int, done: int) -> None: ...
    def advance(self, step: int, samples: int, loss_sum: float) -> None: ...
    def end_epoch(self, record: dict[str, Any]) -> None: ...


@dataclass
class RunState:
    """The mutable part of a run, saved in every checkpoint."""

    network: Network
    epoch: int = 0  # epochs finished
    step: int = 0  # batches done in the current epoch
    loss_sum: float = 0.0  # summed loss (|a - y|^2 / 2 per sample) over those batches
    samples: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class TrainResult:
    network: Network
    history: list[dict[str, Any]]
    checkpoint: Path
    resumed_from: Path | None


def read_run_file(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / RUN_FILE
    if not path.exists():
        return None
    try:
        doc: dict[str, Any] = json.loads(path.read_text())
        TrainConfig.from_json(doc["config"])
        if not isinstance(doc["manifest_sha256"], str) or not isinstance(doc["data"], str):
            raise TypeError("manifest_sha256 and data must be strings")
        return doc
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{path}: not a readable run file ({exc})") from None


def _check_compatible(
    run_dir: Path, saved: dict[str, Any], config: TrainConfig, manifest: Manifest
) -> None:
    if saved["manifest_sha256"] != manifest.identity:
        raise ConfigError(
            f"{run_dir}: was trained on another shard set (manifest "
            f"{saved['manifest_sha256'][:12]}), not {manifest.directory} ({manifest.identity[:12]})"
        )
    old = TrainConfig.from_json(saved["config"]).to_json()
    new = config.to_json()
    changed = [k for k in old if k not in TrainConfig.RESUMABLE and old[k] != new[k]]
    if changed:
        diffs = ", ".join(f"{k} {old[k]} -> {new[k]}" for k in changed)
        raise ConfigError(f"{run_dir}: cannot resume with a different config ({diffs})")


def _write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(record) + "\n" for record in history)
    atomic_write_bytes(run_dir / METRICS_FILE, lines.encode())


def train(
    data_dir: Path,
    run_dir: Path,
    config: TrainConfig,
    *,
    resume: bool = False,
    reporter: Reporter | None = None,
) -> TrainResult:
    """Train (or continue) the run in `run_dir` on the shard set in `data_dir`."""
    config.check()
    manifest = load_manifest(data_dir)
    reporter = reporter or Silent()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CHECKPOINT_DIR).mkdir(exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{run_dir}: cannot create the run directory ({exc.strerror})") from None
    try:
        with dir_lock(run_dir, what="train"):
            remove_stale_tmp(run_dir)  # left by a run killed while writing
            remove_stale_tmp(run_dir / CHECKPOINT_DIR)
            return _train_locked(manifest, run_dir, config, resume, reporter)
    except OSError as exc:  # a full disk, a read-only volume: whatever the OS refused
        raise OutputError(f"{run_dir}: cannot write the run ({exc})") from None


def _train_locked(
    manifest: Manifest, run_dir: Path, config: TrainConfig, resume: bool, reporter: Reporter
) -> TrainResult:
    saved = read_run_file(run_dir)
    if saved is not None and not resume:
        raise ConfigError(f"{run_dir}: already holds a run; pass --resume or use another --run-dir")
    if saved is not None:
        _check_compatible(run_dir, saved, config, manifest)
    trainer = Trainer(manifest, run_dir, config, reporter)  # before run.json: bad input leaves none
    if saved is None:
        doc = {
            "config": config.to_json(),
            "manifest_sha256": manifest.identity,
            "data": str(manifest.directory.resolve()),
            "dataset": manifest.name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        atomic_write_bytes(run_dir / RUN_FILE, (json.dumps(doc, indent=2) + "\n").encode())
    resumed_from = trainer.restore()
    last = trainer.run()
    return TrainResult(trainer.state.network, trainer.state.history, last, resumed_from)


class Trainer:
    """One run: the network and its position, the loaders, and the checkpoints they go to."""

    def __init__(
        self, manifest: Manifest, run_dir: Path, config: TrainConfig, reporter: Reporter
    ) -> None:
        self.manifest, self.run_dir, self.config, self.reporter = (
            manifest,
            run_dir,
            config,
            reporter,
        )
        self.ckpt_dir = run_dir / CHECKPOINT_DIR
        sizes = [manifest.features, *config.hidden, manifest.n_classes]
        self.rng = np.random.default_rng(config.seed)
        try:
            network = Network.initialize(
                sizes, rng=self.rng, std=config.init_std, dtype=config.dtype
            )
        except MemoryError:
            raise ConfigError(
                f"--hidden {list(config.hidden)}: the network does not fit in memory"
            ) from None
        self.state = RunState(network)
        self.train_loader = Loader(
            manifest,
            "train",
            batch_size=config.batch_size,
            shuffle=config.shuffle,
            seed=config.seed,
        )
        # scored each epoch: val when the set has one (test then waits for evaluate)
        self.scored_split = "val" if "val" in manifest.splits else "test"
        self.test_loader = Loader(manifest, self.scored_split, batch_size=EVAL_BATCH)
        self.last: Path | None = None  # the newest checkpoint on disk

    def restore(self) -> Path | None:
        """Continue from the newest checkpoint, if there is one; returns it."""
        path = checkpoint.newest(self.ckpt_dir)
        if path is None:
            return None
        ckpt = checkpoint.load(path)
        meta, network = ckpt.meta, ckpt.network
        try:  # the checkpoint's own config and data, not only run.json's, must match
            _check_compatible(path, meta, self.config, self.manifest)
        except (KeyError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{path}: holds no usable training config ({exc})") from None
        fresh = self.state.network
        if network.sizes != fresh.sizes or network.dtype != fresh.dtype:
            raise CheckpointError(
                f"{path}: layers {network.sizes} {network.dtype} do not fit "
                f"{fresh.sizes} {fresh.dtype}"
            )
        try:
            position = (int(meta["epoch"]), int(meta["step"]))
            self.train_loader.check_state(LoaderState(**meta["loader"]), *position)
            self.rng.bit_generator.state = meta["rng"]
            self.state = RunState(
                network,
                *position,
                float(meta["loss_sum"]),
                int(meta["samples"]),
                list(meta["history"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: incomplete checkpoint metadata ({exc})") from None
        except ConfigError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        _write_metrics(self.run_dir, self.state.history)
        self.last = path
        return path

    def run(self) -> Path:
        """Train up to `config.epochs`; returns the final checkpoint."""
        while self.state.epoch < self.config.epochs:
            started = time.perf_counter()
            self.train_epoch()
            self.end_epoch(time.perf_counter() - started)
        if self.last is None:
            raise CheckpointError(f"{self.ckpt_dir}: no checkpoint written")
        return self.last

    def train_epoch(self) -> None:
        """The rest of the current epoch, from the shards, in calls of many batches each."""
        state, config = self.state, self.config
        size, every = config.batch_size, config.checkpoint_every
        self.reporter.start_epoch(state.epoch, config.epochs, len(self.train_loader), state.step)
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
                loss_sum = state.network.steps(
                    x[rows], y[rows], config.lr, size, loss_sum=state.loss_sum
                )
                if not math.isfinite(loss_sum):
                    self._diverged(loss_sum, todo)
                done += todo
                state.step += todo
                state.samples += len(x[rows])
                state.loss_sum = loss_sum
                if every and state.step % every == 0 and state.step < len(self.train_loader):
                    self.save()
            self.reporter.advance(state.step, state.samples, state.loss_sum)

    def end_epoch(self, seconds: float) -> None:
        """Score the val split (else test), log the epoch, checkpoint."""
        state = self.state
        confusion = confusion_on(state.network, self.test_loader)
        total = state.history[-1]["seconds_total"] if state.history else 0.0
        record = {
            "epoch": state.epoch + 1,
            "train_loss": state.loss_sum / state.samples,  # mean of |a - y|^2 / 2
            f"{self.scored_split}_accuracy": float(np.trace(confusion) / confusion.sum()),
            "seconds": round(seconds, 3),
            "seconds_total": round(total + seconds, 3),
        }
        state.history.append(record)
        state.epoch, state.step, state.loss_sum, state.samples = state.epoch + 1, 0, 0.0, 0
        self.save()
        _write_metrics(self.run_dir, state.history)
        self.reporter.end_epoch(record)

    def save(self) -> None:
        state = self.state
        path = self.ckpt_dir / checkpoint.name_for(state.epoch, state.step)
        checkpoint.save(path, state.network, self._meta())
        # mid-epoch checkpoints are only stepping stones: keep the newest one alone
        for old in checkpoint.all_in(self.ckpt_dir):
            if old != path and not checkpoint.is_kept(old):
                old.unlink(missing_ok=True)
        self.last = path

    def _diverged(self, loss: float, steps: int) -> None:
        first = self.state.step + 1
        where = f"step {first}" + (f"-{first + steps - 1}" if steps > 1 else "")
        raise DivergedError(
            f"loss became {loss} in epoch {self.state.epoch + 1}, {where}: lower --lr or check "
            f"the data (pipeline verify); last good checkpoint: "
            f"{self.last.name if self.last else 'none yet'}"
        )

    def _meta(self) -> dict[str, Any]:
        state, config = self.state, self.config
        return {
            "config": config.to_json(),
            "sizes": state.network.sizes,
            "recipe": "mlp-sigmoid-mse-sgd",
            "epoch": state.epoch,
            "step": state.step,
            "loss_sum": state.loss_sum,
            "samples": state.samples,
            "history": state.history,
            "loader": asdict(self.train_loader.state(state.epoch, state.step)),
            "optimizer": {"name": "sgd", "lr": config.lr},  # plain SGD carries no state
            "rng": self.rng.bit_generator.state,
            "manifest_sha256": self.manifest.identity,
            "dataset": self.manifest.name,
            "classes": self.manifest.classes,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
