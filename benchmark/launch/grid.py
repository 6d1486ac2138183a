"""Grids of runs (methods x datasets x seeds) and the launchers that execute them.

`plan_grid` resolves and validates every run before anything starts, so a bad key or a
missing dataset fails before a single file is written under results/.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmark.errors import UserError
from benchmark.train import runstore
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


def done_before_generating(
    methods: Sequence[str],
    datasets: Sequence[str],
    seeds: Sequence[int],
    overrides: Mapping[str, Any],
    data_root: Path,
    results: Path,
) -> tuple[list[RunConfig], list[dict[str, Any]], str] | None:
    """When every requested run is on a generated built-in dataset that is not generated
    under `data_root` yet, and every one of them is already done by this code in
    `results`: their configs, their summaries and a note saying the data was not
    generated here, so that `run` reports them instead of spending the generation on
    nothing. None otherwise (then `plan_grid` generates the data as usual).

    A run id hashes the data's fingerprint, which needs the data. The fingerprint each
    finished run recorded is tried instead: a run matches when resolving the request with
    it gives that run's id. The note names the fingerprint, because this machine has not
    checked that it would generate the same data (a different eSpeak NG makes other audio,
    and then `prepare` and a new run).
    """
    from datasets import get_dataset_spec, list_datasets

    configs: list[RunConfig] = []
    summaries: list[dict[str, Any]] = []
    used: set[str] = set()
    for ref in datasets:
        if ref not in list_datasets() or (data_root / ref / "meta.json").is_file():
            return None
        spec = get_dataset_spec(ref)
        if not spec.generated:
            return None
        for method in methods:
            recorded = _recorded_data(results, ref, method)
            for seed in seeds:
                found = None
                for data in recorded:
                    cfg = resolve(
                        method, ref, str(data_root / ref), spec.defaults, seed, overrides, data
                    )
                    directory = runstore.run_dir(results, cfg)
                    summary = _finished(directory)
                    if summary is not None and runstore.older_code(directory, summary) is None:
                        found = (cfg, summary)
                        break
                if found is None:
                    return None
                configs.append(found[0])
                summaries.append(found[1])
                used.add(f"{ref} {found[0].data_fingerprint}")
    names = " ".join(datasets)
    note = (
        f"every requested run is done; not generating {names}: the runs were made on data "
        f"{', '.join(sorted(used))}, which this machine has not generated (`python -m "
        f"benchmark prepare {names}` generates it; a run after that checks it is the same)"
    )
    return configs, summaries, note


def _recorded_data(results: Path, dataset: str, method: str) -> list[str]:
    """The data fingerprints recorded by the runs of `method` on `dataset` in `results`."""
    found = []
    for config in sorted((results / "runs" / dataset / method).glob(f"*/{runstore.CONFIG}")):
        try:
            data = runstore.read_json(config).get("data_fingerprint")
        except (OSError, runstore.DamagedRunFile):
            continue
        if isinstance(data, str) and data and data not in found:
            found.append(data)
    return found


def _finished(directory: Path) -> dict[str, Any] | None:
    try:
        return runstore.load_summary(directory)
    except (OSError, runstore.DamagedRunFile):
        return None


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
