"""The container files, checked without a Docker engine: what they run must be a valid job."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import typer
import yaml

from pipeline.cli import app

REPO = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
DOCKERFILE = (REPO / "Dockerfile").read_text()


def instructions(keyword: str) -> list[str]:
    """The arguments of every `keyword` instruction, continuation lines joined."""
    logical, current = [], ""
    for line in DOCKERFILE.splitlines():
        if line.strip().startswith("#"):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    return [entry.split(None, 1)[1] for entry in logical if entry.split(None, 1)[:1] == [keyword]]


def test_dockerfile_copies_what_exists_and_runs_the_console_script() -> None:
    python = re.fullmatch(r"python:(\d+\.\d+)-slim", instructions("FROM")[0])
    assert python is not None
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == f">={python.group(1)}"
    for copy in instructions("COPY"):
        *sources, _target = copy.split()
        for source in sources:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    assert project["scripts"]["pipeline"] == "pipeline.cli:app"
    assert instructions("ENTRYPOINT") == ['["pipeline"]']
    # the kernel is warmed from /, so the installed package (not /app/pipeline) is compiled
    assert any("cd / && python -m pipeline.nn.kernels" in run for run in instructions("RUN"))
    assert instructions("USER") == ["pipeline"]


def test_every_compose_command_parses_as_a_pipeline_command() -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    services = COMPOSE["services"]
    assert set(services) == {"job", "prepare", "train", "evaluate"}
    for name, service in services.items():
        assert service["build"] == "."
        subcommand, *args = service["command"]
        command = group.get_command(typer.Context(group), subcommand)
        assert command is not None, f"{name}: no command {subcommand!r}"
        command.make_context(subcommand, list(args))  # raises on unknown or missing options


def test_stages_share_the_shard_volume_read_only_after_prepare() -> None:
    services = COMPOSE["services"]
    assert "shards" in COMPOSE["volumes"]
    for name in ("train", "evaluate"):
        assert "shards:/shards:ro" in services[name]["volumes"]
        assert "./runs:/runs" in services[name]["volumes"]
    assert "shards:/shards" in services["prepare"]["volumes"]
    prepared = services["prepare"]["command"][services["prepare"]["command"].index("--out") + 1]
    for name in ("train", "evaluate", "job"):
        command = services[name]["command"]
        assert command[command.index("--data") + 1] == prepared
    gated = [s for s in services.values() if "--min-accuracy" in s["command"]]
    assert len(gated) == 2  # the job and evaluate stop a schedule on a bad model (exit 3)
