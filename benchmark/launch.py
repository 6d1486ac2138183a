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
from benchmark.fingerprint import data_fingerprint

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


def check_devices(configs: Sequence[RunConfig]) -> None:
    """UserError when a run asks for a CUDA device this machine does not have (checked
    for the launchers that train here; a Slurm job's node is checked by the job)."""
    import torch

    for cfg in configs:
        device = str(cfg.settings["device"])
        if not device.startswith("cuda"):
            continue
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= count:
            have = f"{count} CUDA device(s)" if count else "no CUDA GPU visible"
            raise UserError(
                f"--device {device}: this machine has {have}; use --device cpu (or auto), "
                "or run on a GPU node (--launcher slurm)"
            )


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
        from benchmark.submitit_launch import launch_local

        check_devices(configs)
        return launch_local(configs, results, data_root, profile, **flags)
    if launcher == "slurm":
        from benchmark.submitit_launch import launch_slurm

        return launch_slurm(configs, results, data_root, profile, wait, **flags)
    raise UserError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")
