"""The `Method` contract (docs/design.md, "Core interfaces").

A method is a small module with one job: `update(batch, step)` does one optimisation
step and returns detached scalars to log; `predict(batch)` returns fused and
per-modality logits. The engine never asks which method it runs; methods hook into it
only through `update`, `predict`, `on_epoch_start` and `on_epoch_end`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
from torch import nn

from methods.parts.optim import build_optimizer, build_scheduler
from methods.parts.registry import MethodConfigError

Batch = dict[str, torch.Tensor]


class BatchSource(Protocol):
    """What a hook may read: device batches of a split, never files or loaders."""

    def batches(
        self, split: str = "train", fraction: float = 1.0, augment: bool = False
    ) -> Iterator[Batch]:
        """Batches of `split` on the method's device; `fraction` < 1 gives a fixed, seeded
        stratified subset; `augment=False` applies the evaluation transform."""
        ...


@dataclass
class RunContext:
    """What a method may know about its run."""

    device: torch.device
    epochs: int
    steps_per_epoch: int
    modalities: dict[str, str]  # modality name -> kind ("audio" | "visual")
    settings: Mapping[str, Any] = field(default_factory=dict)  # optimiser, fusion, ...
    seed: int = 0
    # The run's directory in the run store, for state a method keeps beside the engine's
    # checkpoint (e.g. UMT's teachers); None where nothing is stored (speed, unit tests).
    # Files a method writes there must be written atomically (datasets/atomic.py).
    run_dir: Path | None = None


@dataclass
class StepInfo:
    epoch: int  # 0-based epoch
    step: int  # global step since the start of training, 0-based
    batch: int  # index of the batch in this epoch


class Method(nn.Module):
    """Base class. Subclasses set `defaults` (paper values of their hyper-parameters),
    optionally `presets` ({dataset: {key: value}}) and `paper_settings` (the run settings
    of their paper's protocol), and implement `update` and `predict`.

    A method with a `variant` hyper-parameter (e.g. "paper" | "official") may layer values
    that hold for one variant only: `variant_defaults` ({variant: {key: value}}),
    `variant_presets` ({variant: {dataset: {key: value}}}) and `variant_paper_settings`
    ({variant: {setting: value}}, protocol "paper" only). benchmark/train/config.py applies
    them in that order, above the plain defaults, presets and paper settings and below
    `--set`.

    Every method declares `DIAGNOSTICS`: the metrics.jsonl keys of the diagnostics it logs
    each epoch (e.g. "train/ratio"); "{modality}" in a key stands for each of the run's
    modalities ("train/k_{modality}" -> train/k_audio, train/k_visual). The tests train
    each registered method and check that every key it declares is logged and finite."""

    name: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}
    presets: ClassVar[dict[str, dict[str, Any]]] = {}
    paper_settings: ClassVar[dict[str, Any]] = {}
    variant_defaults: ClassVar[dict[str, dict[str, Any]]] = {}
    variant_presets: ClassVar[dict[str, dict[str, dict[str, Any]]]] = {}
    variant_paper_settings: ClassVar[dict[str, dict[str, Any]]] = {}
    min_modalities: ClassVar[int] = 1
    DIAGNOSTICS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def diagnostic_keys(cls, modalities: Sequence[str]) -> list[str]:
        """`DIAGNOSTICS` with "{modality}" expanded for each of `modalities`, in order."""
        keys: list[str] = []
        for key in cls.DIAGNOSTICS:
            expanded = (
                [key.format(modality=m) for m in modalities] if "{modality}" in key else [key]
            )
            keys += [k for k in expanded if k not in keys]
        return keys

    def __init__(
        self,
        encoders: Mapping[str, nn.Module],
        num_classes: int,
        hp: Mapping[str, Any],
        ctx: RunContext,
    ) -> None:
        super().__init__()
        unknown = sorted(set(hp) - set(self.defaults))
        if unknown:
            known = ", ".join(sorted(self.defaults)) or "none"
            raise MethodConfigError(
                f"unknown hyper-parameter(s) {', '.join(unknown)} for method {self.name!r}; "
                f"its keys: {known}"
            )
        if len(encoders) < self.min_modalities:
            raise MethodConfigError(
                f"method {self.name!r} needs {self.min_modalities} modalities, the dataset has "
                f"{len(encoders)} ({', '.join(encoders)})"
            )
        self.hp = {**self.defaults, **hp}
        self.ctx = ctx
        self.num_classes = num_classes
        self.modalities = list(encoders)
        self.encoders = nn.ModuleDict(dict(encoders))
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, torch.optim.lr_scheduler.LRScheduler] = {}

    # -- optimisers -------------------------------------------------------------------
    def add_optimizer(self, key: str, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        """Build an optimiser (and its schedule) with the shared factory, from the run settings."""
        opt = build_optimizer(params, self.ctx.settings, self.ctx.device)
        self.optimizers[key] = opt
        self.schedulers[key] = build_scheduler(opt, self.ctx.settings, self.ctx.epochs)
        return opt

    def modality_parameters(self) -> dict[str, list[nn.Parameter]]:
        """{modality: the parameters of its encoder}: what gradient modulation acts on."""
        return {m: list(self.encoders[m].parameters()) for m in self.modalities}

    @property
    def lr(self) -> float:
        return next(iter(self.optimizers.values())).param_groups[0]["lr"]

    # -- the contract -----------------------------------------------------------------
    def update(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def predict(self, batch: Batch) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def on_epoch_start(self, epoch: int, data: BatchSource) -> None:
        """Called before the first batch of each epoch (and, for epoch 0, before training)."""

    def on_epoch_end(self, epoch: int, data: BatchSource) -> dict[str, float]:
        """Called after the last batch; steps the schedules. May return diagnostics to log."""
        for scheduler in self.schedulers.values():
            scheduler.step()
        return {}

    # -- checkpoints ------------------------------------------------------------------
    def training_state(self) -> dict[str, Any]:
        return {
            "model": self.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
            "extra": self.extra_state(),
        }

    def load_training_state(self, state: Mapping[str, Any]) -> None:
        self.load_state_dict(state["model"])
        for k, o in self.optimizers.items():
            o.load_state_dict(state["optimizers"][k])
        for k, s in self.schedulers.items():
            s.load_state_dict(state["schedulers"][k])
        self.load_extra_state(state.get("extra", {}))

    def extra_state(self) -> dict[str, Any]:
        """Method state that is neither a parameter nor a buffer (plain Python values)."""
        return {}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        pass


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy, computed in float32 whatever the autocast dtype."""
    return nn.functional.cross_entropy(logits.float(), labels)
