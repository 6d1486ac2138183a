"""OGM-GE: on-the-fly gradient modulation with generalisation enhancement.

Peng, Wei, Deng, Wang, Hu, "Balanced Multimodal Learning via On-the-fly Gradient
Modulation", CVPR 2022 (docs/methods.md, "OGM-GE"). Official code: GeWu-Lab/OGM-GE_CVPR2022.

Only Eq. 10 is cited by number (as in docs/methods.md); the other steps are named.

Algorithm, per training step while ``modulation_start <= epoch <= modulation_end``
(outside that window a step is exactly a joint-training step):

1. forward; L = CE(fused, y); backward                                  (Joint.update)
2. s^m = sum_i softmax(u^m_i)[y_i], without gradient                    (score)
3. rho^v = s^v / s^a, rho^a = 1 / rho^v                                  (ratio)
4. k^m = 1 - tanh(alpha * rho^m) if rho^m > 1 else 1                     (Eq. 10)
5. g <- k^m g for every parameter of encoder m in scope                  (OGM update)
6. GE: g <- k^m g + N(0, sigma^2), sigma = std(g before modulation) + 1e-8,
   per parameter tensor, on both encoders' parameters in scope           (GE)
7. optimiser step                                                        (Joint.update)

The first modality of ``self.modalities`` plays the paper's a (audio), the second its v
(visual); the method needs exactly two modalities.

Options (``--set key=value``):

- ``alpha`` (0.8): modulation strength. Presets: cremad 0.8, vggsound 0.1 (the paper's
  values); 0.8 elsewhere.
- ``coeff`` ("paper"): "paper" = Eq. 10, k^m = 1 - tanh(alpha rho^m) for the modality with
  rho^m > 1 (the current official code computes the same, written with relu(rho));
  "shifted" = k^m = 1 - tanh(alpha relu(rho^m - 1)), an earlier version of the official
  code, continuous at rho = 1.
- ``scope`` ("all"): "all" = every parameter of encoder m (the paper); "conv" = only the
  convolution weights (the official code modulates only 4-D gradient tensors).
- ``ge`` (True): add the Gaussian noise of step 6; False is plain OGM.
- ``modulation_start`` (0), ``modulation_end`` (50): the epochs (0-based, inclusive) in
  which modulation is applied.

Where the official code differs: it loops over the batch in Python and reads each
gradient's std with ``.item()`` (ours is vectorised and never syncs with the host); its
``scope`` is "conv" (use ``--set scope=conv``); at an exact tie rho^a = rho^v = 1 it
modulates the audio encoder with k = 1 - tanh(alpha), while Eq. 10 (ours) leaves both at 1;
it adds GE noise to both encoders' modulated parameters, also to the non-dominant one
whose k is 1, and so do we (docs/methods.md step 6).

Diagnostics (averaged per epoch by the engine as ``train/<key>``): ``k_<modality>`` for each
modality (the coefficient applied: 1 outside the window) and ``ratio`` = rho of the first
modality = s^first / s^second (> 1: the first modality dominates).

Paper protocol (``--set protocol=paper``): SGD lr 1e-3, momentum 0.9, weight decay 1e-4,
StepLR(70, 0.1), batch 64, 100 epochs.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from torch import nn

from methods.joint import Joint
from methods.parts.base import Batch, StepInfo
from methods.parts.registry import MethodConfigError, register_method

COEFFS = ("paper", "shifted")
SCOPES = ("all", "conv")


def score_ratio(
    logits_a: torch.Tensor, logits_v: torch.Tensor, labels: torch.Tensor
) -> torch.Tensor:
    """rho^a = s^a / s^v with s^m = sum_i softmax(u^m_i)[y_i] (the ratio of Eq. 10); 0-d,
    no gradient.

    The confidence in the true class is read with a gather on the label column (no loop
    over samples); a score is clamped at the smallest normal float only so that a batch
    whose probabilities all underflow gives a finite ratio.
    """
    with torch.no_grad():
        index = labels.long().unsqueeze(1)
        s_a = logits_a.float().softmax(dim=1).gather(1, index).sum()
        s_v = logits_v.float().softmax(dim=1).gather(1, index).sum()
        tiny = torch.finfo(torch.float32).tiny
        return s_a.clamp_min(tiny) / s_v.clamp_min(tiny)


def modulation_coefficients(
    logits_a: torch.Tensor,
    logits_v: torch.Tensor,
    labels: torch.Tensor,
    alpha: float,
    coeff: str = "paper",
) -> tuple[torch.Tensor, torch.Tensor]:
    """OGM's coefficients (k_a, k_v) as 0-d float32 tensors, from per-modality logits [B, C].

    rho^a = s^a / s^v, rho^v = 1 / rho^a;
    coeff="paper": k^m = 1 - tanh(alpha rho^m) where rho^m > 1, else 1 (Eq. 10);
    coeff="shifted": k^m = 1 - tanh(alpha relu(rho^m - 1)).
    """
    if coeff not in COEFFS:
        raise MethodConfigError(f"unknown coeff {coeff!r}; choose one of {', '.join(COEFFS)}")
    rho_a = score_ratio(logits_a, logits_v, labels)
    rho_v = 1 / rho_a
    if coeff == "paper":  # Eq. 10
        one = torch.ones_like(rho_a)
        k_a = torch.where(rho_a > 1, 1 - torch.tanh(alpha * rho_a), one)
        k_v = torch.where(rho_v > 1, 1 - torch.tanh(alpha * rho_v), one)
    else:
        k_a = 1 - torch.tanh(alpha * torch.relu(rho_a - 1))
        k_v = 1 - torch.tanh(alpha * torch.relu(rho_v - 1))
    return k_a, k_v


@functools.lru_cache(maxsize=32)
def _counts(sizes: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """The tensors' element counts as a float32 tensor on `device`, copied there once."""
    return torch.tensor(sizes, dtype=torch.float32, device=device)


def modulate_(
    grads: list[torch.Tensor], k: torch.Tensor, ge: bool, noise: torch.Tensor | None = None
) -> None:
    """In place: g <- k g (step 5), plus N(0, (std(g) + 1e-8)^2) noise when `ge` (step 6).

    sigma is the (unbiased) std of g before modulation, per tensor (a one-element tensor has
    no spread: sigma = 1e-8). Batched over tensors: one fused norm for the sums of squares,
    var = (sum g^2 - (sum g)^2 / n) / (n - 1), one draw for all the noise, a fused k g.
    `noise`, if given, is a 1-D buffer of at least sum(numel) elements of the grads' dtype
    that the draw overwrites (the same numbers as a fresh randn, without allocating and
    faulting in a parameter-sized tensor every step).
    """
    if not grads:
        return
    if not ge:
        torch._foreach_mul_(grads, k)
        return
    sizes = [g.numel() for g in grads]
    n = _counts(tuple(sizes), grads[0].device)
    sums = torch.stack([g.sum() for g in grads]).float()
    squares = torch.stack(torch._foreach_norm(grads)).float().square()
    var = (squares - sums.square() / n) / (n - 1).clamp_min(1)
    sigma = var.clamp_min(0).sqrt() + 1e-8
    total = sum(sizes)
    if noise is None:
        noise = torch.empty(total, dtype=grads[0].dtype, device=grads[0].device)
    draws = noise[:total].normal_().split(sizes)
    torch._foreach_mul_(grads, k)
    for g, z, s in zip(grads, draws, sigma.to(grads[0].dtype).unbind(), strict=True):
        g.addcmul_(z.view_as(g), s)  # g <- k g + sigma z


@register_method("ogm_ge")
class OGMGE(Joint):
    """OGM-GE (Peng et al., CVPR 2022): on-the-fly gradient modulation + generalisation noise."""

    DIAGNOSTICS = (
        "train/k_{modality}",
        "train/ratio",
    )

    min_modalities = 2
    defaults: dict[str, Any] = {
        "alpha": 0.8,
        "coeff": "paper",
        "scope": "all",
        "ge": True,
        "modulation_start": 0,
        "modulation_end": 50,
    }
    presets = {"cremad": {"alpha": 0.8}, "vggsound": {"alpha": 0.1}}
    paper_settings = {
        "optimizer": "sgd",
        "lr": 1e-3,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "scheduler": "step",
        "lr_step": 70,
        "lr_gamma": 0.1,
        "batch_size": 64,
        "epochs": 100,
    }

    def __init__(self, encoders, num_classes, hp, ctx) -> None:
        super().__init__(encoders, num_classes, hp, ctx)
        if len(self.modalities) != 2:
            raise MethodConfigError(
                f"ogm_ge needs exactly two modalities, the dataset has {len(self.modalities)} "
                f"({', '.join(self.modalities)})"
            )
        if self.hp["coeff"] not in COEFFS:
            raise MethodConfigError(
                f"unknown coeff {self.hp['coeff']!r}; choose one of {', '.join(COEFFS)}"
            )
        if self.hp["scope"] not in SCOPES:
            raise MethodConfigError(
                f"unknown scope {self.hp['scope']!r}; choose one of {', '.join(SCOPES)}"
            )
        self.scoped = self.scoped_parameters(self.hp["scope"])
        self.noise: torch.Tensor | None = None  # GE's draw buffer, made at the first step

    def noise_buffer(self, like: torch.Tensor) -> torch.Tensor:
        """One buffer for the GE noise of either encoder (they are modulated one after the
        other), as long as the larger scope, on the gradients' device and dtype."""
        if self.noise is None:
            size = max(sum(p.numel() for p in params) for params in self.scoped.values())
            self.noise = torch.empty(size, dtype=like.dtype, device=like.device)
        return self.noise

    def scoped_parameters(self, scope: str) -> dict[str, list[nn.Parameter]]:
        """{modality: the parameters modulated}: all of its encoder, or its conv weights."""
        if scope == "all":
            return self.modality_parameters()
        return {
            m: [
                mod.weight
                for mod in self.encoders[m].modules()
                if isinstance(mod, nn.modules.conv._ConvNd)
            ]
            for m in self.modalities
        }

    def modify_gradients(
        self, batch: Batch, out: dict[str, Any], step: StepInfo
    ) -> dict[str, torch.Tensor]:
        first, second = self.modalities
        # Steps 2-4 (Eq. 10): the coefficients from this batch's per-modality logits.
        k_a, k_v = modulation_coefficients(
            out["uni"][first],
            out["uni"][second],
            batch["label"],
            self.hp["alpha"],
            self.hp["coeff"],
        )
        ratio = score_ratio(out["uni"][first], out["uni"][second], batch["label"])
        if not self.hp["modulation_start"] <= step.epoch <= self.hp["modulation_end"]:
            one = torch.ones_like(k_a)
            return {f"k_{first}": one, f"k_{second}": one, "ratio": ratio}
        # Steps 5-6: g <- k^m g (+ GE noise) on each encoder's parameters in scope.
        for m, k in ((first, k_a), (second, k_v)):
            grads = [p.grad for p in self.scoped[m] if p.grad is not None]
            if grads:
                modulate_(grads, k, self.hp["ge"], self.noise_buffer(grads[0]))
        return {f"k_{first}": k_a, f"k_{second}": k_v, "ratio": ratio}
