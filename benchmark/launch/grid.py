"""Grids of runs (methods x datasets x seeds) and the launchers that execute them.

`plan_grid` resolves and validates every run before anything starts, so a bad key or a
missing dataset fails before a single file is written under results/.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmark.errors import UserError
from benchmark.train.config import RunConfig, resolve
from benchmark.train.data import open_dataset
from benchmark.train.devices import check_devices
from benchmark.train.engine import train_run
from benchmark.train.fingerprint import data_fingerprint

LAUNCHERS = ("inline", "local", "slurm")


def plan_grid(
    methods: Sequence[str],
    datasets: Sequence[str],
    seeds: Sequence[int],
    overrides: Mapping[str, Any],
    data_root: Path,
) -> list[RunConfig]:
    """Every run of the grid, resolved; raises a user error before any run starts."""
    configs = []
    for ref in datasets:
        ds, defaults = open_dataset(ref, data_root)
        data = data_fingerprint(ds.root, ds.meta)
        for method in methods:
            for seed in seeds:
                configs.append(
                    resolve(method, ds.name, str(ds.root), defaults, seed, overrides, data)
                )
    return configs


def run_inline(
    configs: Sequence[RunConfig],
    results: Path,
    data_root: Path,
    restart: bool = False,
    rerun_stale: bool = False,
) -> list[dict[str, Any]]:
    """Run each config in this process, one after another (skipping finished runs and
    runs another process is training)."""
    return [
        train_run(cfg, results, data_root, restart=restart, rerun_stale=rerun_stale)
        for cfg in configs
    ]


def launch(
    configs: Sequence[RunConfig],
    launcher: str,
    results: Path,
    data_root: Path,
    profile: str | None = None,
    wait: bool = False,
    restart: bool = False,
    rerun_stale: bool = False,
) -> list[dict[str, Any] | None] | None:
    """Run the grid with `launcher`; the summaries (None for a run that did not finish),
    or None when the launcher returns before the runs end (slurm without `wait`).
    `restart` and `rerun_stale` as in `engine.train_run`."""
    flags = {"restart": restart, "rerun_stale": rerun_stale}
    if launcher == "inline":
        if profile:
            raise UserError(
                f"--profile {profile} applies to --launcher slurm (or local); the inline "
                "launcher would ignore it: add --launcher slurm, or drop --profile"
            )
        check_devices(configs)
        return run_inline(configs, results, data_root, **flags)
    if launcher == "local":
        from benchmark.launch.submitit_launch import launch_local

        check_devices(configs)
        return launch_local(configs, results, data_root, profile, **flags)
    if launcher == "slurm":
        from benchmark.launch.submitit_launch import launch_slurm

        return launch_slurm(configs, results, data_root, profile, wait, **flags)
    raise UserError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")
