"""Grids of runs (methods x datasets x seeds) and the launchers that execute them.

`plan_grid` resolves and validates every run before anything starts, so a bad key or a
missing dataset fails before a single file is written under results/.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmark.config import RunConfig, resolve
from benchmark.data import open_dataset
from benchmark.engine import train_run
from benchmark.errors import UserError

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
        for method in methods:
            for seed in seeds:
                configs.append(resolve(method, ds.name, str(ds.root), defaults, seed, overrides))
    return configs


def run_inline(
    configs: Sequence[RunConfig], results: Path, data_root: Path
) -> list[dict[str, Any]]:
    """Run each config in this process, one after another (skipping finished runs)."""
    return [train_run(cfg, results, data_root) for cfg in configs]


def launch(
    configs: Sequence[RunConfig],
    launcher: str,
    results: Path,
    data_root: Path,
    profile: str | None = None,
    wait: bool = False,
) -> list[dict[str, Any] | None] | None:
    """Run the grid with `launcher`; the summaries (None for a run that did not finish),
    or None when the launcher returns before the runs end (slurm without `wait`)."""
    if launcher == "inline":
        return run_inline(configs, results, data_root)
    if launcher == "local":
        from benchmark.submitit_launch import launch_local

        return launch_local(configs, results, data_root, profile)
    if launcher == "slurm":
        from benchmark.submitit_launch import launch_slurm

        return launch_slurm(configs, results, data_root, profile, wait)
    raise UserError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")
