"""Joint training: the baseline row of every paper ("Concatenation" / "Baseline").

L = CE(fused, y) (docs/methods.md, "Joint training"); one optimiser over all parameters.
Subclasses (OGM-GE, PMR, AGM) change one hook each: `compute_loss` or
`modify_gradients`; none copies the step.
"""

from __future__ import annotations

from typing import Any

import torch

from methods.parts.base import Batch, Method, StepInfo, cross_entropy
from methods.parts.fusion import create_fusion
from methods.parts.registry import register_method


@register_method("joint")
class Joint(Method):
    """Joint training (baseline): encoders -> fusion head (``fusion``) -> CE on the fused logits."""

    DIAGNOSTICS = ("train/loss",)

    defaults: dict[str, Any] = {}

    def __init__(self, encoders, num_classes, hp, ctx) -> None:
        super().__init__(encoders, num_classes, hp, ctx)
        dims = {m: self.encoders[m].out_dim for m in self.modalities}
        self.head = create_fusion(ctx.settings.get("fusion", "concat"), dims, num_classes)
        self.add_optimizer("main", self.parameters())

    def features(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {m: self.encoders[m](batch[m]) for m in self.modalities}

    def forward_heads(self, batch: Batch) -> dict[str, Any]:
        feats = self.features(batch)
        fused, uni = self.head(feats)
        return {"features": feats, "fused": fused, "uni": uni}

    def compute_loss(
        self, batch: Batch, out: dict[str, Any], step: StepInfo
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The training loss and extra scalars to log. Joint: CE(fused, y)."""
        return cross_entropy(out["fused"], batch["label"]), {}

    def modify_gradients(
        self, batch: Batch, out: dict[str, Any], step: StepInfo
    ) -> dict[str, torch.Tensor]:
        """Called after backward, before the optimiser step. Joint: nothing."""
        return {}

    def update(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        opt = self.optimizers["main"]
        opt.zero_grad(set_to_none=True)
        out = self.forward_heads(batch)
        loss, logs = self.compute_loss(batch, out, step)
        loss.backward()
        logs.update(self.modify_gradients(batch, out, step))
        opt.step()
        return {"loss": loss.detach(), **logs}

    def predict(self, batch: Batch) -> dict[str, torch.Tensor]:
        out = self.forward_heads(batch)
        return {"fused": out["fused"], **out["uni"]}
