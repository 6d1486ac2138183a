"""MMPareto: multitask learning with Pareto-integrated encoder gradients.

Wei & Hu, "MMPareto: Boosting Multimodal Learning with Innocent Unimodal Assistance",
ICML 2024. Official code: GeWu-Lab/MMPareto_ICML2024 (code/MMPareto.py:88-209,
code/min_norm_solvers.py:9-30); specification: methods-zoo/mmpareto.md.

Model: the shared encoders, the run's fusion head h (fused logits) and one separate linear
unimodal head g^m per modality (not slices of h). Per training step (one forward):

1. L_mm = CE(h(z), y), L_m = CE(g^m(z^m), y).
2. For each encoder m (theta^m: all its parameters, no head): G^m = dL_mm/dtheta^m and
   U^m = dL_m/dtheta^m (two backward passes: L_mm, then sum_m L_m, which reaches theta^m
   only through L_m).
3. a = <G,G>, b = <G,U>, c = <U,U> over the whole encoder; cos = b / sqrt(ac).
4. cos > 0: alpha_1 = alpha_2 = 1/2. Otherwise the two-task min-norm point (MGDA,
   min ||alpha_1 G + alpha_2 U||, alpha_1 + alpha_2 = 1): alpha_1 = 0.999 if b >= a,
   0.001 if b >= c, else (c - b) / (a + c - 2b); alpha_2 = 1 - alpha_1.
5. Direction d = 2 (alpha_1 G + alpha_2 U).
6. Magnitude per parameter tensor p: s_p = ||G_p + U_p|| / ||d_p||,
   grad_p = gamma max(s_p, 1) d_p, gamma = 1.5. Without conflict this is 1.5 (G + U).
7. h gets dL_mm, g^m gets dL_m; one step of the factory optimiser over everything.

Which of the official code's choices the paper's Algorithm 1 shares (gamma, the per-tensor
rescale) could not be checked against the paper text in this pass; the defaults follow the
official code (as the specification prescribes until it is checked), and the alternatives
are options.

Options (``--set key=value``):

- ``gamma`` (1.5): the magnitude factor of step 6 (hard-coded in the official code).
- ``norm_scope`` ("tensor"): "tensor" = s_p per parameter tensor (official code);
  "encoder" = one s for all of theta^m.

Not supported: ``compile=true`` (a clear error; see ``__init__``).

Where the official code differs: it runs four backward passes and branches on the cosine in
Python (``.item()``-style syncs); ours runs two backward passes and selects with
``torch.where``, which computes the same numbers. Dot products and norms are in float32.

Diagnostics (per epoch, per modality m): ``cos_<m>`` (cos(G, U)), ``conflict_<m>`` (1 on steps
with cos <= 0; its mean is the conflict rate), ``alpha_<m>`` (alpha_1, the weight of the
multimodal gradient), ``ratio_<m>`` (||G|| / ||U||), ``scale_<m>`` (mean max(s_p, 1)).

Paper protocol (official code and the author's reply): SGD lr 2e-3, momentum 0.9, weight
decay 1e-4, no schedule, batch 64, 50 epochs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from methods.joint import Joint
from methods.parts.base import Batch, StepInfo, cross_entropy
from methods.parts.registry import MethodConfigError, register_method

NORM_SCOPES = ("tensor", "encoder")


def _dot(xs: list[torch.Tensor], ys: list[torch.Tensor]) -> torch.Tensor:
    """<x, y> over the concatenation of the tensors, in float32 (0-d)."""
    return torch.stack([(x.float() * y.float()).sum() for x, y in zip(xs, ys, strict=True)]).sum()


def pareto_weights(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """alpha_1, the weight of the multimodal gradient G (steps 3-4), from a = <G,G>,
    b = <G,U>, c = <U,U>: 1/2 when cos(G, U) > 0, else the two-task min-norm solution
    (0.999 if b >= a, 0.001 if b >= c, else (c - b) / (a + c - 2b), unclamped)."""
    cos = b / (a * c).sqrt().clamp_min(1e-30)
    interior = (c - b) / (a + c - 2 * b).clamp_min(1e-30)
    mgda = torch.where(b >= a, torch.full_like(a, 0.999), torch.where(b >= c, 0.001, interior))
    return torch.where(cos > 0, torch.full_like(a, 0.5), mgda)


def pareto_gradients(
    g: list[torch.Tensor],
    u: list[torch.Tensor],
    gamma: float = 1.5,
    norm_scope: str = "tensor",
) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """One encoder's new gradients (steps 3-6) from its multimodal gradients `g` and
    unimodal gradients `u` (one tensor per parameter), and the step's statistics."""
    a, b, c = _dot(g, g), _dot(g, u), _dot(u, u)
    alpha = pareto_weights(a, b, c)
    d = [2 * (alpha * gi.float() + (1 - alpha) * ui.float()) for gi, ui in zip(g, u, strict=True)]
    both = [gi.float() + ui.float() for gi, ui in zip(g, u, strict=True)]
    if norm_scope == "tensor":
        num = torch.stack(torch._foreach_norm(both))
        den = torch.stack(torch._foreach_norm(d))
    else:
        num = torch.stack(torch._foreach_norm(both)).square().sum().sqrt().expand(len(d))
        den = torch.stack(torch._foreach_norm(d)).square().sum().sqrt().expand(len(d))
    scale = gamma * (num / den.clamp_min(1e-30)).clamp_min(1.0)
    new = [di * s for di, s in zip(d, scale.unbind(), strict=True)]
    cos = b / (a * c).sqrt().clamp_min(1e-30)
    stats = {
        "cos": cos,
        "conflict": (cos <= 0).float(),
        "alpha": alpha,
        "ratio": (a / c.clamp_min(1e-30)).sqrt(),
        "scale": (scale / gamma).mean(),
    }
    return new, stats


def _filled(params: list[nn.Parameter], grads: tuple[torch.Tensor | None, ...]) -> list:
    """The gradients, with zeros for the parameters a loss does not reach."""
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]


@register_method("mmpareto")
class MMPareto(Joint):
    """MMPareto (Wei & Hu, ICML 2024): conflict-free encoder gradients from the multimodal
    and unimodal losses (min-norm direction, rescaled magnitude)."""

    DIAGNOSTICS = (
        "train/cos_{modality}",
        "train/conflict_{modality}",
        "train/alpha_{modality}",
        "train/ratio_{modality}",
        "train/scale_{modality}",
    )

    defaults: dict[str, Any] = {"gamma": 1.5, "norm_scope": "tensor"}
    paper_settings = {
        "optimizer": "sgd",
        "lr": 2e-3,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "scheduler": "none",
        "batch_size": 64,
        "epochs": 50,
    }

    def __init__(self, encoders, num_classes, hp, ctx) -> None:
        super().__init__(encoders, num_classes, hp, ctx)
        if self.hp["norm_scope"] not in NORM_SCOPES:
            raise MethodConfigError(
                f"unknown norm_scope {self.hp['norm_scope']!r}; choose one of "
                f"{', '.join(NORM_SCOPES)}"
            )
        if ctx.settings.get("compile", False):
            # G and U are two backward passes through one retained encoder graph; compiled
            # encoders refuse a retained graph (donated buffers) and, with those disabled,
            # gave wrong gradients in torch 2.11 (checked against eager).
            raise MethodConfigError("mmpareto does not support compile=true (set compile=false)")
        if not float(self.hp["gamma"]) > 0:
            raise MethodConfigError(f"mmpareto: gamma must be > 0, got {self.hp['gamma']!r}")
        # The separate unimodal heads g^m (PyTorch's default Linear init, as the code).
        self.uni_heads = nn.ModuleDict(
            {m: nn.Linear(self.encoders[m].out_dim, num_classes) for m in self.modalities}
        )
        self.add_optimizer("main", self.parameters())  # now including g^m

    def forward_heads(self, batch: Batch) -> dict[str, Any]:
        feats = self.features(batch)
        fused, _ = self.head(feats)
        uni = {m: self.uni_heads[m](feats[m]) for m in self.modalities}
        return {"features": feats, "fused": fused, "uni": uni}

    def update(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        opt = self.optimizers["main"]
        opt.zero_grad(set_to_none=True)
        out = self.forward_heads(batch)
        labels = batch["label"]
        loss_mm = cross_entropy(out["fused"], labels)
        loss_uni = {m: cross_entropy(out["uni"][m], labels) for m in self.modalities}
        enc = self.modality_parameters()
        enc_all = [p for m in self.modalities for p in enc[m]]
        head = list(self.head.parameters())
        uni_heads = list(self.uni_heads.parameters())
        # Step 2: G (and h's gradient), then U (and the g^m gradients).
        g_all = torch.autograd.grad(loss_mm, enc_all + head, retain_graph=True, allow_unused=True)
        u_all = torch.autograd.grad(sum(loss_uni.values()), enc_all + uni_heads, allow_unused=True)
        g_all = _filled(enc_all + head, g_all)
        u_all = _filled(enc_all + uni_heads, u_all)
        logs: dict[str, torch.Tensor] = {}
        start = 0
        for m in self.modalities:
            n = len(enc[m])
            new, stats = pareto_gradients(
                g_all[start : start + n],
                u_all[start : start + n],
                float(self.hp["gamma"]),
                self.hp["norm_scope"],
            )
            for p, x in zip(enc[m], new, strict=True):
                p.grad = x.to(p.dtype)
            logs.update({f"{k}_{m}": v for k, v in stats.items()})
            start += n
        # Step 7: the heads get their own losses' gradients, unmodified.
        for p, x in zip(head, g_all[len(enc_all) :], strict=True):
            p.grad = x
        for p, x in zip(uni_heads, u_all[len(enc_all) :], strict=True):
            p.grad = x
        opt.step()
        loss = loss_mm + sum(loss_uni.values())
        return {"loss": loss.detach(), "loss_mm": loss_mm.detach(), **logs}
