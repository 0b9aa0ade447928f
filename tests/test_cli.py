"""The CLI's face: help text, --version, what `import pipeline.cli` loads, exit codes, signals.

The commands' own behaviour is tested beside their stages (test_cli_prepare, test_train,
test_evaluate); this file holds what every command shares.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.core import TyperGroup, TyperOption
from typer.testing import CliRunner

from pipeline import __version__
from pipeline.cli import app
from pipeline.cli.errors import EXIT_INTERRUPTED, EXIT_TERMINATED, EXIT_USAGE, FLAGS
from pipeline.cli.options import HELP, NOT_OPTIONS
from pipeline.config import TrainConfig, field_metas
from pipeline.data import Manifest
from pipeline.errors import ConfigError
from pipeline.runs import store as runs
from pipeline.runs.rundir import RunDir
from pipeline.training import checkpoint

runner = CliRunner()
_group = typer.main.get_command(app)
assert isinstance(_group, TyperGroup)
GROUP: TyperGroup = _group


def one_line(text: str) -> str:
    return " ".join(text.split())


def shown_default(option: TyperOption) -> str | None:
    """How click prints an option's default, or None when it has none to show."""
    default = option.default
    if default is None or option.required:
        return None
    if option.is_flag and option.secondary_opts:  # --shuffle / --no-shuffle
        names = option.opts if default else option.secondary_opts
        return names[0].lstrip("-")
    if option.is_flag:  # a lone --flag: off unless given, nothing to show
        return None
    if isinstance(default, list | tuple):
        return ", ".join(str(v) for v in default)
    return str(getattr(default, "value", default))


@pytest.mark.parametrize("name", sorted(GROUP.commands))
def test_every_option_shows_its_whole_help_and_its_default(name: str) -> None:
    result = runner.invoke(app, [name, "--help"], terminal_width=200, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = one_line(result.stdout)
    for param in GROUP.commands[name].params:
        if not isinstance(param, TyperOption) or param.hidden:
            continue
        assert param.help and one_line(param.help) in text, (name, param.name, text)
        default = shown_default(param)
        env = f"env var: {param.envvar}; " if param.envvar else ""  # PIPELINE_* (issue 14)
        if default is not None:
            shown = f"{one_line(param.help)} [{env}default: {default}"
            assert f"{shown}]" in text or f"{shown};" in text, (name, param.name)


def test_help_keeps_brackets_as_written() -> None:
    """rich markup once ate "[default: ...]" written in the help text, and hid 500."""
    prepare = one_line(runner.invoke(app, ["prepare", "--help"], terminal_width=200).stdout)
    assert "Dataset name [default: the source's]." in prepare
    assert "[default: the source's, else 0..N-1]" in prepare
    train = one_line(runner.invoke(app, ["train", "--help"], terminal_width=200).stdout)
    assert "repeat for more layers. [env var: PIPELINE_HIDDEN; default: 500]" in train


def test_train_and_run_options_are_the_config_fields_with_its_defaults() -> None:
    defaults = TrainConfig()
    for field in TrainConfig.__dataclass_fields__:
        assert (field in HELP) != (field in NOT_OPTIONS), f"{field}: an option or not?"
    for name in ("train", "run"):
        options = {p.name: p for p in GROUP.commands[name].params}
        for field in HELP:
            default = getattr(defaults, field)
            expected = list(default) if isinstance(default, tuple) else default
            assert options[field].default == expected, (name, field)
            assert field in FLAGS  # a bad value names the option and exits 2


def test_each_config_field_declares_its_choices_recipe_and_resume_rules() -> None:
    """The fields' Specs drive the checks, `runs`' recipe, the resume rules, is_original."""
    original = TrainConfig()
    assert original.is_original and set(field_metas()) == set(TrainConfig.__dataclass_fields__)
    for name, spec in field_metas().items():
        for value in spec.choices:
            _with(original, name, value).check()
        if spec.choices:
            with pytest.raises(ConfigError) as refused:
                _with(original, name, "nonsense").check()
            assert refused.value.param == name
        changed = _with(original, name, _another(getattr(original, name), spec.choices))
        assert changed.is_original != spec.original_only, name
        same_run = runs.run_id("d", changed) == runs.run_id("d", original)
        assert same_run != spec.recipe, name
        assert (name in TrainConfig.RESUMABLE) == spec.resumable, name


def _with(config: TrainConfig, name: str, value: Any) -> TrainConfig:
    changes: dict[str, Any] = {name: value}
    return replace(config, **changes)


def _another(value: object, choices: tuple[str, ...]) -> object:
    """A value of the same type other than `value`."""
    if choices:
        return next(c for c in choices if c != value)
    if isinstance(value, tuple):
        return (*value, 10)
    if isinstance(value, bool):
        return not value
    return value + 1 if isinstance(value, int | float) else f"{value}-other"


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"pipeline {__version__}"


def test_no_command_shows_the_help_without_calling_it_an_error() -> None:
    result = runner.invoke(app, [])
    assert "Usage: " in result.output and "error:" not in result.output
    for name in GROUP.commands:
        assert name in result.output


def test_importing_the_cli_loads_no_compiler_and_no_plotting() -> None:
    code = (
        "import sys, pipeline.cli, pipeline.job.flow; "
        "print([m for m in ('numba', 'matplotlib', 'pipeline.nn.sparse_step') if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--lr", "0"], "--lr"),
        (["--hidden", "0"], "--hidden"),
        (["--seed", "-1"], "--seed"),
        (["--epochs", "0"], "--epochs"),
        (["--batch-size", "0"], "--batch-size"),
        (["--checkpoint-every", "-1"], "--checkpoint-every"),
    ],
)
@pytest.mark.parametrize("command", ["train", "run"])
def test_an_option_out_of_range_is_bad_usage_and_writes_nothing(
    slice_shards: Manifest, tmp_path: Path, command: str, args: list[str], flag: str
) -> None:
    run_dir = tmp_path / "run"
    result = runner.invoke(
        app, [command, "--data", str(slice_shards.directory), "--run-dir", str(run_dir), *args]
    )
    assert result.exit_code == EXIT_USAGE, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag} "), lines
    assert not run_dir.exists()


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        *[
            (["prepare", "--val-fraction", f], "--val-fraction")
            for f in ("1", "-0.1", "nan", "inf")
        ],
        (["run", "--val-fraction", "1"], "--val-fraction"),
        (["prepare", "--val-fraction", "abc"], "--val-fraction"),
        (["prepare", "--source", "csv:a.csv,b.csv", "--image-shape", "0x28"], "--image-shape"),
        (["prepare", "--image-shape", "abc"], "--image-shape"),
        (["run", "--image-shape", "abc"], "--image-shape"),
        *[([c, "--distributed", "bogus"], "--distributed") for c in ("train", "evaluate", "run")],
    ],
)
def test_a_malformed_value_is_bad_usage_before_anything_runs(
    tmp_path: Path, args: list[str], flag: str
) -> None:
    """Refused as the command line is read (issue 19): exit 2, not 1, and nothing read first."""
    out = tmp_path / "out"
    where = ["--out", str(out)] if args[0] == "prepare" else ["--run-dir", str(out)]
    data = ["--data", str(tmp_path / "shards")] if args[0] == "train" else []
    result = runner.invoke(app, [*args, *where, *data])
    assert result.exit_code == EXIT_USAGE, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag} {args[-1]}"), lines
    assert not out.exists()


def _json_lines(text: str) -> list[dict[str, object]]:
    docs = [json.loads(line) for line in text.splitlines()]
    assert all(isinstance(doc, dict) for doc in docs), text
    return docs


@pytest.mark.parametrize("command", sorted(GROUP.commands))
@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--bogus"], {"PIPELINE_LOG_FORMAT": "json"}),
        (["--bogus", "--log-format", "json"], {}),  # given after the error: still JSON
        (["--bogus", "--log-format=json"], {"PIPELINE_LOG_FORMAT": "plain"}),
    ],
)
def test_a_usage_error_is_one_json_object_with_json_logs(
    command: str, args: list[str], env: dict[str, str]
) -> None:
    """Every command: with JSON logs every line is JSON, usage errors included (issue 19)."""
    result = runner.invoke(app, [command, *args], env=env)
    assert result.exit_code == EXIT_USAGE
    assert result.stdout == ""
    [error] = _json_lines(result.stderr)
    assert error["event"] == "error" and "--bogus" in str(error["error"]), error


@pytest.mark.parametrize("command", ["train", "run"])
@pytest.mark.parametrize(
    ("args", "env", "flag"),
    [
        (["--epochs", "0", "--log-format", "json"], {}, "--epochs 0"),
        (["--lr", "-1"], {"PIPELINE_LOG_FORMAT": "json"}, "--lr -1"),
        ([], {"PIPELINE_LOG_FORMAT": "json", "PIPELINE_EPOCHS": "abc"}, "--epochs"),
    ],
)
def test_a_value_out_of_range_is_one_json_object_with_json_logs(
    tmp_path: Path, command: str, args: list[str], env: dict[str, str], flag: str
) -> None:
    """A process of its own each: nothing logged before in the same process sets the format."""
    where = ["--data", str(tmp_path / "shards"), "--run-dir", str(tmp_path / "run")]
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", command, *where, *args],
        capture_output=True,
        text=True,
        env={k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")} | env,
        check=False,
    )
    assert done.returncode == EXIT_USAGE, done.stderr
    assert done.stdout == ""
    [error] = _json_lines(done.stderr)
    assert error["event"] == "error" and flag in str(error["error"]), error
    assert not (tmp_path / "run").exists()


def test_a_bad_file_stays_exit_1(tmp_path: Path) -> None:
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "manifest.json").write_text(json.dumps({"schema": 999}))
    result = runner.invoke(
        app, ["train", "--data", str(tmp_path / "shards"), "--run-dir", str(tmp_path / "run")]
    )
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error:") and "manifest.json" in result.stderr


def _train(data: Path, run_dir: Path, *extra: str) -> list[str]:
    args = ["train", "--data", data, "--run-dir", run_dir, "--checkpoint-every", 50, *extra]
    return [sys.executable, "-m", "pipeline", *map(str, args)]


@pytest.mark.parametrize(
    ("signum", "code", "word"),
    [
        (signal.SIGTERM, EXIT_TERMINATED, "terminated"),
        (signal.SIGINT, EXIT_INTERRUPTED, "interrupted"),
    ],
)
def test_a_signal_stops_training_cleanly_and_says_how_to_go_on(
    slice_shards: Manifest, tmp_path: Path, signum: int, code: int, word: str
) -> None:
    """SIGTERM (containers, schedulers) is handled as Ctrl-C: complete files, one line, a code."""
    run_dir = tmp_path / "run"
    # far more epochs than it can finish before the signal: it is always stopped mid-run
    proc = subprocess.Popen(
        _train(slice_shards.directory, run_dir, "--epochs", "1000"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 600  # a hang guard only; the wait ends on the file
    while RunDir(run_dir).newest_checkpoint() is None:
        assert proc.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.01)
    proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == code, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{word}: every file written is complete")
    assert "--resume" in lines[0]
    assert [p for p in run_dir.rglob("*") if p.name.endswith(".tmp")] == []
    for path in RunDir(run_dir).all_checkpoints():
        checkpoint.load(path)  # complete: loads and checks
    resumed = subprocess.run(
        _train(slice_shards.directory, run_dir, "--epochs", "1", "--resume"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
