"""The package's shape, read from its own source (scripts/check_structure.py): imports run
downward through the stages, no import cycle, no module over 300 lines, no function over 80."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import check_structure  # noqa: E402


def test_imports_run_downward_and_modules_stay_small() -> None:
    assert check_structure.problems(ROOT) == []


def test_an_upward_import_a_cycle_and_a_long_module_are_seen(tmp_path: Path) -> None:
    """The check can fail: a tree with each fault is reported, each by name."""
    files = {
        "pipeline/__init__.py": "",
        "pipeline/nn/__init__.py": "",
        "pipeline/nn/bad.py": "from pipeline.training import state\n",  # nn -> training
        "pipeline/training/__init__.py": "",
        "pipeline/training/state.py": "from pipeline.training import loop\n",
        "pipeline/training/loop.py": "from pipeline.training.state import X\n" + "x = 1\n" * 300,
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert check_structure.problems(tmp_path) == [
        "upward import: pipeline.nn.bad (pipeline.nn) imports pipeline.training.state "
        "(pipeline.training)",
        "import cycle: pipeline.training.loop <-> pipeline.training.state",
        "pipeline/training/loop.py: 301 lines (> 300)",
    ]
