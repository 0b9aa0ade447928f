"""Where the compiled kernels are cached: a directory of the user's, never the package.

numba's default cache, `__pycache__` beside the kernels' modules, writes into site-packages; a later
`pip install -e .` then leaves that directory behind as a stale namespace package that shadows
the project. And a user who can write neither the package nor ~/.cache got a traceback on every
command. Here: the first writable of $NUMBA_CACHE_DIR (if set), $XDG_CACHE_HOME (else ~/.cache)
/mnist-pipeline/numba, and a private directory in the temp dir; with none, the kernels compile
in each process and one line says so.

`jit` is the package's one way to declare a numba kernel (a test holds every module to it): a
kernel's cache is chosen at its first compile, by that rule, so no module can cache by another.
`python -m pipeline.nn.warm` compiles every kernel into the cache (e.g. at image build time).
"""

from __future__ import annotations

import functools
import os
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar, cast

import numba
from numba.core.compiler_lock import global_compiler_lock
from numba.core.registry import CPUDispatcher

F = TypeVar("F", bound=Callable[..., Any])


def first_writable(candidates: list[Path]) -> Path | None:
    """The first directory of `candidates` this process can create and write into."""
    for directory in candidates:
        try:
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=directory):
                pass
        except OSError:
            continue
        return directory
    return None


def private_dir(directory: Path) -> Path | None:
    """`directory` (made 0700) if this user alone can write it, else None: numba's cache holds
    code it will run, so a shared temp dir must not let anyone else plant files there."""
    try:
        directory.mkdir(mode=0o700, exist_ok=True)
        info = directory.lstat()
    except OSError:
        return None
    mine = stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()
    return directory if mine and not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) else None


def cache_dir() -> Path | None:
    """The first writable of the candidates (see the module's docstring), or None."""
    candidates = []
    if os.environ.get("NUMBA_CACHE_DIR"):
        candidates.append(Path(os.environ["NUMBA_CACHE_DIR"]))
    try:
        xdg = os.environ.get("XDG_CACHE_HOME") or Path("~/.cache").expanduser()
        candidates.append(Path(xdg) / "mnist-pipeline" / "numba")
    except RuntimeError:  # no $HOME and no passwd entry
        pass
    private = private_dir(Path(tempfile.gettempdir()) / f"mnist-pipeline-{os.getuid()}")
    if private is not None:
        candidates.append(private / "numba")
    return first_writable(candidates)


@functools.cache
def configure() -> bool:
    """Point numba's cache at `cache_dir()`; False (and one line on stderr) if there is none.
    Once per process: at the first compile of any kernel."""
    directory = cache_dir()
    if directory is None:
        print(
            "note: no writable cache directory for the compiled training kernel (tried "
            "$NUMBA_CACHE_DIR, $XDG_CACHE_HOME or ~/.cache, the temp dir): compiling it in "
            "this process, a few seconds",
            file=sys.stderr,
        )
        return False
    # replaces numba's own choice: $NUMBA_CACHE_DIR even when unwritable, else the package
    numba.config.CACHE_DIR = str(directory)  # type: ignore[attr-defined]
    return True


class Kernel(CPUDispatcher):
    """numba's dispatcher (what `numba.njit` returns), its disk cache enabled at the first
    compile if `configure()` found a directory. Every compile goes through `compile`: a call
    from Python and a call from another kernel alike."""

    def compile(self, sig: Any) -> Any:
        with global_compiler_lock:  # the recipe's two threads may reach a first call at once
            if not getattr(self, "cache_chosen", False):
                self.cache_chosen = True
                if configure():
                    self.enable_caching()
            return super().compile(sig)


def jit(**options: Any) -> Callable[[F], F]:
    """`numba.njit(**options)` with the cache rule above; `cache=` is not an option here."""
    if "cache" in options:
        raise TypeError("compile_cache.jit decides caching itself: drop cache=")

    def declare(func: F) -> F:
        options_ = {"nopython": True, "boundscheck": None, **options}  # as numba.njit sets them
        return cast(F, Kernel(func, targetoptions=options_))

    return declare
