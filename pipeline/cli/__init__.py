"""The command line: typer commands that translate options into library calls.

    app.py      the commands (prepare, show, verify, train, evaluate, run) and --version
    options.py  the options several commands share; train's are made from TrainConfig
    views.py    rich progress on a terminal, plain lines in logs, the tables
    errors.py   exit codes, the parameter -> option map, one `error:` line, SIGTERM
The orchestration `run` calls lives in the library: `pipeline.job`.
"""

from pipeline.cli import scheduled  # noqa: F401  (registers `runs`)
from pipeline.cli.app import app

__all__ = ["app"]
