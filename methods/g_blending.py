"""G-Blending: gradient blending of unimodal and fused losses by their generalisation.

Weiyao Wang, Du Tran, Matt Feiszli, "What Makes Training Multi-modal Classification Networks
Hard?", CVPR 2020. Official code: facebookresearch/VMZ (c2/, read at 4cc542d), which only
trains with given weights (train_net.py:578-585, loss_creator.py:120-199) and, as published,
raises a TypeError on that path (loss_creator.py:147 passes ``prefix=`` to a function whose
parameter is ``loss_prefix``). No runnable official code estimates the weights, so the
estimation below follows the paper's description as the specification gives it; the paper's
text could not be read with the tools here, so its equation numbers are not cited and the
weight formula is marked as unverified against the printed one.

Model: the shared encoders phi^m, the run's fusion head (fused logits) and one extra head per
modality h^m = Linear(D_m, C) on z^m (VMZ audio_visual_model.py:483-497). Branches
k in {m_1, ..., m_K, fused}.

  B1  step: L = sum_k w_k CE(logits_k, y), logits_m = h^m(z^m); one forward (each encoder
      once), one backward. Encoder m gets w_m grad CE_m + w_fused grad CE_fused; h^m only the
      first term, the fusion head only the second. w is fixed within a super-epoch.
  B2  weights, at the start of epochs 0, n, 2n, ... (n = ``super_epoch``), without touching
      the main model (its parameters, BatchNorm buffers, optimiser state, the data order): for
      each branch k, a copy of the modules it needs (encoder m and h^m; or every encoder and
      the fusion head) with a fresh optimiser from the run's factory at the current lr is
      trained n epochs on the training samples (augmented) with CE(logits_k) alone. Before
      (N) and after (N + n), in eval mode, without augmentation:
        L^T_k = mean CE on the training samples, L^V_k = mean CE on the held-out samples;
        O = L^V - L^T (overfitting), dO_k = O_k(N+n) - O_k(N),
        dG_k = L^V_k(N) - L^V_k(N+n) (generalisation gained);
        w_k = max(dG_k, 0) / (dO_k^2 + 1e-8), normalised to sum 1 (all zero: uniform)
        [the paper's w_k proportional to dG / dO^2; unverified against the print].
  Held-out samples come from the TRAIN split, never from val or test: a fixed, seeded
  ``holdout_fraction`` of the train rows (by a hash of the row index) is left out of every
  training loss, the main model's included (MultiBench does the same with 8 %), and is what
  L^V reads. (The loss masks them out: they still pass through the encoders, and BatchNorm's
  batch statistics see them.)

Cost: per super-epoch K + 1 extra n-epoch trainings (the fused copy about one joint epoch per
epoch, the unimodal copies about one together) and 2 (K + 1) evaluation passes: a run costs
about 3x joint training.

Options (``--set key=value``):
- ``super_epoch`` (10): n (BalanceBenchmark's value; MultiBench uses 20).
- ``mode`` ("online"): "online" re-estimates every n epochs; "offline" estimates once, at
  epoch 0, with ``estimate_epochs`` epochs of copy training (the paper's offline variant).
- ``estimate_epochs`` (10): the copies' training length in offline mode.
- ``weights`` (null): a list of K + 1 weights (modalities in dataset order, then fused) used
  as they are, with no estimation (what VMZ's command line does).
- ``holdout_fraction`` (0.08): the share of the train split held out for L^V.
- ``est_fraction`` (1.0): the fraction of the train split the L^T / L^V passes read.

Not implemented (options of the specification, left for later): ``ogr=multibench`` and
``ogr=balancebench`` (the two third-party estimators) and ``av_head=mlp`` (VMZ's MLP head).

Diagnostics (``train/<key>``): per step ``ce_<k>`` (each branch's masked CE) and
``acc_<m>``; per epoch ``w_<k>``, and in estimation epochs ``dG_<k>``, ``dO_<k>``,
``ogr_<k>`` = dO/dG, ``lt0_<k>``, ``lv0_<k>``, ``lt1_<k>``, ``lv1_<k>`` (L^T and L^V before
and after).

Paper protocol (``protocol=paper``) = the benchmark settings: the paper trains on Kinetics,
mini-Sports, EPIC-Kitchens and AudioSet only.
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from methods.parts.base import Batch, BatchSource, Method, StepInfo
from methods.parts.encoders import init_weights
from methods.parts.fusion import create_fusion
from methods.parts.optim import build_optimizer
from methods.parts.registry import MethodConfigError, register_method

MODES = ("online", "offline")
FUSED = "fused"
_HASH_MUL, _HASH_MOD = 2654435761, 2**32


# -- B2: the weights -------------------------------------------------------------------------
def blend_weights(d_g: Sequence[float], d_o: Sequence[float], eps: float = 1e-8) -> list[float]:
    """w_k = max(dG_k, 0) / (dO_k^2 + eps), normalised to sum 1; all zero -> uniform (B2).
    A branch whose losses could not be measured (NaN: no held-out sample read) gets 0."""
    raw = [
        max(g, 0.0) / (o * o + eps) if math.isfinite(g) and math.isfinite(o) else 0.0
        for g, o in zip(d_g, d_o, strict=True)
    ]
    total = sum(raw)
    if total <= 0:
        return [1.0 / len(raw)] * len(raw)
    return [r / total for r in raw]


def holdout_mask(index: torch.Tensor, fraction: float, seed: int = 0) -> torch.Tensor:
    """True for the held-out rows: a fixed pseudo-random `fraction` of row indices (a
    multiplicative hash salted with `seed`), computed on the device, no host sync."""
    salted = index.long() + (seed % 4096 + 1) * 1_000_003
    h = (salted * _HASH_MUL) % _HASH_MOD
    return h < int(fraction * _HASH_MOD)


def masked_ce(logits: torch.Tensor, labels: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean CE over the samples where `keep` (0 when none), in float32 (float64 for float64
    logits)."""
    ce = F.cross_entropy(
        logits.to(torch.promote_types(logits.dtype, torch.float32)), labels, reduction="none"
    )
    weight = keep.to(ce.dtype)
    return (ce * weight).sum() / weight.sum().clamp_min(1)


@register_method("g_blending")
class GBlending(Method):
    """G-Blending (Wang et al., CVPR 2020): unimodal + fused losses weighted by held-out OGR.

    Each branch's weight comes from its overfitting-to-generalisation ratio on train samples
    held out of training."""

    DIAGNOSTICS = (
        "train/w_{modality}",
        "train/w_fused",
        "train/ce_fused",
        "train/acc_{modality}",
    )

    min_modalities = 2
    defaults: dict[str, Any] = {
        "super_epoch": 10,
        "mode": "online",
        "estimate_epochs": 10,
        "weights": None,
        "holdout_fraction": 0.08,
        "est_fraction": 1.0,
    }

    def __init__(self, encoders, num_classes, hp, ctx) -> None:
        super().__init__(encoders, num_classes, hp, ctx)
        hp = self.hp
        if hp["mode"] not in MODES:
            raise MethodConfigError(
                f"g_blending: unknown mode {hp['mode']!r}; choose one of {', '.join(MODES)}"
            )
        for key in ("super_epoch", "estimate_epochs"):
            if not isinstance(hp[key], int) or isinstance(hp[key], bool) or hp[key] < 1:
                raise MethodConfigError(
                    f"g_blending: {key} must be an integer >= 1, got {hp[key]!r}"
                )
        if not _is_number(hp["holdout_fraction"]) or not 0 < hp["holdout_fraction"] < 1:
            raise MethodConfigError(
                f"g_blending: holdout_fraction must be in (0, 1), got {hp['holdout_fraction']!r}"
            )
        if not _is_number(hp["est_fraction"]) or not 0 < hp["est_fraction"] <= 1:
            raise MethodConfigError(
                f"g_blending: est_fraction must be in (0, 1], got {hp['est_fraction']!r}"
            )
        self.branches = [*self.modalities, FUSED]
        weights = hp["weights"]
        if weights is not None and (
            not isinstance(weights, list | tuple)
            or len(weights) != len(self.branches)
            or not all(_is_number(w) and w >= 0 for w in weights)
        ):
            raise MethodConfigError(
                f"g_blending: weights must be null or {len(self.branches)} numbers >= 0 "
                f"(for {', '.join(self.branches)}), got {weights!r}"
            )
        dims = {m: self.encoders[m].out_dim for m in self.modalities}
        self.head = create_fusion(ctx.settings.get("fusion", "concat"), dims, num_classes)
        self.uni_heads = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in dims.items()})
        init_weights(self.uni_heads)
        self.add_optimizer("main", self.parameters())
        start = weights if weights is not None else [1.0] * len(self.branches)
        self.register_buffer("w", torch.tensor([float(x) for x in start]))
        self.last_estimate: dict[str, float] = {}

    # -- B1: one step ------------------------------------------------------------------------
    def branch_logits(self, batch: Batch) -> dict[str, torch.Tensor]:
        feats = {m: self.encoders[m](batch[m]) for m in self.modalities}
        fused, _ = self.head(feats)
        return {**{m: self.uni_heads[m](feats[m]) for m in self.modalities}, FUSED: fused}

    def train_mask(self, batch: Batch) -> torch.Tensor:
        return ~holdout_mask(batch["index"], self.hp["holdout_fraction"], self.ctx.seed)

    def update(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        opt = self.optimizers["main"]
        opt.zero_grad(set_to_none=True)
        logits = self.branch_logits(batch)
        y, keep = batch["label"], self.train_mask(batch)
        ce = torch.stack([masked_ce(logits[k], y, keep) for k in self.branches])
        loss = (self.w.to(ce.dtype) * ce).sum()  # B1
        loss.backward()
        opt.step()
        logs = {"loss": loss.detach()}
        for i, k in enumerate(self.branches):
            logs[f"ce_{k}"] = ce[i].detach()
        for m in self.modalities:
            logs[f"acc_{m}"] = (logits[m].detach().argmax(1) == y).float().mean()
        return logs

    def predict(self, batch: Batch) -> dict[str, torch.Tensor]:
        logits = self.branch_logits(batch)
        return {"fused": logits[FUSED], **{m: logits[m] for m in self.modalities}}

    # -- B2: the weights at super-epoch starts -----------------------------------------------
    def estimation_epochs(self, epoch: int) -> int:
        """How many epochs the copies train at the start of `epoch`; 0: no estimation."""
        if self.hp["weights"] is not None:
            return 0
        if self.hp["mode"] == "offline":
            return self.hp["estimate_epochs"] if epoch == 0 else 0
        return self.hp["super_epoch"] if epoch % self.hp["super_epoch"] == 0 else 0

    def on_epoch_start(self, epoch: int, data: BatchSource) -> None:
        super().on_epoch_start(epoch, data)
        n = self.estimation_epochs(epoch)
        self.last_estimate = {}
        if n:
            self.estimate_weights(data, n)

    def branch_copy(self, k: str) -> nn.ModuleDict:
        """A copy of the modules branch `k` needs (B2)."""
        if k == FUSED:
            return copy.deepcopy(nn.ModuleDict({"encoders": self.encoders, "head": self.head}))
        return copy.deepcopy(
            nn.ModuleDict({"encoder": self.encoders[k], "head": self.uni_heads[k]})
        )

    def copy_logits(self, k: str, model: nn.ModuleDict, batch: Batch) -> torch.Tensor:
        if k == FUSED:
            feats = {m: model["encoders"][m](batch[m]) for m in self.modalities}
            return model["head"](feats)[0]
        return model["head"](model["encoder"](batch[k]))

    def held_losses(self, k: str, model: nn.ModuleDict, data: BatchSource) -> tuple[float, float]:
        """(L^T, L^V): mean CE of branch k on the training and the held-out samples (B2)."""
        was_training = model.training
        model.eval()
        sums = torch.zeros(2, 2, dtype=torch.float64, device=self.w.device)  # [T/V, sum/n]
        with torch.no_grad():
            for batch in data.batches("train", fraction=self.hp["est_fraction"], augment=False):
                with self.autocast():
                    logits = self.copy_logits(k, model, batch)
                ce = F.cross_entropy(logits.float(), batch["label"], reduction="none").double()
                held = holdout_mask(batch["index"], self.hp["holdout_fraction"], self.ctx.seed)
                for row, mask in enumerate((~held, held)):
                    sums[row, 0] += (ce * mask).sum()
                    sums[row, 1] += mask.sum()
        model.train(was_training)
        values = sums.tolist()
        return tuple(s / c if c else float("nan") for s, c in values)  # type: ignore[return-value]

    def fit_copy(self, k: str, model: nn.ModuleDict, data: BatchSource, epochs: int) -> None:
        settings = {**self.ctx.settings, "lr": self.lr}
        opt = build_optimizer(model.parameters(), settings, self.w.device)
        model.train()
        for _ in range(epochs):
            for batch in data.batches("train", augment=True):
                opt.zero_grad(set_to_none=True)
                with self.autocast():
                    logits = self.copy_logits(k, model, batch)
                masked_ce(logits, batch["label"], self.train_mask(batch)).backward()
                opt.step()

    def estimate_weights(self, data: BatchSource, epochs: int) -> None:
        with _rng_preserved(self.w.device):
            d_g, d_o = [], []
            for k in self.branches:
                model = self.branch_copy(k)
                lt0, lv0 = self.held_losses(k, model, data)
                self.fit_copy(k, model, data, epochs)
                lt1, lv1 = self.held_losses(k, model, data)
                d_g.append(lv0 - lv1)
                d_o.append((lv1 - lt1) - (lv0 - lt0))
                self.last_estimate.update(
                    {f"lt0_{k}": lt0, f"lv0_{k}": lv0, f"lt1_{k}": lt1, f"lv1_{k}": lv1}
                )
                self.last_estimate[f"dG_{k}"] = d_g[-1]
                self.last_estimate[f"dO_{k}"] = d_o[-1]
                self.last_estimate[f"ogr_{k}"] = d_o[-1] / d_g[-1] if d_g[-1] else float("inf")
                del model
            weights = blend_weights(d_g, d_o)
        self.w.copy_(torch.tensor(weights, dtype=self.w.dtype))

    def autocast(self) -> contextlib.AbstractContextManager:
        device = self.w.device
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def on_epoch_end(self, epoch: int, data: BatchSource) -> dict[str, float]:
        logs = super().on_epoch_end(epoch, data)
        logs.update({f"w_{k}": v for k, v in zip(self.branches, self.w.tolist(), strict=True)})
        logs.update(self.last_estimate)
        return logs

    def extra_state(self) -> dict[str, Any]:
        return {"last_estimate": dict(self.last_estimate)}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.last_estimate = dict(state.get("last_estimate", {}))


@contextlib.contextmanager
def _rng_preserved(device: torch.device) -> Iterator[None]:
    """The global torch RNG state (and CUDA's) as it was: the estimation draws nothing the main
    run would see."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)
