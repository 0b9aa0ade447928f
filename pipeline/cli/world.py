"""The MPI world a command runs in: `--distributed`, and how ranks stop together.

One process unless launched under MPI with several ranks (pipeline.communicator).
"""

from __future__ import annotations

import contextlib
import signal
import traceback
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

from pipeline.cli.errors import EXIT_ERROR, checked_by, friendly_errors

if TYPE_CHECKING:  # numpy and mpi4py load only when a command runs
    from pipeline.communicator import Comm

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def _mode(text: str) -> str:
    from pipeline.communicator import check_mode

    return check_mode(text)


Distributed = Annotated[
    str,
    typer.Option(
        "--distributed",
        parser=checked_by(_mode),
        help="Data-parallel over MPI: 'auto' (when started by mpiexec/srun with several ranks), "
        "'mpi' (always; needs the mpi extra) or 'off'.",
    ),
]


@contextlib.contextmanager
def world(mode: str) -> Iterator[Comm]:
    """The MPI world for `--distributed MODE` (one process unless launched under MPI). Under
    MPI, SIGTERM or SIGINT stops every rank after the same step (communicator.request_stop);
    ranks given different arguments all refuse together, rank 0 alone saying why
    (communicator.agree); a rank that fails alone stops cleanly (its files are atomic) and then
    aborts the job, so no rank waits forever for it in a collective."""
    from pipeline import communicator
    from pipeline.cli.errors import exit_code

    with friendly_errors():
        comm = communicator.connect(mode)
    if comm.size == 1:
        yield comm
        return
    previous = {s: signal.signal(s, communicator.request_stop) for s in STOP_SIGNALS}
    try:
        yield comm
    except typer.Exit as exc:
        if exc.exit_code and not communicator.stop_agreed():
            comm.abort(exc.exit_code)
        raise
    except communicator.Refused as exc:  # rank 0 says why; this rank ends as it does
        raise typer.Exit(exit_code(exc.error)) from None
    except BaseException:  # a bug: show it, then end the other ranks too
        traceback.print_exc()
        comm.abort(EXIT_ERROR)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
