"""The job's one event stream: what happened, told once, heard by every listener.

The stages emit; they never know who listens. The terminal view draws the events, the JSON log
writes each as one line, an experiment tracker records them:

    events = Events(view, log, tracker)          # listeners: callables taking an Event
    events.emit(EPOCH_ENDED, epoch=3, metrics={"train_loss": 0.08, "val_accuracy": 0.97})

An event is a name from the vocabulary below and its fields (JSON values only, so a JSON log
writes it as it is). A listener must not raise for its own failures (a tracker that cannot
reach its server warns and goes on): what it raises propagates, as from any other call.
Under MPI only rank 0 has listeners; the other ranks emit into an empty stream.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

# The vocabulary, in the order a run emits it. Fields each event carries (at least):
SAY = "say"  # message: one line of news for a person (the set used, a resume)
WARNING = "warning"  # message: something the user should know; work goes on
PREPARING = "preparing"  # totals: {split: samples}: a shard set is being written
PREPARED = "prepared"  # split, samples: progress of prepare (many per split)
DATA = "data"  # path, dataset, identity: the shard set a scheduled trigger uses
UP_TO_DATE = "up-to-date"  # run, path: nothing to do
CLAIMED = "claimed"  # run, path, id: a scheduled trigger took the run
RUN_STARTED = "run-started"  # run, path, config (TrainConfig.to_json()), preset, identity,
#                             dataset, world_size, resumed_from (path or None), epoch (done),
#                             history (the done epochs' records: a tracker sends what it missed)
EPOCH_STARTED = "epoch-started"  # epoch (0-based), epochs, steps (in the epoch), done (steps)
STEP = "step"  # step, samples, loss_sum: progress within the epoch (once per block of batches)
EPOCH_ENDED = "epoch-ended"  # epoch (1-based, done), metrics: train_loss, {val,test}_accuracy,
#                              lr, seconds, samples_per_s
CHECKPOINT = "checkpoint"  # path, epoch, step: a checkpoint was written
TRAINED = "trained"  # run, checkpoint (the run's chosen one), resumed_from
EVALUATED = "evaluated"  # run, run_dir, report (report.json's path), accuracy, macro_f1, per_class
#                          ({class: {precision, recall, f1}}), passed, min_accuracy, artifacts
EXPORTED = "exported"  # path, format, run_dir: the model left the pipeline (model.onnx)
PROMOTED = "promoted"  # run, latest
PRUNED = "pruned"  # run, path


@dataclass(frozen=True)
class Event:
    name: str
    fields: Mapping[str, Any]


Listener = Callable[[Event], None]


class Events:
    """The stream: `emit` hands each event to every listener, in the order they were added.
    `Events()` has none: what a caller that watches nothing passes."""

    def __init__(self, *listeners: Listener) -> None:
        self.listeners = list(listeners)

    def add(self, listener: Listener) -> None:
        self.listeners.append(listener)

    def emit(self, name: str, **fields: Any) -> None:
        event = Event(name, fields)
        for listener in self.listeners:
            listener(event)
