"""Shared fixtures: a session-wide data root with the generated datasets, CLI helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))

# Modules that register more methods or datasets for this session, before the test
# modules are collected (their parametrisations read the registries): tests/test_adding.py
# runs the registry-parametrised tests on the docs' "Adding a method" example this way.
EXTRA_MODULES = "BENCH_TEST_EXTRA_MODULES"


def _import_extra_modules() -> None:
    import importlib.util

    for path in filter(None, os.environ.get(EXTRA_MODULES, "").split(os.pathsep)):
        spec = importlib.util.spec_from_file_location(Path(path).stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


_import_extra_modules()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared datasets shared by the whole session (generated ones made on first use)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def synth(data_root: Path):
    from benchmark.train.data import open_dataset

    ds, _ = open_dataset("synth", data_root)
    return ds


def _free_ports(n: int) -> list[int]:
    """n TCP ports nobody listens on now (the test cluster's daemons take them)."""
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory: pytest.TempPathFactory):
    """A real single-node Slurm cluster (slurm/testcluster/start.sh) for this session, on
    free ports so that a `make slurm-up` cluster does not clash; SLURM_CONF is exported to
    this process and its children. Fails (never skips) when the cluster cannot start."""
    import subprocess

    root = Path(__file__).resolve().parents[1] / "slurm" / "testcluster"
    directory = tmp_path_factory.mktemp("slurm")
    ctld, slurmd, dbd = _free_ports(3)
    env = {
        **os.environ,
        "SLURMCTLD_PORT": str(ctld),
        "SLURMD_PORT": str(slurmd),
        "SLURMDBD_PORT": str(dbd),
    }
    try:
        out = subprocess.run(
            [str(root / "start.sh"), str(directory)],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.fail(f"the Slurm test cluster did not start: {exc}")
    last = (out.stdout.strip().splitlines() or [""])[-1]
    if out.returncode != 0 or not last.startswith("export SLURM_CONF="):
        subprocess.run([str(root / "stop.sh"), str(directory)], capture_output=True, timeout=120)
        pytest.fail(
            "the Slurm test cluster did not start (needs root and `make install`'s Debian "
            f"packages):\n{out.stdout}\n{out.stderr}"
        )
    conf = last.split("=", 1)[1]
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield {"SLURM_CONF": conf, "dir": directory}
    finally:
        subprocess.run([str(root / "stop.sh"), str(directory)], capture_output=True, timeout=120)
        if previous is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = previous
