"""The MPI deployment examples, checked without a cluster: the MPIJob launches a valid pipeline
job on the image its Dockerfile builds, and the Slurm batch script runs as written."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import typer
import yaml

from pipeline.cli import app
from pipeline.data import Manifest
from tests.test_distributed import BIN, MPIEXEC

REPO = Path(__file__).resolve().parents[1]
MPIJOB = yaml.safe_load((REPO / "deploy" / "kubernetes" / "mpijob.yaml").read_text())
DOCKERFILE = (REPO / "deploy" / "kubernetes" / "mpi.Dockerfile").read_text()
SBATCH = REPO / "deploy" / "slurm" / "train.sbatch"


def parses_as_pipeline_command(args: list[str]) -> None:
    group = typer.main.get_command(app)
    assert isinstance(group, typer.core.TyperGroup)
    subcommand, *rest = args
    command = group.get_command(typer.Context(group), subcommand)
    assert command is not None, f"no command {subcommand!r}"
    command.make_context(subcommand, list(rest))  # raises on unknown or missing options


def test_mpijob_launches_one_rank_per_worker_slot_running_a_valid_train() -> None:
    assert MPIJOB["apiVersion"] == "kubeflow.org/v2beta1" and MPIJOB["kind"] == "MPIJob"
    spec = MPIJOB["spec"]
    assert spec["mpiImplementation"] == "MPICH"  # the extra's MPI
    launcher = spec["mpiReplicaSpecs"]["Launcher"]["template"]["spec"]["containers"][0]
    workers = spec["mpiReplicaSpecs"]["Worker"]
    assert launcher["command"] == ["mpiexec"]
    args = list(launcher["args"])
    assert args[:2] == ["-n", str(workers["replicas"] * spec["slotsPerWorker"])]
    args = args[2:]
    while args[0] == "-genv":
        args = args[3:]
    assert args[0] == "pipeline-entrypoint"  # the image's entrypoint runs `pipeline`
    parses_as_pipeline_command(args[1:])
    assert args[1] == "train" and "--resume" in args
    assert args[args.index("--distributed") + 1] == "mpi"
    # the shards and the run directory live on volumes every worker mounts
    worker = workers["template"]["spec"]
    mounts = {m["mountPath"]: m for m in worker["containers"][0]["volumeMounts"]}
    data, run_dir = args[args.index("--data") + 1], args[args.index("--run-dir") + 1]
    assert any(data.startswith(path) for path in mounts)
    assert any(run_dir.startswith(p) and not m.get("readOnly") for p, m in mounts.items())
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in worker["volumes"]}
    assert {m["name"] for m in mounts.values()} <= set(claims)


def test_mpi_image_has_the_extra_as_pyproject_pins_it_and_the_operators_ssh_layout() -> None:
    extra = tomllib.loads((REPO / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["mpi"]
    installed = re.findall(r'"([^"]+)"', re.search(r"pip install[^\n]*", DOCKERFILE)[0])  # type: ignore[index]
    assert installed == extra
    spec = MPIJOB["spec"]
    home = spec["sshAuthMountPath"].removesuffix("/.ssh")
    assert f"--uid 1000 --create-home --home-dir {home} " in DOCKERFILE
    for replica in spec["mpiReplicaSpecs"].values():
        assert replica["template"]["spec"]["securityContext"]["runAsUser"] == 1000
    worker = spec["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    config = worker["args"][worker["args"].index("-f") + 1]
    assert f"> {config}" in DOCKERFILE and "Port 2222" in DOCKERFILE
    assert worker["readinessProbe"]["tcpSocket"]["port"] == 2222


def test_slurm_script_runs_as_written_with_the_environment_slurm_gives(
    slice_shards: Manifest, tmp_path: Path
) -> None:
    assert MPIEXEC is not None, "pip install -e '.[dev]' (it includes the mpi extra)"
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    env = {
        **os.environ,
        "SLURM_NTASKS": "2",
        "SLURM_CPUS_PER_TASK": "1",
        "VENV": str(BIN.parent),
        "DATA": str(slice_shards.directory),
        "RUN_DIR": str(tmp_path / "run"),
    }
    proc = subprocess.run(
        ["bash", str(SBATCH), "--epochs", "1"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("trained 1 epochs") == 1
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-e0001-s0000000.npz").exists()
