"""Unimodal training: every modality's encoder trained alone, and their ensemble (UME).

Paper: Du, Teng, Li, Liu, Yuan, Wang, Yuan, Zhao, "On Uni-Modal Feature Learning in
Supervised Multi-Modal Learning", ICML 2023, section 4 ("Uni-Modal Ensemble", UME).

Each modality m has its encoder phi^m and its own head h^m = Linear(D_m, C); nothing is
shared and no gradient crosses modalities:

    L^m = CE(h^m(phi^m(x^m)), y)       for every modality m, each with its own optimiser
    <m>   = h^m(phi^m(x^m))            the modality's logits ("<m>-only" rows of the tables)
    fused = mean_m h^m(phi^m(x^m))     (``ensemble="logit"``, the default), or
            log mean_m softmax(h^m(...)) (``ensemble="prob"``)

So one run gives each modality's unimodal accuracy (`test/<m>/acc`, the reference that
joint training's per-modality heads and linear probes are compared with) and the UME
prediction (`test/fused/acc`). Each modality's step is its own forward, backward and
optimiser step, built by the shared factory with the run's optimiser and schedule (one
optimiser per modality; with disjoint parameters this is exactly separate training).
The report reads each modality's accuracy at that modality's own best-val epoch, the
ensemble's at the run's
(docs/reports.md, "Reports: tables and figures from `results/`").

Options: ``ensemble`` ["logit"]: "logit" | "prob" (how the fused prediction is formed;
training does not depend on it).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from methods.parts.base import Batch, Method, StepInfo, cross_entropy
from methods.parts.encoders import init_weights
from methods.parts.registry import MethodConfigError, register_method

ENSEMBLES = ("logit", "prob")


@register_method("unimodal")
class Unimodal(Method):
    """Each modality trained alone on its own CE; fused = the uni-modal ensemble (UME)."""

    DIAGNOSTICS = ("train/loss_{modality}",)

    defaults: dict[str, Any] = {"ensemble": "logit"}

    def __init__(self, encoders, num_classes, hp, ctx) -> None:
        super().__init__(encoders, num_classes, hp, ctx)
        if self.hp["ensemble"] not in ENSEMBLES:
            raise MethodConfigError(
                f"unknown ensemble {self.hp['ensemble']!r}; choose one of {', '.join(ENSEMBLES)}"
            )
        self.heads = nn.ModuleDict(
            {m: nn.Linear(self.encoders[m].out_dim, num_classes) for m in self.modalities}
        )
        init_weights(self.heads)
        for m in self.modalities:
            self.add_optimizer(m, [*self.encoders[m].parameters(), *self.heads[m].parameters()])

    def logits(self, batch: Batch, m: str) -> torch.Tensor:
        """h^m(phi^m(x^m)): modality m's logits, reading batch[m] only."""
        return self.heads[m](self.encoders[m](batch[m]))

    def train_modality(self, batch: Batch, m: str) -> torch.Tensor:
        """One step of modality m alone: L^m = CE(h^m(phi^m(x^m)), y), backward, its optimiser's
        step. Touches only phi^m and h^m (their optimiser holds nothing else)."""
        opt = self.optimizers[m]
        opt.zero_grad(set_to_none=True)
        loss = cross_entropy(self.logits(batch, m), batch["label"])
        loss.backward()
        opt.step()
        return loss.detach()

    def update(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        losses = {m: self.train_modality(batch, m) for m in self.modalities}
        total = torch.stack(list(losses.values())).sum()
        return {"loss": total, **{f"loss_{m}": v for m, v in losses.items()}}

    def predict(self, batch: Batch) -> dict[str, torch.Tensor]:
        uni = {m: self.logits(batch, m).float() for m in self.modalities}
        stacked = torch.stack(list(uni.values()))
        if self.hp["ensemble"] == "logit":
            fused = stacked.mean(dim=0)
        else:  # log of the mean probability
            fused = torch.logsumexp(stacked.log_softmax(dim=2), dim=0) - math.log(len(uni))
        return {"fused": fused, **uni}
