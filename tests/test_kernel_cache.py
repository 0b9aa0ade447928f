"""Every numba kernel of the package is declared one way (`compile_cache.jit`), so every one
follows the README's cache rule; and `python -m pipeline.nn.warm` (the image's build step)
compiles every one, so no preset compiles anything after it.

`fused.py` once declared its kernels with `numba.njit(cache=True)` before the cache directory
was chosen: numba then looked for a cache beside the installed package, and a user who could
write neither it nor ~/.cache got `RuntimeError: cannot cache function '_splitmix'` from
`pipeline train`. And the image warmed only the original recipe's kernel.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import pipeline
from pipeline.cli import app
from tests.test_cli_environment import cache_files

PACKAGE = Path(pipeline.__file__).parent
RULE = PACKAGE / "nn" / "compile_cache.py"


def declared_kernels() -> dict[str, bool]:
    """{"module.function": inlined} for every function of the package decorated with
    `compile_cache.jit(...)` (imported as `jit` or reached as `compile_cache.jit`)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.FunctionDef):
                continue
            for decorator in node.decorator_list:
                if not isinstance(decorator, ast.Call):
                    continue
                name = ast.unparse(decorator.func)
                if name in ("jit", "compile_cache.jit"):
                    inline = any(k.arg == "inline" for k in decorator.keywords)
                    found[f"{path.stem}.{node.name}"] = inline
    return found


def direct_numba_uses() -> list[str]:
    """Every place outside compile_cache.py that imports numba, or imports a `jit` other
    than compile_cache's: the ways to declare a kernel that skip the cache rule."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path == RULE:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
                imported = {a.name for a in node.names}
                if imported & {"jit", "njit"} and node.module != "pipeline.nn.compile_cache":
                    names.append("jit")
            if isinstance(node, ast.Import | ast.ImportFrom) and any(
                n == "jit" or n == "numba" or n.startswith("numba.") for n in names
            ):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    return found


def test_every_kernel_is_declared_through_compile_cache() -> None:
    assert direct_numba_uses() == []
    kernels = declared_kernels()
    # the scan sees the kernels it must: both modules, the inlined helpers too
    assert {"sgd_kernel.steps", "fused.draw_keep", "fused._splitmix"} <= set(kernels)


def test_the_warm_up_caches_every_kernel(warm_cache: Path) -> None:
    entries = {p.name for p in warm_cache.rglob("*.nbi")}
    for kernel, inlined in declared_kernels().items():
        if inlined:  # inline="always": numba compiles it into each caller, never on its own
            continue
        assert any(e.startswith(f"{kernel}-") for e in entries), f"{kernel}: no cache entry"


@pytest.mark.parametrize("preset", ["original", "fast", "best"])
def test_no_preset_compiles_after_the_warm_up(
    preset: str, warm_cache: Path, small_idx: Path, tmp_path: Path
) -> None:
    data = tmp_path / "shards"
    ready = CliRunner().invoke(app, ["prepare", "--out", str(data), "--source", f"idx:{small_idx}"])
    assert ready.exit_code == 0, ready.output
    cache = shutil.copytree(warm_cache, tmp_path / "cache")
    before = cache_files(cache)
    args = ["train", "--data", str(data), "--run-dir", str(tmp_path / "run"), "--preset", preset]
    args += ["--epochs", "1", "--batch-size", "32"]  # the preset's kernels, on 250 samples
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        env={**os.environ, "NUMBA_CACHE_DIR": str(cache)},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert cache_files(cache) == before  # loaded, nothing compiled: no entry added or rewritten
