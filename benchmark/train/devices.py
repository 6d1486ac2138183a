"""The device check made before training starts here (inline and local launchers, `speed`)."""

from __future__ import annotations

from collections.abc import Sequence

from benchmark.errors import UserError
from benchmark.train.config import RunConfig


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
