"""The container files, proven without an engine: each service of docker-compose.yml and each
container of the Kubernetes CronJob runs on the host, through the image's entrypoint, with the
environment the files and the Dockerfile declare and its volumes mapped to temporary directories
(the read-only ones really read-only), on a slice of the real MNIST.

The validators (hadolint, the Compose spec schema, the Kubernetes schemas) run in `.ci/run`.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.data import prepare, sources
from pipeline.runs import store as runs
from tests.conftest import REPO, write_idx_dir
from tests.test_runs import tree

COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
CRONJOB = yaml.safe_load((REPO / "deploy" / "kubernetes" / "cronjob.yaml").read_text())
MPIJOB = yaml.safe_load((REPO / "deploy" / "kubernetes" / "mpijob.yaml").read_text())
DOCKERFILE = (REPO / "Dockerfile").read_text()
MPI_DOCKERFILE = (REPO / "deploy" / "kubernetes" / "mpi.Dockerfile").read_text()
ENTRYPOINT = REPO / "deploy" / "entrypoint.sh"
# what a user's .env would set: a recipe that learns the slice in seconds, a gate it passes
SETTINGS = {
    "PIPELINE_SOURCE": "idx:/raw",
    "PIPELINE_EPOCHS": "1",
    "PIPELINE_HIDDEN": "30",
    "PIPELINE_LR": "3",
    "PIPELINE_BATCH_SIZE": "10",
    "PIPELINE_MIN_ACCURACY": "0.5",
}


def logical() -> list[tuple[str, str]]:
    """The Dockerfile's instructions in order, (keyword, arguments), continuation lines joined."""
    found, current = [], ""
    for line in DOCKERFILE.splitlines():
        if line.strip().startswith("#"):
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            if current.strip():
                keyword, args = current.strip().split(None, 1)
                found.append((keyword, args))
            current = ""
    return found


def instructions(keyword: str) -> list[str]:
    return [args for name, args in logical() if name == keyword]


def image_env() -> dict[str, str]:
    """The Dockerfile's ENV, as the container starts with it."""
    return dict(pair.split("=", 1) for env in instructions("ENV") for pair in shlex.split(env))


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's `${VAR:-default}` and `${VAR}`: the default when VAR is unset or empty."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m[1]) or m[2] or "", str(value))


class Host:
    """Runs containers' commands on this machine: the image's entrypoint (or the container's
    `command`) and environment, each container with a fresh /tmp (its tmpfs or emptyDir), its
    volumes at temporary directories. The entrypoint is on PATH under its name in the image."""

    def __init__(self, root: Path, numba_seed: Path, extra: dict[str, Path] | None = None) -> None:
        self.root, self.seed, self.extra, self.started = root, numba_seed, extra or {}, 0
        self.bin = root / "bin"
        self.bin.mkdir()
        entrypoint = self.bin / "pipeline-entrypoint"  # where COPY puts it (its PATH name)
        entrypoint.write_text(f'#!/bin/sh\nexec sh {shlex.quote(str(ENTRYPOINT))} "$@"\n')
        entrypoint.chmod(0o755)

    def run(
        self,
        args: list[str],
        env: dict[str, str],
        mounts: dict[str, Path],
        command: list[str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        self.started += 1
        tmp = self.root / f"tmp-{self.started}"
        tmp.mkdir()
        paths = {**self.extra, **mounts, "/tmp": tmp, "/opt/numba-cache": self.seed}

        inside = "|".join(re.escape(p) for p in sorted(paths, key=len, reverse=True))
        pattern = rf"(^|[:=])({inside})(?=/|$)"

        def host(value: str) -> str:  # container paths -> host paths, in options and values
            return re.sub(pattern, lambda m: f"{m[1]}{paths[m[2]]}", value)  # one pass

        declared = {**image_env(), **env}
        environment = {k: host(v) for k, v in declared.items()}
        environment["PATH"] = f"{self.bin}:{Path(sys.executable).parent}:{os.environ['PATH']}"
        command = command or json.loads(instructions("ENTRYPOINT")[0])
        return subprocess.run(
            [*command, *(host(a) for a in args)],
            env=environment,
            cwd=tmp,
            capture_output=True,
            text=True,
        )


@pytest.fixture
def numba_seed(warm_cache: Path) -> Path:
    """The image's build step: every kernel compiled into a cache outside the package."""
    return warm_cache


@pytest.fixture
def read_only() -> Iterator[Callable[[Path], Path]]:
    """`read_only(directory)`: a read-only view of it. Root ignores permission bits, so as root
    a read-only bind mount; otherwise the view is the directory itself, made unwritable."""
    mounted: list[Path] = []
    chmodded: list[Path] = []

    def view(directory: Path) -> Path:
        if os.geteuid() != 0:
            for path in [directory, *directory.rglob("*")]:
                path.chmod(path.stat().st_mode & ~0o222)
            chmodded.append(directory)
            return directory
        target = directory.with_name(directory.name + "-ro")
        target.mkdir(exist_ok=True)
        subprocess.run(["mount", "--bind", str(directory), str(target)], check=True)
        mounted.append(target)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True)
        return target

    yield view
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], check=True)
    for directory in chmodded:
        for path in [directory, *directory.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)


@pytest.fixture
def slices(tmp_path: Path, real_mnist: sources.RawDataset) -> tuple[Path, Path]:
    """Two IDX slices of the real MNIST (train images 0-3,000 and 3,000-6,000)."""
    train, test = real_mnist.splits["train"], real_mnist.splits["test"]
    test_split = (test.images[:1000].reshape(-1, 28, 28), test.labels[:1000])
    first, second = (
        write_idx_dir(
            tmp_path / f"raw-{i}",
            (train.images[rows].reshape(-1, 28, 28), train.labels[rows]),
            test_split,
        )
        for i, rows in enumerate((slice(0, 3000), slice(3000, 6000)))
    )
    return first, second


def swap_in(shard_dir: Path, raw: Path) -> None:
    """What an operator does to swap a data set in: prepare it aside, replace the volume's set."""
    staged = shard_dir.with_name("staged")
    prepare.prepare(staged, sources.load(f"idx:{raw}", name="mnist-slice"))
    for path in shard_dir.iterdir():
        path.unlink()
    for path in staged.iterdir():
        shutil.copy2(path, shard_dir / path.name)


def first_run_untouched(runs_dir: Path, before: dict[str, Any]) -> None:
    after = tree(runs_dir)
    changed = [p for p in before if p not in (".", runs.LATEST) and after.get(p) != before[p]]
    assert not changed


# --- docker-compose.yml -------------------------------------------------------------------


def chain(target: str) -> list[str]:
    """`target` and what it depends on, dependencies first (the order compose starts them)."""
    order: list[str] = []

    def visit(name: str) -> None:
        for dependency, rule in COMPOSE["services"][name].get("depends_on", {}).items():
            assert rule == {"condition": "service_completed_successfully"}
            visit(dependency)
        if name not in order:
            order.append(name)

    visit(target)
    return order


def compose_trigger(
    host: Host, volumes: dict[str, Path], view: Callable[[Path], Path], target: str = "runs"
) -> list[subprocess.CompletedProcess[str]]:
    """`docker compose up` (or `run --rm job`): each service once, stopping at a failure."""

    def mounts_of(name: str) -> dict[str, Path]:
        mounts = {}
        for volume in COMPOSE["services"][name]["volumes"]:
            source, inside, *mode = interpolate(volume, {}).split(":")
            directory = volumes[source]
            mounts[inside] = view(directory) if mode == ["ro"] else directory
        return mounts

    # a container path is the same string in every service (`PIPELINE_SOURCE=idx:/raw` names
    # the set's source also where /raw is not mounted): each maps to one host path everywhere
    everywhere = {k: v for name in chain(target) for k, v in mounts_of(name).items()}
    done = []
    for name in chain(target):
        service = COMPOSE["services"][name]
        assert service["restart"] == "no" and service["read_only"] is True
        env = {k: interpolate(v, SETTINGS) for k, v in service["environment"].items()}
        done.append(host.run(service["command"], env, {**everywhere, **mounts_of(name)}))
        assert done[-1].returncode == 0, (name, done[-1].stdout, done[-1].stderr)
    return done


def test_compose_chain_runs_once_then_is_up_to_date_then_takes_a_swapped_data_set(
    tmp_path: Path,
    numba_seed: Path,
    slices: tuple[Path, Path],
    read_only: Callable[[Path], Path],
) -> None:
    assert chain("runs") == ["prepare", "train", "evaluate", "runs"]
    volumes = {"./raw": slices[0], "./shards": tmp_path / "shards", "./runs": tmp_path / "runs"}
    volumes["./shards"].mkdir()
    volumes["./runs"].mkdir()
    host = Host(tmp_path, numba_seed)

    first = compose_trigger(host, volumes, read_only)
    runs_dir = volumes["./runs"]
    [run] = runs._ours(runs_dir)
    assert (run / "report.json").is_file() and os.readlink(runs_dir / runs.LATEST) == run.name
    table = first[-1].stdout
    assert run.name[11:] in table and "finished" in table and "latest" in table

    before, shards_before = tree(runs_dir), tree(volumes["./shards"])
    again = compose_trigger(host, volumes, read_only)
    assert all("up to date" in step.stdout for step in again[1:3])
    assert tree(runs_dir) == before and tree(volumes["./shards"]) == shards_before

    swap_in(volumes["./shards"], slices[1])
    compose_trigger(host, volumes, read_only)
    first_run_untouched(runs_dir, before)
    older, newer = runs._ours(runs_dir)
    assert older == run and os.readlink(runs_dir / runs.LATEST) == newer.name

    # the whole job in one container: the same data and recipe, so nothing to do
    [job] = compose_trigger(host, volumes, read_only, target="job")
    assert "up to date" in job.stdout


def test_compose_settings_come_from_the_environment_with_defaults() -> None:
    for name, service in COMPOSE["services"].items():
        for key, value in service["environment"].items():
            if key.startswith("PIPELINE_"):
                assert re.fullmatch(rf"\$\{{{key}:-[^}}]+\}}", value), (name, key)
    assert interpolate(COMPOSE["services"]["job"]["environment"]["PIPELINE_EPOCHS"], {}) == "10"


# --- the Kubernetes CronJob ---------------------------------------------------------------


def test_cronjob_is_a_safe_schedule() -> None:
    spec = CRONJOB["spec"]
    assert CRONJOB["kind"] == "CronJob" and spec["concurrencyPolicy"] == "Forbid"
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in pod["initContainers"] + pod["containers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert "command" not in container  # the image's entrypoint runs, as in the test below
    claims = {v["name"]: v for v in pod["volumes"]}
    assert {"shards", "runs"} <= {n for n, v in claims.items() if "persistentVolumeClaim" in v}
    [main] = pod["containers"]
    assert main["args"][:3] == ["run", "--runs", "/runs"]


def cron_tick(host: Host, volumes: dict[str, Path], view: Callable[[Path], Path]) -> str:
    """One Job of the CronJob: the init container, then the main one, with a pod's /tmp."""
    pod = CRONJOB["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    output = ""
    for container in pod["initContainers"] + pod["containers"]:
        mounts = {
            m["mountPath"]: view(volumes[m["name"]]) if m.get("readOnly") else volumes[m["name"]]
            for m in container["volumeMounts"]
            if m["name"] in volumes
        }
        env = {e["name"]: e["value"] for e in container.get("env", [])}
        # the slice's source, recipe and gate, as a kustomize patch would set them
        env.update({k: v for k, v in SETTINGS.items() if k in env})
        done = host.run(container["args"], env, mounts)
        assert done.returncode == 0, (container["name"], done.stdout, done.stderr)
        output += done.stdout
    return output


def test_cronjob_containers_run_once_then_are_up_to_date_then_take_a_swapped_data_set(
    tmp_path: Path,
    numba_seed: Path,
    slices: tuple[Path, Path],
    read_only: Callable[[Path], Path],
) -> None:
    volumes = {"shards": tmp_path / "shards", "runs": tmp_path / "runs", "raw": slices[0]}
    volumes["shards"].mkdir()
    volumes["runs"].mkdir()
    # the slice's IDX files where PIPELINE_SOURCE points (the manifest mounts no raw volume)
    host = Host(tmp_path, numba_seed, extra={"/raw": slices[0]})
    output = cron_tick(host, volumes, read_only)
    assert any('"event": "promoted"' in line for line in output.splitlines())
    runs_dir = volumes["runs"]
    assert len(runs._ours(runs_dir)) == 1
    before = tree(runs_dir)
    assert '"event": "up-to-date"' in cron_tick(host, volumes, read_only)
    assert tree(runs_dir) == before
    swap_in(volumes["shards"], slices[1])
    cron_tick(host, volumes, read_only)
    first_run_untouched(runs_dir, before)
    assert len(runs._ours(runs_dir)) == 2


# --- the Dockerfile -----------------------------------------------------------------------


def test_dockerfiles_declare_the_syntax_their_options_need() -> None:
    """`COPY --chmod` (and --link, RUN --mount) need the BuildKit frontend the syntax line names:
    the classic builder rejects them."""
    for text in (DOCKERFILE, MPI_DOCKERFILE):
        if re.search(r"^(COPY|ADD|RUN)\s.*--(chmod|link|mount)", text, re.MULTILINE):
            assert re.match(r"# syntax=docker/dockerfile:1(\.\d+)*\n", text), text[:80]


def test_dockerfile_pins_its_base_runs_unprivileged_and_warms_the_kernel() -> None:
    python = re.fullmatch(r"python:(\d+\.\d+)\.\d+-slim-\w+", instructions("FROM")[0])
    assert python is not None
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == f">={python.group(1)}"
    for copy in instructions("COPY"):
        *sources_, _target = (a for a in copy.split() if not a.startswith("--"))
        for source in sources_:
            assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    assert project["scripts"]["pipeline"] == "pipeline.cli:app"
    assert instructions("ENTRYPOINT") == ['["pipeline-entrypoint"]']
    # the kernel is compiled from /, into a cache outside the package the entrypoint seeds from
    steps = logical()
    [warm] = [i for i, (k, a) in enumerate(steps) if "python -m pipeline.nn.warm" in a]
    assert "NUMBA_CACHE_DIR=/opt/numba-cache" in steps[warm][1]
    assert [a for k, a in steps[:warm] if k == "WORKDIR"][-1] == "/"
    assert instructions("USER") == ["1000:1000"]
    env = image_env()
    assert env["PIPELINE_NUMBA_CACHE_SEED"] == "/opt/numba-cache"
    for key in ("HOME", "NUMBA_CACHE_DIR", "MPLCONFIGDIR"):  # writable on a read-only root
        assert env[key].startswith("/tmp")


# --- the MPIJob ---------------------------------------------------------------------------

CACHE_ENV = {"NUMBA_CACHE_DIR", "PIPELINE_NUMBA_CACHE_SEED", "HOME"}


def test_mpijob_ranks_start_through_the_entrypoint_and_load_the_warmed_kernels(
    tmp_path: Path, numba_seed: Path, small_idx: Path
) -> None:
    """As the compose services and the CronJob's containers do: each rank runs the image's
    entrypoint with the image's cache environment, so it loads the kernels compiled at build
    time. Two ranks in one pod here (one /tmp): both seed the cache at once, neither compiles."""
    replicas = MPIJOB["spec"]["mpiReplicaSpecs"]
    launcher = replicas["Launcher"]["template"]["spec"]["containers"][0]
    worker = replicas["Worker"]["template"]["spec"]["containers"][0]
    for container in (launcher, worker):
        assert not {e["name"] for e in container.get("env", [])} & CACHE_ENV
    args = list(launcher["args"])
    assert not {args[i + 1] for i, a in enumerate(args) if a == "-genv"} & CACHE_ENV
    assert not re.search(r"^ENV\b", MPI_DOCKERFILE, re.MULTILINE)  # the base image's ENV holds
    volumes = {"shards": tmp_path / "shards", "runs": tmp_path / "runs"}
    prepare.prepare(volumes["shards"], sources.load(f"idx:{small_idx}", name="small"))
    volumes["runs"].mkdir()
    mounts = {m["mountPath"]: volumes[m["name"]] for m in worker["volumeMounts"]}
    assert args[:2] == ["-n", "4"]
    args[1] = "2"  # this machine's cores; the recipe's shape shrunk to the small set
    args += ["--epochs", "1", "--hidden", "8", "--batch-size", "32"]
    host = Host(tmp_path, numba_seed)
    done = host.run(args, {}, mounts, command=launcher["command"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("trained 1 epochs") == 1
    cache = tmp_path / "tmp-1" / "numba-cache"  # the image's $NUMBA_CACHE_DIR, under /tmp

    def contents(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}

    assert contents(cache) == contents(numba_seed)  # seeded, nothing compiled or rewritten
    assert not [p for p in cache.parent.iterdir() if p.name.startswith("numba-cache.")]
