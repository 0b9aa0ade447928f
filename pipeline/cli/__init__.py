"""The command line: typer commands that translate options into library calls."""

from pipeline.cli import scheduled  # noqa: F401  (registers `runs`)
from pipeline.cli.app import app

__all__ = ["app"]
