"""How the command line ends: one `error:` line and an exit code, never a traceback.

Exit codes (the README lists them too):
    0    success
    1    bad input or environment: a file, a directory, the disk, memory
    2    bad usage: an unknown option, or an option's value out of range or malformed
    3    the `--min-accuracy` quality gate failed (the report is still written)
    75   another trigger holds the run (`--runs`; EX_TEMPFAIL: try again later)
    130  interrupted (Ctrl-C, SIGINT), 143 terminated (SIGTERM): every file written is
         complete; the line printed says how to continue

The library raises `PipelineError`s naming the *parameter* at fault (`batch_size`); `FLAGS` maps
each parameter to the option that sets it. Bad usage (2) is found two ways and ends one way:
- as the command line is read: click's errors (an unknown option, a value of the wrong type)
  and a value the library's own check refuses there (`checked_by`: `--image-shape`,
  `--val-fraction`, `--distributed`); `OneLineErrors` logs them;
- as the command runs: a `ConfigError` about a value the library checks for range
  (`VALUE_PARAMS`: the training options, `--shard-size`...); `friendly_errors` logs it.
Every other error is about files, data or the environment (1). Each is one line on stderr,
`error: ...`, or one JSON object with --log-format json (`log.error`).
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, TypeVar

import typer
from typer.core import TyperGroup

from pipeline.cli.logs import LogFormat, requested
from pipeline.config import option_help
from pipeline.errors import ConfigError, PipelineError

T = TypeVar("T")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_GATE, EXIT_BUSY = 0, 1, 2, 3, 75
EXIT_INTERRUPTED, EXIT_TERMINATED = 128 + signal.SIGINT, 128 + signal.SIGTERM  # 130, 143

# library parameter -> the option that sets it
FLAGS = {
    name: "--" + name.replace("_", "-")
    for name in (
        *option_help(),  # the training options: TrainConfig's fields (their Specs)
        "shard_size",
        "compression",
        "source",
        "name",
        "classes",
        "image_shape",
        "val_fraction",
        "split",
        "min_accuracy",
    )
} | {
    "data_dir": "--data",
    "run_dir": "--run-dir",
    "checkpoint_path": "--checkpoint",
    "allow_other_data": "--allow-other-data",
    "distributed": "--distributed",
}
# the parameters whose values the library checks for range: a bad one is bad usage (2)
VALUE_PARAMS = frozenset(option_help()) | {"shard_size", "compression"}


class BadValue(typer.BadParameter):
    """A value the library's own check refuses as the command line is read: bad usage (2),
    before anything runs, in the library's words with the flag (`--image-shape abc: ...`)."""

    def format_message(self) -> str:
        return self.message


def checked_by(check: Callable[[str], T]) -> Callable[[str], T]:
    """An option's parser: the library's `check` (which raises a PipelineError naming its
    parameter), run while the command line is read."""

    def parse(text: str) -> T:
        try:
            return check(text)
        except PipelineError as exc:
            raise BadValue(exc.render(FLAGS)) from None

    return parse


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT raises KeyboardInterrupt, so both stop the same clean way."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def exit_code(exc: PipelineError) -> int:
    """Bad usage (2) for an option's value out of range, else bad input (1): a file or a
    directory named by an option (`--data`, `--run-dir`), or one in conflict with what is on
    disk (`--source` against the set in `--data`), is input, not usage."""
    return EXIT_USAGE if isinstance(exc, ConfigError) and exc.param in VALUE_PARAMS else EXIT_ERROR


TRAINING_OUT_OF_MEMORY = "out of memory (a smaller --hidden or --batch-size?)"


def fail(message: str, code: int = EXIT_ERROR) -> typer.Exit:
    """Print the one error line (a JSON object with --log-format json); the caller raises what
    this returns."""
    from pipeline.cli.views import log

    log.error(message)
    return typer.Exit(code)


@contextlib.contextmanager
def friendly_errors(
    how_to_continue: str = "rerun the same command", out_of_memory: str = "out of memory"
) -> Iterator[None]:
    """Turn the pipeline's exceptions into one line on stderr and an exit code; a command
    that can lower its own memory says how in `out_of_memory`."""
    from pipeline.cli.views import log
    from pipeline.runs.lock import RunBusyError

    try:
        yield
    except RunBusyError as exc:  # a scheduler's "not now": its own exit code
        log.error(f"busy: {exc}", event="busy")
        raise typer.Exit(EXIT_BUSY) from None
    except PipelineError as exc:
        raise fail(exc.render(FLAGS), exit_code(exc)) from None
    except KeyboardInterrupt as exc:
        what, code = (
            ("terminated", EXIT_TERMINATED)
            if isinstance(exc, Terminated)
            else ("interrupted", EXIT_INTERRUPTED)
        )
        message = f"{what}: every file written is complete; {how_to_continue} to go on"
        log.error(message, event=what)
        raise typer.Exit(code) from None
    except MemoryError:
        raise fail(out_of_memory) from None
    except OSError as exc:  # a safety net: the stages turn the ones they expect into errors
        raise fail(str(exc)) from None


class OneLineErrors(TyperGroup):
    """Report usage errors as one `error:` line (a JSON object with --log-format json), like
    every other error (typer draws a box), and stop on SIGTERM as on Ctrl-C."""

    def main(self, *args: Any, **kwargs: Any) -> Any:
        from pipeline.cli.views import log

        kwargs["standalone_mode"] = False  # errors come back to us instead of being printed
        argv = list(kwargs.get("args") or sys.argv[1:])
        log.use(LogFormat.plain)  # until the command reads its --log-format (an eager option)
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGTERM, _raise_terminated) if main_thread else None
        try:
            code = super().main(*args, **kwargs)
        except typer.TyperException as exc:  # typer's usage errors (its vendored click's)
            message = exc.format_message()  # empty when the help was shown instead
            if type(exc).__name__ == "NoArgsIsHelpError":  # `pipeline` alone: the help
                typer.echo(message, err=True)
            elif message:  # maybe found before --log-format was read: ask the command line
                log.use(requested(argv))
                log.error(message)
            code = exc.exit_code
        except typer.Abort:
            log.error("aborted")
            code = EXIT_INTERRUPTED
        finally:
            if main_thread:  # signal handlers belong to the main thread only
                signal.signal(signal.SIGTERM, previous)
        sys.exit(code if isinstance(code, int) else EXIT_OK)
