"""The command line: typer commands that translate options into library calls.

    app.py             the typer app and --version; registers the commands below
    data_commands.py   prepare, show, verify
    train_commands.py  train, evaluate, run
    scheduled.py       runs, and train/run with --runs (the scheduled mode)
    options.py         the options several commands share; train's are made from TrainConfig
    views.py           rich progress on a terminal, plain lines in logs, the tables
    errors.py          exit codes, the parameter -> option map, one `error:` line, SIGTERM
    logs.py, world.py  plain or JSON log lines; the MPI world of a command
The orchestration `run` calls lives in the library: `pipeline.job.flow`.
"""

from pipeline.cli.app import app

__all__ = ["app"]
