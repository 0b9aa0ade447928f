"""The CLI on a user's machine: where the compiled kernel's cache goes, and what happens when
no cache directory is writable. Real subprocesses, real read-only mounts, a real other user.

numba's default cache (`__pycache__` beside kernels.py) wrote into site-packages; a later
`pip install -e .` then left that directory as a stale namespace package and every command
failed. And a user who could not write the package or ~/.cache got a traceback on every
command, `--help` included.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import pipeline
from pipeline.cli import app

PACKAGE = Path(pipeline.__file__).parent


def cache_files(root: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime for p in (*root.rglob("*.nbi"), *root.rglob("*.nbc"))}


WARM_ORIGINAL = "from pipeline.nn import warm\nfor dt in ('float32', 'float64'): warm.original(dt)"


def warm(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """Compiles (or loads) the original recipe's kernel for both dtypes."""
    return subprocess.run(
        [sys.executable, "-c", WARM_ORIGINAL],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
    )


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    return env | extra


def test_the_kernel_cache_lives_in_the_users_cache_not_in_the_package(tmp_path: Path) -> None:
    before = cache_files(PACKAGE)
    done = warm(base_env(XDG_CACHE_HOME=str(tmp_path / "xdg")), tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert list((tmp_path / "xdg" / "mnist-pipeline" / "numba").rglob("*.nbi"))
    assert cache_files(PACKAGE) == before  # nothing new or rewritten inside the package
    again = warm(base_env(XDG_CACHE_HOME=str(tmp_path / "xdg")), tmp_path)
    assert again.returncode == 0 and again.stderr == ""


@pytest.fixture
def read_only(tmp_path: Path, mount_tmpfs: Callable[[Path, str], bool]) -> Path:
    """A read-only file system (root cannot write it either)."""
    directory = tmp_path / "ro"
    assert mount_tmpfs(directory, "ro,size=1m"), "mounting a tmpfs needs root, as in CI"
    return directory


def test_an_unwritable_cache_falls_back_to_a_private_temp_dir(
    tmp_path: Path, read_only: Path
) -> None:
    (tmp_path / "tmp").mkdir()
    env = base_env(
        NUMBA_CACHE_DIR=str(read_only / "numba"),
        XDG_CACHE_HOME=str(read_only / "xdg"),
        HOME=str(read_only / "home"),
        TMPDIR=str(tmp_path / "tmp"),
    )
    before = cache_files(PACKAGE)
    done = warm(env, tmp_path)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    private = tmp_path / "tmp" / f"mnist-pipeline-{os.getuid()}"
    assert private.stat().st_mode & 0o777 == 0o700
    assert list(private.rglob("*.nbi"))
    assert cache_files(PACKAGE) == before


def test_no_writable_cache_compiles_in_process_and_says_so_once(
    tmp_path: Path, read_only: Path
) -> None:
    """The temp dir's candidate is someone else's (a planted symlink): refused, never used."""
    (tmp_path / "tmp").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "tmp" / f"mnist-pipeline-{os.getuid()}").symlink_to(tmp_path / "elsewhere")
    env = base_env(
        XDG_CACHE_HOME=str(read_only / "xdg"),
        HOME=str(read_only / "home"),
        TMPDIR=str(tmp_path / "tmp"),
    )
    before = cache_files(PACKAGE)
    done = warm(env, tmp_path)
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("note: no writable cache directory"), lines
    assert list((tmp_path / "elsewhere").iterdir()) == []
    assert cache_files(PACKAGE) == before


# As user nobody, with no writable home, cache or temp dir, from a root-owned copy of the package
# (as `pip install` by root into a system location leaves it): the commands that do not train
# must work without even importing numba, and `train` (the original recipe and `fast`) must work,
# its kernels compiled in the process. The interpreter may live where nobody cannot read (under
# /root), so the child first runs every command as root on copies (every module it needs gets
# imported), then forgets the package's modules, gives up root and runs them again: the package
# is imported afresh as nobody, its kernels declared and compiled as nobody.
AS_NOBODY = textwrap.dedent(
    """
    import json, os, shutil, sys
    work = sys.argv[1]
    sys.path.insert(0, f"{work}/site")
    from pipeline.cli import app

    FAST = ["--preset", "fast", "--batch-size", "32"]  # 250 samples: smaller batches

    def commands(tag):
        train = ["train", "--data", f"{work}/trained", "--epochs", "1", "--hidden", "8"]
        return {
            "help": ["--help"],
            "prepare": ["prepare", "--out", f"{work}/shards{tag}", "--source", f"idx:{work}/raw"],
            "verify": ["verify", f"{work}/shards{tag}"],
            "evaluate": ["evaluate", "--run-dir", f"{work}/run{tag}", "--data", f"{work}/trained"],
            **({"numba": None} if tag else {}),  # as root: numba not loaded so far
            "train": [*train, "--run-dir", f"{work}/original{tag}"],
            "train-fast": [*train, "--run-dir", f"{work}/fast{tag}", *FAST],
        }

    def run_all(tag):
        codes = {}
        for name, args in commands(tag).items():
            if args is None:
                codes[name] = name in sys.modules
                continue
            try:
                app(args, prog_name="pipeline")
            except SystemExit as exc:
                codes[name] = exc.code
        return codes

    shutil.copytree(f"{work}/run", f"{work}/run-root")
    as_root = run_all("-root")
    for name in [m for m in sys.modules if m == "pipeline" or m.startswith("pipeline.")]:
        del sys.modules[name]
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    from pipeline.cli import app
    as_nobody = run_all("")
    print(json.dumps({"root": as_root, "nobody": as_nobody}))
    """
)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory user nobody can reach (pytest's tmp_path sits in a root-only 0700 dir)."""
    directory = Path(tempfile.mkdtemp(prefix="pipeline-nobody-"))
    directory.chmod(0o777)
    yield directory
    shutil.rmtree(directory)


def test_every_command_works_as_nobody_from_a_root_owned_install(
    small_idx: Path, shared_dir: Path, read_only: Path
) -> None:
    shutil.copytree(small_idx, shared_dir / "raw")
    trained_on, run = str(shared_dir / "trained"), str(shared_dir / "run")
    for args in (
        ["prepare", "--out", trained_on, "--source", f"idx:{shared_dir / 'raw'}"],
        ["train", "--data", trained_on, "--run-dir", run, "--epochs", "1", "--hidden", "8"],
    ):
        ready = CliRunner().invoke(app, args)
        assert ready.exit_code == 0, ready.output
    for path in (shared_dir, *shared_dir.rglob("*")):
        path.chmod(0o777 if path.is_dir() else 0o666)
    site = shared_dir / "site"  # root's, read-only to others: nobody can cache nothing there
    shutil.copytree(PACKAGE, site / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for path in (site, *site.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    root_only = shared_dir / "tmp"  # root may write here, nobody may not
    root_only.mkdir(mode=0o755)
    done = subprocess.run(
        [sys.executable, "-c", AS_NOBODY, str(shared_dir)],
        env=base_env(
            NUMBA_CACHE_DIR=str(read_only / "numba"),
            XDG_CACHE_HOME=str(read_only / "cache"),
            HOME=str(read_only / "home"),
            TMPDIR=str(root_only),
            MPLCONFIGDIR=str(shared_dir / "matplotlib"),
        ),
        cwd=shared_dir,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    ok = {"help": 0, "prepare": 0, "verify": 0, "evaluate": 0, "train": 0, "train-fast": 0}
    assert result == {"root": ok | {"numba": False}, "nobody": ok}, done.stdout + done.stderr
    assert (shared_dir / "run" / "report.json").exists()
    for name in ("original", "fast"):  # trained as nobody
        assert list((shared_dir / name / "checkpoints").glob("*.npz")), name
    assert "Traceback" not in done.stderr
    assert not list(site.rglob("*.nbi")), "a kernel cached inside the package"
