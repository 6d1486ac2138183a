"""The one optimiser/scheduler factory every method uses (fairness: same optimiser for all).

Settings (flat run-config keys): ``optimizer`` (sgd|adam|adamw), ``lr``, ``momentum``,
``weight_decay``, ``scheduler`` (step|cosine|none), ``lr_step``, ``lr_gamma``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from methods.parts.registry import MethodConfigError

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULERS = ("step", "cosine", "none")


def build_optimizer(
    params: Iterable[torch.nn.Parameter], settings: Mapping[str, Any], device: torch.device
) -> torch.optim.Optimizer:
    """SGD (with momentum), Adam or AdamW from the run settings; fused kernels on CUDA."""
    name = settings["optimizer"]
    params = [p for p in params if p.requires_grad]
    extra = {"fused": True} if device.type == "cuda" else {}
    if name == "sgd":
        return torch.optim.SGD(
            params,
            lr=settings["lr"],
            momentum=settings["momentum"],
            weight_decay=settings["weight_decay"],
            **extra,
        )
    if name in ("adam", "adamw"):
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return cls(params, lr=settings["lr"], weight_decay=settings["weight_decay"], **extra)
    raise MethodConfigError(f"unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}")


def build_scheduler(
    optimizer: torch.optim.Optimizer, settings: Mapping[str, Any], epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-epoch schedule: StepLR(lr_step, lr_gamma), cosine to 0 over `epochs`, or none."""
    name = settings["scheduler"]
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(
            optimizer, step_size=settings["lr_step"], gamma=settings["lr_gamma"]
        )
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(epochs, 1))
    if name == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    raise MethodConfigError(f"unknown scheduler {name!r}; choose one of {', '.join(SCHEDULERS)}")
