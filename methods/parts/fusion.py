"""Fusion heads for the joint-style methods (docs/methods.md, "Shared model parts").

Each head maps per-modality features {m: [B, D_m]} to ``(fused [B,C], {m: u^m [B,C]})``,
where u^m is modality m's own logits as the imbalance papers define them:

- concat: fused = W [z^a; z^v] + b; u^m = W_m z^m + b / M (OGM-GE's bias split).
- sum:    fused = sum_m (W_m z^m + b_m); u^m = W_m z^m + b_m.
- film:   fused = W_o (gamma(z^a) * z^v + beta(z^a)) + b_o (Perez et al. 2018).
- gated:  fused = W_o (sigmoid(W_g z^a) * z^v) + b_o (Kiela et al. 2018).
  For film and gated, u^m is the head applied with the other feature set to zero.
"""

from __future__ import annotations

import torch
from torch import nn

from methods.parts.encoders import init_weights
from methods.parts.registry import FUSIONS, MethodConfigError, register_fusion

Features = dict[str, torch.Tensor]


class FusionHead(nn.Module):
    def __init__(self, dims: dict[str, int], num_classes: int) -> None:
        super().__init__()
        self.modalities = list(dims)
        self.dims = dims
        self.num_classes = num_classes

    def forward(self, feats: Features) -> tuple[torch.Tensor, Features]:
        raise NotImplementedError


@register_fusion("concat")
class ConcatFusion(FusionHead):
    def __init__(self, dims: dict[str, int], num_classes: int) -> None:
        super().__init__(dims, num_classes)
        self.fc = nn.Linear(sum(dims.values()), num_classes)
        init_weights(self)

    def forward(self, feats: Features) -> tuple[torch.Tensor, Features]:
        fused = self.fc(torch.cat([feats[m] for m in self.modalities], dim=1))
        weights = self.fc.weight.split([self.dims[m] for m in self.modalities], dim=1)
        share = self.fc.bias / len(self.modalities)
        uni = {m: feats[m] @ w.t() + share for m, w in zip(self.modalities, weights, strict=True)}
        return fused, uni


@register_fusion("sum")
class SumFusion(FusionHead):
    def __init__(self, dims: dict[str, int], num_classes: int) -> None:
        super().__init__(dims, num_classes)
        self.fc = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in dims.items()})
        init_weights(self)

    def forward(self, feats: Features) -> tuple[torch.Tensor, Features]:
        uni = {m: self.fc[m](feats[m]) for m in self.modalities}
        return torch.stack(list(uni.values())).sum(dim=0), uni


class ConditionedFusion(FusionHead):
    """Base of the two heads where the first modality conditions the second."""

    def __init__(self, dims: dict[str, int], num_classes: int) -> None:
        super().__init__(dims, num_classes)
        if len(dims) != 2:
            raise MethodConfigError(
                f"fusion {type(self).__name__} needs exactly two modalities, got {list(dims)}; "
                "use fusion=concat or fusion=sum"
            )
        self.cond, self.main = self.modalities
        self.out = nn.Linear(dims[self.main], num_classes)

    def combine(self, z_cond: torch.Tensor, z_main: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, feats: Features) -> tuple[torch.Tensor, Features]:
        zc, zm = feats[self.cond], feats[self.main]
        # One batched call for (both), (cond only), (main only): stack along the batch.
        both = self.out(
            self.combine(
                torch.cat([zc, zc, torch.zeros_like(zc)]), torch.cat([zm, torch.zeros_like(zm), zm])
            )
        )
        fused, u_cond, u_main = both.chunk(3)
        return fused, {self.cond: u_cond, self.main: u_main}


@register_fusion("film")
class FiLMFusion(ConditionedFusion):
    def __init__(self, dims: dict[str, int], num_classes: int) -> None:
        super().__init__(dims, num_classes)
        self.film = nn.Linear(dims[self.cond], 2 * dims[self.main])
        init_weights(self)

    def combine(self, z_cond: torch.Tensor, z_main: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.film(z_cond).chunk(2, dim=1)
        return gamma * z_main + beta


@register_fusion("gated")
class GatedFusion(ConditionedFusion):
    def __init__(self, dims: dict[str, int], num_classes: int) -> None:
        super().__init__(dims, num_classes)
        self.gate = nn.Linear(dims[self.cond], dims[self.main])
        init_weights(self)

    def combine(self, z_cond: torch.Tensor, z_main: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.gate(z_cond)) * z_main


def create_fusion(name: str, dims: dict[str, int], num_classes: int) -> FusionHead:
    return FUSIONS.get(name)(dims, num_classes)


def list_fusions() -> list[str]:
    return FUSIONS.names()
