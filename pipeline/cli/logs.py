"""How the CLI speaks to logs: plain lines (as always), or one JSON object per line.

`--log-format json` (or PIPELINE_LOG_FORMAT=json) silences the rich console (tables, bars) and
prints each event as `{"event": ..., "time": ..., ...}` on stdout, errors on stderr: what log
collectors ingest. Fields by event: `run` (the run's directory name), `epoch` and `metrics`,
paths (`path`, `report`, `checkpoint`, `latest`), `error`.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from rich.console import Console

FLAG, ENVVAR = "--log-format", "PIPELINE_LOG_FORMAT"


class LogFormat(StrEnum):
    plain = "plain"
    json = "json"


def requested(args: Sequence[str]) -> LogFormat:
    """The format the command line asks for, read without parsing it: for an error found
    while parsing (an unknown option), before the command's own `--log-format` is read.
    The last `--log-format` given wins, as in click; then PIPELINE_LOG_FORMAT; else plain."""
    asked = os.environ.get(ENVVAR)
    for i, arg in enumerate(args):
        if arg == "--":
            break
        if arg == FLAG and i + 1 < len(args):
            asked = args[i + 1]
        elif arg.startswith(FLAG + "="):
            asked = arg.partition("=")[2]
    return LogFormat.json if asked == LogFormat.json else LogFormat.plain


class Log:
    """The process's log: one per CLI invocation (the commands set its format first)."""

    def __init__(self, console: Console) -> None:
        self.console, self.format = console, LogFormat.plain
        self.context: dict[str, Any] = {}  # fields every later JSON event carries (the run)

    def use(self, log_format: LogFormat) -> None:
        self.format, self.context = log_format, {}
        self.console.quiet = log_format is LogFormat.json  # no tables or bars among the JSON

    @property
    def json(self) -> bool:
        return self.format is LogFormat.json

    def event(self, event: str, fields: dict[str, Any], *, plain: str | None = None) -> None:
        """Log an event: as JSON, or as the plain line given (none: nothing in plain mode)."""
        if self.json:
            self._json(event, fields, sys.stdout)
        elif plain is not None:
            self.console.print(plain, highlight=False)

    def error(self, message: str, *, event: str = "error") -> None:
        """One line on stderr: `error: ...`, or a JSON error event."""
        if self.json:
            self._json(event, {"error": message}, sys.stderr)
        else:
            print(f"error: {message}" if event == "error" else message, file=sys.stderr, flush=True)

    def warning(self, message: str) -> None:
        """One line on stderr: `warning: ...`, or a JSON warning event (its `message`)."""
        if self.json:
            self._json("warning", {"message": message}, sys.stderr)
        else:
            print(f"warning: {message}", file=sys.stderr, flush=True)

    def _json(self, event: str, fields: dict[str, Any], stream: Any) -> None:
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        doc = {"event": event, "time": now, **self.context, **fields}
        stream.write(json.dumps(doc, default=str) + "\n")
        stream.flush()
