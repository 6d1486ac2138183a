"""PMR: prototypical modal rebalance.

Fan, Xu, Wu, Zheng, Tao, "PMR: Prototypical Modal Rebalance for Multimodal Learning",
CVPR 2023 (docs/methods.md, "PMR"). Official code: fanyunfeng-bit/Modal-Imbalance-PMR
(main_Prototype_grad.py).

Algorithm (the paper's variant, the default):

- At the start of every epoch (before epoch 0, then after each epoch), without gradient and
  in eval mode, on a fixed random ``proto_fraction`` subset of the train split:
  c^m_k = mean of z^m over the subset's samples of class k                (Eq. 6)
  c^m <- eps c^m_old + (1 - eps) c^m_new, eps = ``proto_momentum``        (Eq. 12)
  (a class absent from the subset keeps its old prototype; the first computation takes
  c_new as it is).
- Each step, with the fusion head's CE and the encoders' features z^m:
  l^m_k = -||z^m - c^m_k||_2                                             (Eq. 7)
  rho = sum_i softmax(l^a_i)[y_i] / sum_i softmax(l^v_i)[y_i]            (Eq. 8)
  L^m_PCE = CE(l^m, y)                                                   (Eq. 9)
  beta = clip(1/rho - 1, 0, 1), gamma = 0        if rho < 1
  beta = 0, gamma = clip(rho - 1, 0, 1)          otherwise               (Eq. 11)
  L_acc = CE(fused, y) + alpha beta L^a_PCE + alpha gamma L^v_PCE        (Eq. 10)
  for epoch < ``per_epochs``:
  L = L_acc - mu gamma H(softmax(l^a)) - mu beta H(softmax(l^v))         (Eq. 13)
  with H the mean entropy over the batch (the dominant modality's prototype
  distribution is kept from converging early); afterwards L = L_acc.

The first modality of ``self.modalities`` plays the paper's a, the second its v; the
method needs exactly two modalities. rho, beta and gamma carry no gradient.

Options (``--set key=value``):

- ``alpha`` (1.0): PCE weight (the paper uses 1 or 2).
- ``mu`` (1e-3): PER weight (the paper uses 1e-2 or 1e-3).
- ``per_epochs`` (10): length of the PER stage in epochs. The paper gives no number; 10 is
  this benchmark's choice.
- ``proto_momentum`` (0.0): eps of Eq. 12 (0.0 as in the authors' scripts; their argparse
  default is 0.2).
- ``proto_fraction`` (0.1): the fraction of the prototype split the prototypes are computed
  on (a fixed, seeded, stratified subset, evaluation transform).
- ``proto_split`` ("train"): the split the prototypes are computed on, "train" or "val".
  The official code uses the validation split for AVE and CG-MNIST (main_Prototype_grad.py
  :426, :534-537, :551-555); the official variant's ``ave`` preset therefore sets "val"
  (with ``proto_fraction`` 1.0: the official code reads all of it). With "val" the
  validation labels shape training, so the validation accuracy that selects the model is
  no longer a held-out estimate: the run's config.json records ``proto_split``, and test
  numbers remain the only untouched ones.
- ``variant`` ("paper"): "official" reproduces the official code: binary weights (the
  slower modality's PCE weight is alpha, the other's 0; both 0 at rho = 1), no PER, and
  PCE only in epochs 0..``modulation_end``; afterwards the loss is CE(fused, y).
- ``modulation_end`` (70): last epoch (0-based, inclusive) with PCE in the official variant;
  unused by the paper variant.

The official variant also blends prototypes as the official code does: its computation
after epoch 0 is called with epoch = 0 again (main_Prototype_grad.py:435-440, :534-539), so
with ``proto_momentum`` > 0 the first TWO computations (here: at the start of epochs 0 and
1) take the class means as they are, and Eq. 12 applies from the third on. The paper
variant blends from the second on.

Other differences of the official code: it computes prototypes on the first tenth of the
batches of the shuffled training loader (a new subset every epoch, train augmentation),
divides by zero for a class absent from it, and computes distances with a Python double
loop; ours uses one fixed subset, keeps the old prototype of an absent class, and computes
distances with torch.cdist.

Diagnostics (averaged per epoch as ``train/<key>``): ``rho`` (Eq. 8: first / second
modality; < 1: the first is slower), ``beta`` and ``gamma`` (the PCE weights before alpha
in the paper variant; the applied binary weights, alpha included, in the official variant,
0 outside its window).

Paper protocol (``--set protocol=paper``): SGD lr 1e-3, momentum 0.9, weight decay 1e-4,
batch 64, 3 frames (CREMA-D).
"""

from __future__ import annotations

from typing import Any

import torch

from methods.joint import Joint
from methods.parts.base import Batch, BatchSource, StepInfo, cross_entropy
from methods.parts.registry import MethodConfigError, register_method

VARIANTS = ("paper", "official")
PROTO_SPLITS = ("train", "val")


def class_sums(
    features: torch.Tensor, labels: torch.Tensor, num_classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of features per class [C, D] and counts [C] (index_add_, no loop over samples)."""
    sums = features.new_zeros(num_classes, features.shape[1]).index_add_(0, labels, features)
    counts = features.new_zeros(num_classes).index_add_(
        0, labels, features.new_ones(labels.shape[0])
    )
    return sums, counts


def update_prototypes(
    old: torch.Tensor,
    seen: torch.Tensor,
    sums: torch.Tensor,
    counts: torch.Tensor,
    momentum: float,
) -> torch.Tensor:
    """Eq. 6 (class means) then Eq. 12 (c <- eps c_old + (1 - eps) c_new).

    `seen` [C] marks classes that already have a prototype; a class with no sample keeps
    `old`; a class seen for the first time takes its mean as it is.
    """
    present = (counts > 0).unsqueeze(1)
    mean = sums / counts.clamp_min(1).unsqueeze(1)  # Eq. 6
    blended = torch.where(seen.unsqueeze(1), momentum * old + (1 - momentum) * mean, mean)
    return torch.where(present, blended, old)  # Eq. 12


def prototype_logits(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """l_k(x) = -||z - c_k||_2, [B, D] x [C, D] -> [B, C] (Eq. 7), in float32."""
    return -torch.cdist(
        features.float(), prototypes.float(), compute_mode="donot_use_mm_for_euclid_dist"
    )


def true_class_score(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """sum_i softmax(l_i)[y_i] (the numerator / denominator of Eq. 8), no gradient."""
    with torch.no_grad():
        return logits.float().softmax(dim=1).gather(1, labels.long().unsqueeze(1)).sum()


def rebalance_coefficients(
    rho: torch.Tensor, variant: str = "paper", alpha: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(beta, gamma): the weights of the first and the second modality's PCE loss.

    variant="paper" (Eq. 11; alpha is applied in the loss, not here):
      rho < 1: beta = clip(1/rho - 1, 0, 1), gamma = 0; else beta = 0, gamma = clip(rho - 1, 0, 1).
    variant="official" (the official code; alpha included):
      rho < 1: (alpha, 0); rho > 1: (0, alpha); rho = 1: (0, 0).
    """
    zero = torch.zeros_like(rho)
    if variant == "paper":
        beta = torch.where(rho < 1, (1 / rho - 1).clamp(0, 1), zero)
        gamma = torch.where(rho < 1, zero, (rho - 1).clamp(0, 1))
        return beta, gamma
    if variant == "official":
        full = torch.full_like(rho, alpha)
        return torch.where(rho < 1, full, zero), torch.where(rho > 1, full, zero)
    raise MethodConfigError(f"unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")


def mean_entropy(logits: torch.Tensor) -> torch.Tensor:
    """H(softmax(l)) averaged over the batch (Eq. 13's H)."""
    logp = logits.float().log_softmax(dim=1)
    return -(logp.exp() * logp).sum(dim=1).mean()


@register_method("pmr")
class PMR(Joint):
    """PMR (Fan et al., CVPR 2023): prototypical CE terms that speed up the slower modality."""

    DIAGNOSTICS = (
        "train/rho",
        "train/beta",
        "train/gamma",
    )

    min_modalities = 2
    defaults: dict[str, Any] = {
        "alpha": 1.0,
        "mu": 1e-3,
        "per_epochs": 10,
        "proto_momentum": 0.0,
        "proto_fraction": 0.1,
        "variant": "paper",
        "modulation_end": 70,
        "proto_split": "train",
    }
    variant_presets = {"official": {"ave": {"proto_split": "val", "proto_fraction": 1.0}}}
    paper_settings = {
        "optimizer": "sgd",
        "lr": 1e-3,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "batch_size": 64,
        "frames": 3,
    }

    def __init__(self, encoders, num_classes, hp, ctx) -> None:
        super().__init__(encoders, num_classes, hp, ctx)
        if len(self.modalities) != 2:
            raise MethodConfigError(
                f"pmr needs exactly two modalities, the dataset has {len(self.modalities)} "
                f"({', '.join(self.modalities)})"
            )
        if self.hp["variant"] not in VARIANTS:
            raise MethodConfigError(
                f"unknown variant {self.hp['variant']!r}; choose one of {', '.join(VARIANTS)}"
            )
        if self.hp["proto_split"] not in PROTO_SPLITS:
            raise MethodConfigError(
                f"unknown proto_split {self.hp['proto_split']!r}; choose one of "
                f"{', '.join(PROTO_SPLITS)}"
            )
        if not 0 < self.hp["proto_fraction"] <= 1:
            raise MethodConfigError(
                f"proto_fraction must be in (0, 1], got {self.hp['proto_fraction']!r}"
            )
        # Prototypes c^m [C, D_m] as buffers (saved in checkpoints), named by position so
        # that any modality name is a valid buffer name.
        self._proto_names = {m: f"prototype_{i}" for i, m in enumerate(self.modalities)}
        for m, name in self._proto_names.items():
            self.register_buffer(name, torch.zeros(num_classes, self.encoders[m].out_dim))
        self.register_buffer("prototype_seen", torch.zeros(num_classes, dtype=torch.bool))

    def prototype(self, modality: str) -> torch.Tensor:
        return getattr(self, self._proto_names[modality])

    # -- Eqs. 6 and 12: prototypes at every epoch start -----------------------------
    @torch.no_grad()
    def compute_prototypes(self, data: BatchSource, epoch: int) -> None:
        """Eqs. 6 and 12 at the start of `epoch` (0-based)."""
        was_training = self.training
        self.eval()
        dims = {m: self.prototype(m).shape[1] for m in self.modalities}
        device = self.prototype_seen.device
        sums = {m: torch.zeros(self.num_classes, d, device=device) for m, d in dims.items()}
        counts = torch.zeros(self.num_classes, device=device)
        split, fraction = self.hp["proto_split"], self.hp["proto_fraction"]
        for batch in data.batches(split, fraction=fraction, augment=False):
            # the same bf16 autocast as the engine's training steps on CUDA
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
                feats = self.features(batch)
            labels = batch["label"].long()
            for m in self.modalities:
                s, c = class_sums(feats[m].float(), labels, self.num_classes)
                sums[m] += s
            counts += c  # the same labels for every modality
        # The official code passes epoch 0 to its first two computations: no blending.
        blend = self.prototype_seen
        if self.hp["variant"] == "official" and epoch < 2:
            blend = torch.zeros_like(blend)
        for m in self.modalities:
            self.prototype(m).copy_(
                update_prototypes(
                    self.prototype(m),
                    blend,
                    sums[m],
                    counts,
                    self.hp["proto_momentum"],
                )
            )
        self.prototype_seen |= counts > 0
        self.train(was_training)

    def on_epoch_start(self, epoch: int, data: BatchSource) -> None:
        super().on_epoch_start(epoch, data)
        self.compute_prototypes(data, epoch)

    # -- Eqs. 7-11, 13: the loss ----------------------------------------------------
    def compute_loss(
        self, batch: Batch, out: dict[str, Any], step: StepInfo
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        first, second = self.modalities
        y = batch["label"]
        ce = super().compute_loss(batch, out, step)[0]
        l_a = prototype_logits(out["features"][first], self.prototype(first))  # Eq. 7
        l_v = prototype_logits(out["features"][second], self.prototype(second))
        tiny = torch.finfo(torch.float32).tiny
        s_a, s_v = true_class_score(l_a, y), true_class_score(l_v, y)
        rho = s_a.clamp_min(tiny) / s_v.clamp_min(tiny)  # Eq. 8
        variant, alpha = self.hp["variant"], self.hp["alpha"]
        beta, gamma = rebalance_coefficients(rho, variant, alpha)  # Eq. 11
        pce_a, pce_v = cross_entropy(l_a, y), cross_entropy(l_v, y)  # Eq. 9
        if variant == "paper":
            loss = ce + alpha * beta * pce_a + alpha * gamma * pce_v  # Eq. 10
            if step.epoch < self.hp["per_epochs"]:  # Eq. 13
                loss = loss - self.hp["mu"] * (gamma * mean_entropy(l_a) + beta * mean_entropy(l_v))
        elif step.epoch <= self.hp["modulation_end"]:  # official: binary weights, no PER
            loss = ce + beta * pce_a + gamma * pce_v
        else:
            loss = ce
            beta, gamma = torch.zeros_like(beta), torch.zeros_like(gamma)
        return loss, {"rho": rho, "beta": beta, "gamma": gamma}
