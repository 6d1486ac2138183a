"""Slurm profiles: the queue settings of a cluster, one YAML file per cluster in slurm/.

`--profile NAME` loads `slurm/NAME.yaml` (or any path to a .yaml file) into a
`SlurmProfile`: typed fields with defaults, unknown keys an error (a typo such as
`partiton:` must never silently fall back to the cluster's default queue). The fields
follow submitit's Slurm parameters (and the hydra submitit launcher's config
dataclasses); `executor_parameters` turns a profile into `executor.update_parameters`
keyword arguments.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from benchmark.errors import UserError

PROFILES_DIR = Path(__file__).resolve().parents[2] / "slurm"


@dataclass(frozen=True)
class SlurmProfile:
    """Where and how the jobs of a grid run on a Slurm cluster (one array task per run)."""

    name: str = "default"  # the profile's name (its file name); not a key of the YAML
    # Partition (queue) to submit to; None: the cluster's default partition.
    partition: str | None = None
    # GPUs per array task (one task trains one run); 0: ask for none (CPU-only partition).
    gpus_per_task: int = 0
    # CPU cores per task: the loader's workers and PyTorch's intra-op threads use them.
    cpus_per_task: int = 4
    # Memory per node (one task per node), in Slurm's notation: "32G", "64000M"; None: default.
    mem: str | None = None
    # Wall-clock limit per job in minutes. A run that needs longer is checkpointed,
    # requeued and resumed (see signal_delay_s and max_num_timeout).
    timeout_min: int = 60
    # Account to charge (sbatch --account); None: the user's default account.
    account: str | None = None
    # Quality of service (sbatch --qos); None: the partition's default.
    qos: str | None = None
    # Node features required (sbatch --constraint), e.g. "a100|h100"; None: any node.
    constraint: str | None = None
    # At most this many tasks of the array run at once (sbatch --array=0-N%K).
    array_parallelism: int = 16
    # Seconds before the time limit at which Slurm signals a job (USR2) so that it
    # requeues itself; the run then resumes from its last finished epoch.
    signal_delay_s: int = 120
    # How many times a job may be requeued after reaching its time limit (preemptions
    # do not count).
    max_num_timeout: int = 3
    # Shell lines run in the job before Python starts: `module load cuda/12.4`, `source ...`.
    setup: list[str] = field(default_factory=list)
    # Any other sbatch option, name without dashes -> value: {"exclude": "node[01-02]"}.
    additional_parameters: dict[str, Any] = field(default_factory=dict)

    def executor_parameters(self) -> dict[str, Any]:
        """Keyword arguments for `submitit.AutoExecutor.update_parameters` (Slurm)."""
        params: dict[str, Any] = {
            "timeout_min": self.timeout_min,
            "cpus_per_task": self.cpus_per_task,
            "tasks_per_node": 1,
            "nodes": 1,
            "slurm_array_parallelism": self.array_parallelism,
            "slurm_signal_delay_s": self.signal_delay_s,
            "slurm_setup": list(self.setup),
            "slurm_additional_parameters": dict(self.additional_parameters),
        }
        optional = {
            "slurm_partition": self.partition,
            "slurm_mem": self.mem,
            "slurm_account": self.account,
            "slurm_qos": self.qos,
            "slurm_constraint": self.constraint,
            "slurm_gpus_per_task": self.gpus_per_task or None,
        }
        params.update({k: v for k, v in optional.items() if v is not None})
        return params


# The YAML keys: every field but `name` (which comes from the file name).
PROFILE_KEYS = tuple(f.name for f in fields(SlurmProfile) if f.name != "name")
_INT_KEYS = {
    "gpus_per_task": 0,
    "cpus_per_task": 1,
    "timeout_min": 1,
    "array_parallelism": 1,
    "signal_delay_s": 0,
    "max_num_timeout": 0,
}
_STR_KEYS = ("partition", "mem", "account", "qos", "constraint")


def list_profiles(directory: Path = PROFILES_DIR) -> list[str]:
    """Names of the profiles shipped in `directory` (slurm/*.yaml)."""
    return sorted(p.stem for p in directory.glob("*.yaml"))


def profile_path(ref: str, directory: Path = PROFILES_DIR) -> Path:
    """`ref` is a profile name (slurm/<ref>.yaml) or the path of a YAML file."""
    as_path = Path(ref)
    if as_path.suffix in (".yaml", ".yml") or as_path.is_file():
        if not as_path.is_file():
            raise UserError(f"Slurm profile file {ref} does not exist")
        return as_path
    path = directory / f"{ref}.yaml"
    if not path.is_file():
        known = ", ".join(list_profiles(directory)) or "none"
        raise UserError(
            f"unknown Slurm profile {ref!r}: no {path}; profiles: {known} "
            f"(or give the path of a .yaml file)"
        )
    return path


def parse_profile(data: Any, name: str, source: str) -> SlurmProfile:
    """A profile from a YAML mapping; one-line UserError for unknown keys or bad values."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"Slurm profile {source} must be a mapping of keys to values")
    unknown = sorted(set(data) - set(PROFILE_KEYS))
    if unknown:
        raise UserError(
            f"unknown key {unknown[0]!r} in Slurm profile {source}; "
            f"valid keys: {', '.join(PROFILE_KEYS)}"
        )
    for key, minimum in _INT_KEYS.items():
        value = data.get(key)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < minimum
        ):
            raise UserError(
                f"{key} in Slurm profile {source} must be an integer >= {minimum}, got {value!r}"
            )
    for key in _STR_KEYS:
        value = data.get(key)
        if value is not None and not isinstance(value, str | int):
            raise UserError(f"{key} in Slurm profile {source} must be a string, got {value!r}")
    setup = data.get("setup")
    if setup is not None and (
        not isinstance(setup, list) or not all(isinstance(s, str) for s in setup)
    ):
        raise UserError(f"setup in Slurm profile {source} must be a list of shell lines")
    extra = data.get("additional_parameters")
    if extra is not None and not isinstance(extra, dict):
        raise UserError(
            f"additional_parameters in Slurm profile {source} must be a mapping "
            f"(sbatch option -> value), e.g. {{exclude: node01}}"
        )
    values = {k: v for k, v in data.items() if v is not None}
    for key in _STR_KEYS:
        if key in values:
            values[key] = str(values[key])
    return SlurmProfile(name=name, **values)


def load_profile(ref: str, directory: Path = PROFILES_DIR) -> SlurmProfile:
    """Load `slurm/<ref>.yaml` (or the YAML file `ref`) as a typed profile."""
    path = profile_path(ref, directory)
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"Slurm profile {path} is not valid YAML: {first}") from exc
    return parse_profile(data, path.stem, str(path))


def cluster_partitions() -> list[str]:
    """The partitions of the cluster `sinfo` talks to (SLURM_CONF decides which)."""
    if shutil.which("sinfo") is None:
        raise UserError(
            "sinfo not found: --launcher slurm needs the Slurm client commands on PATH "
            "(on one machine: `make slurm-up`, then export SLURM_CONF as it prints)"
        )
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=30
        )
    except subprocess.TimeoutExpired as exc:
        raise UserError("sinfo did not answer within 30 s: is slurmctld reachable?") from exc
    if out.returncode != 0:
        reason = (out.stderr.strip().splitlines() or ["no message"])[-1]
        raise UserError(f"sinfo failed ({reason}): is the Slurm cluster up and SLURM_CONF set?")
    # The default partition is printed with a trailing '*'.
    return [p.rstrip("*") for p in out.stdout.split()]


def check_partition(profile: SlurmProfile) -> None:
    """Raise a UserError, before anything is submitted, if the partition does not exist."""
    if profile.partition is None:
        return
    partitions = cluster_partitions()
    if profile.partition not in partitions:
        raise UserError(
            f"partition {profile.partition!r} of Slurm profile {profile.name!r} does not exist "
            f"on this cluster; partitions: {', '.join(partitions) or 'none'}"
        )
