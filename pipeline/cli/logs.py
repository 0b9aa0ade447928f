"""How the CLI speaks to logs: plain lines (as always), or one JSON object per line.

`--log-format json` (or PIPELINE_LOG_FORMAT=json) silences the rich console (tables, bars) and
prints each event as `{"event": ..., "time": ..., ...}` on stdout, errors on stderr: what log
collectors ingest. Fields by event: `run` (the run's directory name), `epoch` and `metrics`,
paths (`path`, `report`, `checkpoint`, `latest`), `error`.
"""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from rich.console import Console


class LogFormat(StrEnum):
    plain = "plain"
    json = "json"


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
        """One line on stderr: `warning: ...`, or a JSON warning event; the work goes on."""
        if self.json:
            self._json("warning", {"message": message}, sys.stderr)
        else:
            print(f"warning: {message}", file=sys.stderr, flush=True)

    def _json(self, event: str, fields: dict[str, Any], stream: Any) -> None:
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        doc = {"event": event, "time": now, **self.context, **fields}
        stream.write(json.dumps(doc, default=str) + "\n")
        stream.flush()
