"""The `pipeline` app: the typer application, `--version`, and its commands by stage.

    data_commands.py    prepare, show, verify
    train_commands.py   train, evaluate, run
    scheduled.py        runs (and the --runs mode of train and run)
    deploy_commands.py  predict, export (the model leaves the pipeline)
The stages are imported inside the commands, so `pipeline --help` loads neither numba nor
matplotlib (numpy and h5py do come, with the shard format's `Compression` that `prepare` offers).
Exit codes and error lines: `pipeline.cli.errors`; views: `views`; MPI: `world`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from pipeline import __version__
from pipeline.cli import data_commands, deploy_commands, scheduled, train_commands
from pipeline.cli.errors import (
    EXIT_ERROR,
    EXIT_GATE,
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    OneLineErrors,
)

__all__ = ["EXIT_ERROR", "EXIT_GATE", "EXIT_INTERRUPTED", "EXIT_TERMINATED", "app"]

app = typer.Typer(
    cls=OneLineErrors,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help is plain text: "[default: mnist]" must not read as markup
    help="MNIST-style images: IDX -> HDF5 shards -> batches -> MLP -> checkpoint -> report.",
)


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"pipeline {__version__}")
        raise typer.Exit


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """MNIST-style images: IDX -> HDF5 shards -> batches -> MLP -> checkpoint -> report."""


# the commands, in the order of the data flow (and of `pipeline --help`)
app.command()(data_commands.prepare)
app.command()(data_commands.show)
app.command()(data_commands.verify)
app.command()(train_commands.train)
app.command()(train_commands.evaluate)
app.command()(train_commands.run)
app.command("runs")(scheduled.runs_command)
app.command()(deploy_commands.predict)
app.command()(deploy_commands.export)
