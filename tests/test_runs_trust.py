"""What the scheduled mode may trust: only runs it can prove are its own, one rule of "done",
every option taking effect, strict JSON. Real triggers (CliRunner) on the real-MNIST slice."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data import open_set
from pipeline.runs import store as runs
from tests.test_distributed import MPIEXEC, job, run_job
from tests.test_runs import FAST, tree, trigger

runner = CliRunner()


def _no_constant(name: str) -> None:
    raise AssertionError(f"{name} in strict JSON")


def _runs_json(runs_dir: Path) -> list[dict[str, object]]:
    result = runner.invoke(app, ["runs", str(runs_dir), "--json"])
    assert result.exit_code == 0, result.output
    rows: list[dict[str, object]] = json.loads(result.output, parse_constant=_no_constant)
    return rows


def test_keep_prunes_only_runs_it_proves_are_ours_and_never_a_symlink(
    tmp_path: Path, slice_set: Path
) -> None:
    runs_dir = tmp_path / "runs"
    assert trigger(runs_dir, slice_set)[0] == 0
    [ours] = runs._ours(runs_dir)
    outcome = (ours / runs.OUTCOME).read_bytes()
    foreign = {  # run-named directories holding someone's files, each with an outcome.json
        "2020-01-01-111111111111": b'{"not": "ours"}',
        "2020-01-02-222222222222": b"",
        # a copy of our run under another id: its run.json hashes to the id it was made under
        "2020-01-03-333333333333": (ours / "run.json").read_bytes(),
    }
    for name, run_json in foreign.items():
        (runs_dir / name).mkdir()
        (runs_dir / name / "run.json").write_bytes(run_json)
        (runs_dir / name / runs.OUTCOME).write_bytes(outcome)
        (runs_dir / name / "thesis.tex").write_text("the user's")
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(ours, elsewhere)  # a run of ours, but reached through a symlink
    (runs_dir / f"2020-01-04-{ours.name[-12:]}").symlink_to(elsewhere)
    before = tree(tmp_path / "elsewhere")
    code, output = trigger(runs_dir, slice_set, "--seed", "1", "--keep", "1")
    assert code == 0, output
    for name in foreign:
        assert (runs_dir / name / "thesis.tex").read_text() == "the user's"
    assert (runs_dir / f"2020-01-04-{ours.name[-12:]}").is_symlink()
    assert tree(elsewhere) == before
    # the newest run of ours is latest and kept; the older one, beyond --keep 1, is pruned
    [kept] = [p for p in runs._ours(runs_dir) if runs.proven(p)]
    assert os.readlink(runs_dir / runs.LATEST) == kept.name
    assert not ours.exists() and f"pruned: {ours}" in output


def test_a_run_left_unpromoted_is_promoted_by_the_next_trigger(
    tmp_path: Path, slice_set: Path
) -> None:
    runs_dir = tmp_path / "runs"
    runs_dir.mkdir()
    (runs_dir / runs.LATEST).write_text("a user's file where the link goes")
    code, output = trigger(runs_dir, slice_set, "--min-accuracy", "0.5")
    assert code == 1 and "latest: exists and is not a symlink" in output
    [run] = runs._ours(runs_dir)
    assert not (run / runs.OUTCOME).exists()  # not recorded: not done
    (runs_dir / runs.LATEST).rename(tmp_path / "moved-away")
    code, output = trigger(runs_dir, slice_set, "--min-accuracy", "0.5")
    assert code == 0 and "up to date" not in output and "promoted" in output, output
    assert "trained" not in output  # its report stood: recorded and promoted, not retrained
    assert os.readlink(runs_dir / runs.LATEST) == run.name
    assert [r.status for r in runs.listing(runs_dir)] == ["finished"]
    code, output = trigger(runs_dir, slice_set, "--min-accuracy", "0.5")
    assert code == 0 and "up to date" in output


@pytest.mark.parametrize(
    "edited",
    [
        b"{}",
        b'{"accuracy": "high", "min_accuracy": null, "passed": true, "seconds": 1, "finished": ""}',
        b'{"accuracy": NaN, "min_accuracy": null, "passed": true, "seconds": 1, "finished": ""}',
    ],
)
def test_an_edited_outcome_is_damaged_for_every_command(
    tmp_path: Path, slice_set: Path, edited: bytes
) -> None:
    runs_dir = tmp_path / "runs"
    assert trigger(runs_dir, slice_set)[0] == 0
    [run] = runs._ours(runs_dir)
    (run / runs.OUTCOME).write_bytes(edited)
    [row] = _runs_json(runs_dir)  # strict JSON: no NaN, no Infinity
    assert row["status"] == "damaged" and row["accuracy"] is None
    table = runner.invoke(app, ["runs", str(runs_dir)])
    assert table.exit_code == 0 and "damaged" in table.output, table.output
    before = tree(runs_dir)
    code, output = trigger(runs_dir, slice_set)
    assert code == 1, output
    [line] = output.splitlines()[1:]
    assert line.startswith(f"error: {run / runs.OUTCOME}: not an outcome of ours")
    assert tree(runs_dir) == before
    assert runs.prune(runs_dir, keep=0) == [] and run.is_dir()


def test_runs_options_take_effect_or_are_refused(
    tmp_path: Path, slice_set: Path, mnist_slice_idx: Path
) -> None:
    runs_dir = tmp_path / "runs"
    # a set without a val split in --data and --val-fraction: refused, naming the option
    code, output = trigger(runs_dir, slice_set, "--val-fraction", "0.2")
    assert code == 1 and "--val-fraction" in output and "val_fraction 0.0" in output, output
    bad = trigger(runs_dir, slice_set, "--distributed", "bogus")  # exit 1 or 2: errors.py's
    assert bad[0] in (1, 2) and bad[1].startswith("error: --distributed bogus"), bad
    assert not runs_dir.exists() or not runs._ours(runs_dir)
    # an empty --data is prepared with the val split asked for
    data = tmp_path / "data"
    source = f"idx:{mnist_slice_idx}"
    code, output = trigger(runs_dir, data, "--source", source, "--val-fraction", "0.2")
    assert code == 0, output
    assert set(open_set(data).splits) == {"train", "val", "test"}


def test_mpiexec_makes_one_distributed_trigger(tmp_path: Path, slice_set: Path) -> None:
    assert MPIEXEC is not None, "no mpiexec: pip install -e '.[dev]' (it has the mpi extra)"
    runs_dir = tmp_path / "runs"
    args = ["run", "--runs", str(runs_dir), "--data", str(slice_set), *FAST]
    args[args.index("--batch-size") + 1] = "32"  # 16 rows a rank, the least MPI takes
    done: subprocess.CompletedProcess[str] = run_job(job(MPIEXEC, 2, *args))
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("promoted") == 1 and "busy" not in done.stderr
    [row] = runs.listing(runs_dir)
    assert row.status == "finished" and row.latest


def test_a_run_that_chose_an_earlier_epoch_is_up_to_date(
    tmp_path: Path, mnist_slice_idx: Path
) -> None:
    """Done is one rule in both modes: trained to its end, the report of the checkpoint
    evaluate chooses (here the best val epoch, 2 of 3), and, with --runs, the outcome."""
    source = ["--source", f"idx:{mnist_slice_idx}", "--val-fraction", "0.2"]
    recipe = ["--epochs", "3", "--hidden", "16", "--lr", "6", "--batch-size", "10"]
    run_dir = tmp_path / "run"
    args = ["run", "--run-dir", str(run_dir), *source, *recipe]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    report = json.loads((run_dir / "report.json").read_text())
    assert report["checkpoint"]["epoch"] == 2  # the chosen epoch is not the last
    before = tree(run_dir)
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "up to date" in again.output, again.output
    assert tree(run_dir) == before
