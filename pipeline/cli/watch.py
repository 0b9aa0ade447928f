"""The CLI's listener on the job's event stream (pipeline.events): it renders, never computes.

    events = Events(watch.Terminal(progress))   # bars on a terminal, else plain lines;
                                                # with --log-format json, one JSON line each
A tracker is one more listener on the same stream.
"""

from __future__ import annotations

from typing import Any

from rich.progress import Progress

from pipeline import events as ev
from pipeline.cli.views import PrepareView, TrainView, log, say

PLAIN = {  # event -> its plain line; each is also a JSON line with --log-format json
    ev.DATA: "data: {dataset} in {path} (identity {identity:.12})",
    ev.UP_TO_DATE: "up to date: {path} is finished (same data and recipe); nothing to do",
    ev.CLAIMED: "run {path}",
    ev.TRAINED: "trained: {checkpoint}{resumed}",
    ev.EVALUATED: "gate: accuracy {accuracy:.4f}, min {min_accuracy}: {verdict}",
    ev.EXPORTED: "exported: {path}",
    ev.PROMOTED: "promoted: {latest} -> {run}",
    ev.PRUNED: "pruned: {path}",
}


class Terminal:
    """Draws prepare and training progress, says news, and logs the job's milestones."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.train = TrainView(progress)
        self.prepare: PrepareView | None = None

    def __call__(self, event: ev.Event) -> None:
        name, fields = event.name, event.fields
        if name == ev.PREPARING:
            self.prepare = PrepareView(self.progress, fields["totals"])
        elif name == ev.PREPARED and self.prepare is not None:
            self.prepare(fields["split"], fields["samples"])
        elif name == ev.EPOCH_STARTED:
            self.train.start_epoch(**fields)
        elif name == ev.STEP:
            self.train.advance(**fields)
        elif name == ev.EPOCH_ENDED:
            self.train.end_epoch(fields["epoch"], fields["metrics"])
        elif name == ev.SAY:
            say(fields["message"])
        elif name == ev.WARNING:
            log.warning(fields["message"])  # stderr, or a JSON warning event
        elif name in PLAIN:
            milestone(name, dict(fields))


def milestone(name: str, fields: dict[str, Any]) -> None:
    if "run" in fields:
        log.context["run"] = fields["run"]  # epochs and errors name the run too
    verdict = "passed" if fields.get("passed") else "failed"
    resumed = f" (resumed from {fields['resumed_from']})" if fields.get("resumed_from") else ""
    log.event(name, fields, plain=PLAIN[name].format(**fields, verdict=verdict, resumed=resumed))
