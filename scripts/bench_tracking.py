"""The overhead of MLflow tracking per epoch: the `fast` preset on MNIST, epochs with and
without tracking side by side in one process (runs alternating), on a real sqlite:/// store.

    python scripts/bench_tracking.py [--pairs 2] [--epochs 3]

Prints each run's epoch times, the median epoch with and without tracking, and what the
tracker costs the training thread per event (it only queues: the worker thread sends).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from pipeline.config import TrainConfig
from pipeline.data import prepare, sources
from pipeline.events import EPOCH_ENDED, RUN_STARTED, Event, Events
from pipeline.tracking.mlflow import MlflowTracker
from pipeline.training import presets, trainer


class Timed:
    """A listener that times the tracker's call on the training thread (the events it hears:
    every one of a run, STEP and CHECKPOINT included)."""

    def __init__(self, tracker: MlflowTracker) -> None:
        self.tracker = tracker
        self.seconds: list[float] = []

    def __call__(self, event: Event) -> None:
        started = time.perf_counter()
        self.tracker(event)
        self.seconds.append(time.perf_counter() - started)


def _sending(
    uri: str, run_dir: Path, config: TrainConfig, events: int = 100
) -> tuple[float, float]:
    """CPU and wall seconds per epoch event the worker thread spends sending to the store,
    measured with nothing else running in the process (what it takes from the training)."""
    run_dir.mkdir()
    tracker = MlflowTracker(uri, warn=print)
    started = {"path": str(run_dir), "run": run_dir.name, "config": config.to_json(), "epoch": 0}
    tracker(Event(RUN_STARTED, {**started, "dataset": "mnist", "world_size": 1}))
    record = {"train_loss": 0.1, "test_accuracy": 0.98, "lr": 0.1, "seconds": 1.7}
    cpu, wall = time.process_time(), time.perf_counter()
    for epoch in range(1, events + 1):
        tracker(Event(EPOCH_ENDED, {"epoch": epoch, "metrics": {"epoch": epoch, **record}}))
    tracker.close()
    return (time.process_time() - cpu) / events, (time.perf_counter() - wall) / events


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    config = presets.resolve("fast", epochs=args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.chdir(root)  # MLflow keeps a sqlite store's artifacts in ./mlruns
        manifest = prepare.prepare(root / "shards", sources.load(None)).manifest
        uri = f"sqlite:///{root / 'mlflow.db'}"
        connect = time.perf_counter()
        MlflowTracker(uri, warn=print).close()  # the store's schema, once
        print(f"new sqlite store (schema migrations): {time.perf_counter() - connect:.1f} s")
        times: dict[bool, list[float]] = {False: [], True: []}
        calls: list[float] = []
        for pair in range(args.pairs):
            for tracked in (False, True):
                run_dir = root / f"run-{pair}-{'on' if tracked else 'off'}"
                tracker = MlflowTracker(uri, warn=print) if tracked else None
                listener = Timed(tracker) if tracker else None
                events = Events(listener) if listener else Events()
                result = trainer.train(manifest, run_dir, config, events=events)
                if tracker is not None and listener is not None:
                    flush = time.perf_counter()
                    tracker.close()
                    calls += listener.seconds
                    print(f"  close (flush, end the run): {time.perf_counter() - flush:.2f} s")
                epochs = [r["seconds"] for r in result.history]
                times[tracked] += epochs[1:]  # the first epoch includes compiling
                label = "with" if tracked else "without"
                shown = ", ".join(f"{s:.2f}" for s in epochs)
                print(f"pair {pair}, {label} tracking: epochs {shown} s")
        cpu, wall = _sending(uri, root / "sending", config)
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f"median epoch (fast preset, epochs 2+): without {off:.3f} s, with {on:.3f} s, "
          f"difference {on - off:+.3f} s ({(on - off) / off:+.1%})")  # fmt: skip
    print(f"the tracker's call on the training thread: median {statistics.median(calls) * 1e6:.0f} "
          f"us, max {max(calls) * 1e6:.0f} us over {len(calls)} events")  # fmt: skip
    print(
        f"the worker's sending, per epoch event: {cpu * 1e3:.1f} ms CPU, {wall * 1e3:.1f} ms wall"
    )


if __name__ == "__main__":
    main()
