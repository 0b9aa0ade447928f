"""A few seeded cases of each form of scripts/fuzz_sources.py (the script runs hundreds): every
case a clean success or one `error:` line, nothing written, within the RSS bound."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from tests.conftest import REPO


# (form, cases, seed): npz at 40/0 and checkpoint at 40/1 broke 4 and 3 times on the main before
# the bounded zip reader (a traceback from zipfile or numpy's header parser, a 1 GB label bincount)
@pytest.mark.parametrize(
    ("form", "count", "seed"),
    [("csv", 12, 19), ("png", 12, 19), ("npz", 40, 0), ("checkpoint", 40, 1)],
)
def test_fuzzed_sources_succeed_or_fail_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, form: str, count: int, seed: int
) -> None:
    monkeypatch.syspath_prepend(REPO / "scripts")  # the script, fuzzlib and benchlib
    fuzz = importlib.import_module("fuzz_sources")
    tally = fuzz.run_form(next(f for f in fuzz.FORMS if f.name == form), count, seed, tmp_path)
    assert tally.failures == [] and sum(tally.outcomes.values()) == count
    assert tally.outcomes["error"] > 0  # the mutations do break things
