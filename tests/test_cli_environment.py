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
from tests.conftest import REPO

PACKAGE = Path(pipeline.__file__).parent


def cache_files(root: Path) -> dict[Path, float]:
    return {p: p.stat().st_mtime for p in (*root.rglob("*.nbi"), *root.rglob("*.nbc"))}


def warm(env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -m pipeline.nn.sparse_step`: compiles (or loads) the kernel for both dtypes."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.nn.sparse_step"],
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


# As user nobody, with no writable home or cache: the commands that do not train must work and
# must not even import numba. The interpreter may live where nobody cannot read (under /root),
# so the child first runs every command as root on copies (every module it needs gets
# imported), then gives up root and runs them again on the originals.
AS_NOBODY = textwrap.dedent(
    """
    import json, os, shutil, sys
    from pipeline.cli import app
    work = sys.argv[1]

    def commands(tag):
        return {
            "help": ["--help"],
            "prepare": ["prepare", "--out", f"{work}/shards{tag}", "--source", f"idx:{work}/raw"],
            "verify": ["verify", f"{work}/shards{tag}"],
            "evaluate": ["evaluate", "--run-dir", f"{work}/run{tag}", "--data", f"{work}/trained"],
        }

    def run_all(tag):
        codes = {}
        for name, args in commands(tag).items():
            try:
                app(args, prog_name="pipeline")
            except SystemExit as exc:
                codes[name] = exc.code
        return codes

    shutil.copytree(f"{work}/run", f"{work}/run-root")
    as_root = run_all("-root")
    os.setgroups([]); os.setgid(65534); os.setuid(65534)
    as_nobody = run_all("")
    print(json.dumps({"root": as_root, "nobody": as_nobody, "numba": "numba" in sys.modules}))
    """
)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory user nobody can reach (pytest's tmp_path sits in a root-only 0700 dir)."""
    directory = Path(tempfile.mkdtemp(prefix="pipeline-nobody-"))
    directory.chmod(0o777)
    yield directory
    shutil.rmtree(directory)


def test_commands_that_do_not_train_work_as_nobody_without_numba(
    small_idx: Path, shared_dir: Path
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
    unwritable = shared_dir / "home"
    unwritable.mkdir(mode=0o555)
    done = subprocess.run(
        [sys.executable, "-c", AS_NOBODY, str(shared_dir)],
        env=base_env(HOME=str(unwritable), XDG_CACHE_HOME=str(unwritable / "cache")),
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    ok = {"help": 0, "prepare": 0, "verify": 0, "evaluate": 0}
    assert result == {"root": ok, "nobody": ok, "numba": False}, done.stdout + done.stderr
    assert (shared_dir / "run" / "report.json").exists()
    assert "Traceback" not in done.stderr
