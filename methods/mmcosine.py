"""MMCosine: a multi-modal cosine loss.

Ruize Xu, Ruoxuan Feng, Shi-Xiong Zhang, Di Hu, "MMCosine: Multi-Modal Cosine Loss Towards
Balanced Audio-Visual Fine-Grained Learning", ICASSP 2023 (arXiv 2303.05338). Official code:
github.com/GeWu-Lab/MMCosine_ICASSP23 (main_CD.py, models/fusion_modules.py; read at 00ba0a9).

The paper's text beyond its abstract could not be read with the tools here, so its equation
numbers are not cited; the rule is the one the abstract states ("a modality-wise L2
normalization to features and weights") as the official training step writes it
(main_CD.py:113-118, 141), the same in both. The late head's logits decompose over
modalities, W [z^a; z^v] + b = W^a z^a + W^v z^v + b; MMCosine drops b and replaces each
modality's term by a scaled cosine. For one batch:

  M1  z^m = phi^m(x^m); W^m = the columns of the head's final Linear that read modality m
      (concat: W[:, slice_m]; sum: W_m);
  M2  c^m_j = s <z^m / ||z^m||, W^m_j / ||W^m_j||>   (each class row of W^m normalised over
      ITS OWN D_m entries, not over the concatenated row; the cosine logits of modality m);
  M3  fused = sum_m c^m;  L = CE(fused, y) (+ nce_lambda L_NCE, below); one backward,
      through both normalisations, into W and the encoders; one optimiser step.

The head's bias gets no gradient (it appears in no logit): it is frozen at its initial
value 0 and left out of the optimiser (the official optimiser holds it, but SGD skips a
parameter without gradient, so both leave it unchanged).

``predict``: fused = sum_m c^m, <m> = c^m (the official code's unimodal evaluation too).

Options (``--set key=value``):

- ``scale`` (10.0): s (main_CD.py:59 and the README; the paper's per-dataset values could not
  be checked; BalanceBenchmark uses 15).
- ``head`` ("suite"): which heads carry per-modality slices. "suite" takes the run's
  ``fusion`` head; concat and sum have slices, the suite's film and gated heads (one
  modality conditions the other, a final Linear on ONE modality's width) have none, and are
  refused. "symmetric" builds, for ``fusion=film|gated``, the official revised symmetric
  heads (fusion_modules.py at eb3a540): FiLM x' = gamma(z^v) * z^a + beta(z^v),
  y' = gamma(z^a) * z^v + beta(z^a); gated x' = sigmoid(W_y z^v + b_y) * (W_x z^a + b_x),
  y' = sigmoid(W_x z^a + b_x) * (W_y z^v + b_y); the final Linear reads [x'; y'], the cosines
  are taken on x' and y' with its two column slices. For concat and sum "symmetric" changes
  nothing (they are symmetric already).
- ``eval_fused`` ("cosine"): the fused logits ``predict`` reports, hence the ones that select
  the model: "cosine" = sum_m c^m (what training optimises); "raw" = the head's plain
  W [z^a; z^v] + b, as the official evaluation scores it (main_CD.py:181, 196) although it
  never trained that head this way.
- ``nce_lambda`` (0.0), ``nce_temperature`` (0.1): weight and temperature of the NCE term of
  the paper's supplementary material (main_CD.py:18-50, 141): with f = z^a / ||z^a||,
  g = z^v / ||z^v||, p_i = softmax_j((1 - ||f_i - g_j||^2 / 2) / T) over the batch,
  positives P_i = {j: y_j = y_i} (i included), negatives N_i the rest,
  L_NCE = mean_i [ -sum_{j in P_i} log(p_ij + 1e-10) / |P_i|
                   - sum_{j in N_i} log(1 - p_ij + 1e-10) / |N_i| ].
  (For "symmetric" heads f, g are x', y', as in the official code.) A row without negatives
  contributes no second term (the official code divides 0 by 0 there).
- ``variant`` ("paper"): "official" switches ``eval_fused`` to "raw" (the only place where the
  official code's behaviour differs from the rule above).

Other differences of the official code: its argparse line for --dataset has a typo
(``defult``) and it imports a missing utils/ package, so it does not run as published; it
picks its best epoch on the test split (the engine selects on validation); it hard-codes
512-wide features.

Cosines are computed in float32 with autocast off (a bf16 cosine times s = 10 is coarse).

Diagnostics (``train/<key>``): ``wnorm_<m>`` mean ||W^m_j|| over classes (the paper's
imbalance evidence: the dominant modality's class weights grow), ``znorm_<m>`` mean
||z^m||, ``cos_y_<m>`` and ``cos_y_std_<m>`` mean and std over the batch of
cos(z^m, W^m_y), ``acc_<m>`` batch accuracy of c^m, ``raw_acc`` batch accuracy of the raw
head, and ``nce`` when ``nce_lambda`` > 0.

Paper protocol (``protocol=paper``), the official CREMA-D script: SGD lr 1e-3, momentum 0.9,
weight decay 1e-4, StepLR(100, 0.1), batch 32, 200 epochs, 1 frame.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from methods.parts.base import Batch, Method, StepInfo
from methods.parts.encoders import init_weights
from methods.parts.fusion import ConcatFusion, FusionHead, SumFusion, create_fusion
from methods.parts.registry import MethodConfigError, register_method

HEADS = ("suite", "symmetric")
EVAL_FUSED = ("cosine", "raw")
VARIANTS = ("paper", "official")
NCE_EPS = 1e-10  # main_CD.py:15


# -- M2: cosine logits -----------------------------------------------------------------------
def cosine_logits(z: torch.Tensor, weight: torch.Tensor, scale: float) -> torch.Tensor:
    """c_j = s <z / ||z||, W_j / ||W_j||> for features z [B, D] and class rows W [C, D] (M2),
    in float32 (float64 for float64 inputs) whatever the autocast state. A zero row or
    feature gives c = 0 (F.normalize's eps of 1e-12, as the official code)."""
    dtype = _at_least_float32(z, weight)
    with _no_autocast(z):
        zn = F.normalize(z.to(dtype), dim=1)
        wn = F.normalize(weight.to(dtype), dim=1)
        return scale * (zn @ wn.t())


def _at_least_float32(*xs: torch.Tensor) -> torch.dtype:
    dtype = torch.float32
    for x in xs:
        dtype = torch.promote_types(dtype, x.dtype)
    return dtype


def _no_autocast(x: torch.Tensor) -> contextlib.AbstractContextManager:
    kind = x.device.type
    if kind in ("cuda", "cpu") and torch.is_autocast_enabled(kind):
        return torch.autocast(kind, enabled=False)
    return contextlib.nullcontext()


# -- the supplementary NCE term --------------------------------------------------------------
def nce_loss(
    f: torch.Tensor, g: torch.Tensor, labels: torch.Tensor, temperature: float = 0.1
) -> torch.Tensor:
    """The supplementary NCE term between two modalities' features (module docstring), no
    loop over samples; float32 (float64 for float64 inputs)."""
    dtype = _at_least_float32(f, g)
    with _no_autocast(f):
        fn, gn = F.normalize(f.to(dtype), dim=1), F.normalize(g.to(dtype), dim=1)
        dist = (fn.unsqueeze(1) - gn.unsqueeze(0)).square().sum(2)
        p = torch.softmax((1 - 0.5 * dist) / temperature, dim=1)
        pos = (labels.unsqueeze(1) == labels.unsqueeze(0)).float()
        neg = 1 - pos
        log_pos = -(p + NCE_EPS).log() * pos
        log_neg = -(1 - p + NCE_EPS).log() * neg
        per_row = log_pos.sum(1) / pos.sum(1) + log_neg.sum(1) / neg.sum(1).clamp_min(1)
        return per_row.mean()


# -- the official symmetric FiLM / gated heads ------------------------------------------------
class SymmetricHead(FusionHead):
    """Base of the official revised heads: two per-modality vectors x', y' -> Linear on
    [x'; y']. `project` gives {m: x'^m}; the final Linear is `fc`."""

    def __init__(self, dims: dict[str, int], num_classes: int) -> None:
        super().__init__(dims, num_classes)
        if len(dims) != 2:
            raise MethodConfigError(
                f"mmcosine: head=symmetric needs exactly two modalities, got {list(dims)}"
            )
        self.a, self.v = self.modalities
        self.out_dims = self.projected_dims()
        self.fc = nn.Linear(sum(self.out_dims.values()), num_classes)

    def projected_dims(self) -> dict[str, int]:
        raise NotImplementedError

    def project(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, feats):
        proj = self.project(feats)
        fused = self.fc(torch.cat([proj[m] for m in self.modalities], dim=1))
        weights = self.fc.weight.split([self.out_dims[m] for m in self.modalities], dim=1)
        share = self.fc.bias / 2
        uni = {m: proj[m] @ w.t() + share for m, w in zip(self.modalities, weights, strict=True)}
        return fused, uni


class SymmetricFiLM(SymmetricHead):
    """x' = gamma(z^v) * z^a + beta(z^v), y' = gamma(z^a) * z^v + beta(z^a)."""

    def __init__(self, dims: dict[str, int], num_classes: int) -> None:
        super().__init__(dims, num_classes)
        self.film = nn.ModuleDict(
            {
                self.a: nn.Linear(dims[self.a], 2 * dims[self.v]),  # conditions v
                self.v: nn.Linear(dims[self.v], 2 * dims[self.a]),  # conditions a
            }
        )
        init_weights(self)

    def projected_dims(self) -> dict[str, int]:
        return dict(self.dims)

    def project(self, feats):
        za, zv = feats[self.a], feats[self.v]
        gamma_a, beta_a = self.film[self.a](za).chunk(2, dim=1)
        gamma_v, beta_v = self.film[self.v](zv).chunk(2, dim=1)
        return {self.a: gamma_v * za + beta_v, self.v: gamma_a * zv + beta_a}


class SymmetricGated(SymmetricHead):
    """x' = sigmoid(W_y z^v + b_y) * (W_x z^a + b_x), y' = sigmoid(W_x z^a + b_x) * (W_y z^v + b_y),
    both of width max(D_a, D_v) (the official code: 512)."""

    def __init__(self, dims: dict[str, int], num_classes: int) -> None:
        super().__init__(dims, num_classes)
        width = max(dims.values())
        self.gate = nn.ModuleDict({m: nn.Linear(d, width) for m, d in dims.items()})
        init_weights(self)

    def projected_dims(self) -> dict[str, int]:
        width = max(self.dims.values())
        return {m: width for m in self.modalities}

    def project(self, feats):
        out_a, out_v = self.gate[self.a](feats[self.a]), self.gate[self.v](feats[self.v])
        return {self.a: torch.sigmoid(out_v) * out_a, self.v: torch.sigmoid(out_a) * out_v}


SYMMETRIC = {"film": SymmetricFiLM, "gated": SymmetricGated}


# -- the method ------------------------------------------------------------------------------
@register_method("mmcosine")
class MMCosine(Method):
    """MMCosine (Xu et al., ICASSP 2023): modality-wise normalised weights and features."""

    DIAGNOSTICS = (
        "train/wnorm_{modality}",
        "train/cos_y_{modality}",
        "train/acc_{modality}",
        "train/raw_acc",
    )

    min_modalities = 2
    defaults: dict[str, Any] = {
        "scale": 10.0,
        "head": "suite",
        "eval_fused": "cosine",
        "nce_lambda": 0.0,
        "nce_temperature": 0.1,
        "variant": "paper",
    }
    variant_defaults = {"official": {"eval_fused": "raw"}}
    paper_settings = {
        "optimizer": "sgd",
        "lr": 1e-3,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "scheduler": "step",
        "lr_step": 100,
        "lr_gamma": 0.1,
        "batch_size": 32,
        "epochs": 200,
        "frames": 1,
    }

    def __init__(self, encoders, num_classes, hp, ctx) -> None:
        super().__init__(encoders, num_classes, hp, ctx)
        # the variant's defaults also when built without benchmark.train.config (tests, scripts)
        variant = self.variant_defaults.get(self.hp["variant"], {})
        self.hp = hp = {**self.defaults, **variant, **hp}
        for key, choices in (("head", HEADS), ("eval_fused", EVAL_FUSED), ("variant", VARIANTS)):
            if hp[key] not in choices:
                raise MethodConfigError(
                    f"mmcosine: unknown {key} {hp[key]!r}; choose one of {', '.join(choices)}"
                )
        for key in ("scale", "nce_temperature"):
            if not isinstance(hp[key], int | float) or isinstance(hp[key], bool) or hp[key] <= 0:
                raise MethodConfigError(
                    f"mmcosine: {key} must be a positive number, got {hp[key]!r}"
                )
        lam = hp["nce_lambda"]
        if not isinstance(lam, int | float) or isinstance(lam, bool) or lam < 0:
            raise MethodConfigError(f"mmcosine: nce_lambda must be a number >= 0, got {lam!r}")
        if lam > 0 and len(self.modalities) != 2:
            raise MethodConfigError(
                f"mmcosine: the NCE term (nce_lambda > 0) is defined for two modalities, the "
                f"dataset has {len(self.modalities)} ({', '.join(self.modalities)})"
            )
        fusion = ctx.settings.get("fusion", "concat")
        dims = {m: self.encoders[m].out_dim for m in self.modalities}
        if fusion in SYMMETRIC and hp["head"] == "symmetric":
            self.head: FusionHead = SYMMETRIC[fusion](dims, num_classes)
        else:
            self.head = create_fusion(fusion, dims, num_classes)
        if not isinstance(self.head, ConcatFusion | SumFusion | SymmetricHead):
            raise MethodConfigError(
                f"mmcosine needs a fusion head whose final layer has one slice per modality "
                f"(concat, sum); the suite's {fusion!r} head has none. Use fusion=concat|sum, "
                f"or --set head=symmetric for the official code's symmetric {fusion} head"
            )
        for bias in self.final_biases():
            bias.requires_grad_(False)  # in no logit: no gradient, frozen at 0
        self.add_optimizer("main", self.parameters())

    # -- M1: the per-modality slices ---------------------------------------------------------
    def final_biases(self) -> list[nn.Parameter]:
        if isinstance(self.head, SumFusion):
            return [self.head.fc[m].bias for m in self.modalities]
        return [self.head.fc.bias]

    def class_weights(self) -> dict[str, torch.Tensor]:
        """{m: W^m [C, D_m]}: the final Linear's columns that read modality m (M1)."""
        head = self.head
        if isinstance(head, SumFusion):
            return {m: head.fc[m].weight for m in self.modalities}
        widths = head.out_dims if isinstance(head, SymmetricHead) else head.dims
        parts = head.fc.weight.split([widths[m] for m in self.modalities], dim=1)
        return dict(zip(self.modalities, parts, strict=True))

    def head_inputs(self, feats: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The per-modality vectors the final Linear reads: z^m, or x', y' (symmetric)."""
        if isinstance(self.head, SymmetricHead):
            return self.head.project(feats)
        return feats

    def forward_cosine(self, batch: Batch) -> dict[str, Any]:
        feats = {m: self.encoders[m](batch[m]) for m in self.modalities}
        inputs = self.head_inputs(feats)
        weights = self.class_weights()
        scale = self.hp["scale"]
        cos = {m: cosine_logits(inputs[m], weights[m], scale) for m in self.modalities}  # M2
        fused = torch.stack(list(cos.values())).sum(dim=0)  # M3
        return {"features": feats, "inputs": inputs, "weights": weights, "cos": cos, "fused": fused}

    # -- M3: one step ------------------------------------------------------------------------
    def update(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        opt = self.optimizers["main"]
        opt.zero_grad(set_to_none=True)
        out = self.forward_cosine(batch)
        y = batch["label"]
        loss = F.cross_entropy(out["fused"], y)  # M3 (the logits are float32 already)
        logs: dict[str, torch.Tensor] = {}
        if self.hp["nce_lambda"] > 0:
            a, v = self.modalities
            nce = nce_loss(out["inputs"][a], out["inputs"][v], y, self.hp["nce_temperature"])
            loss = loss + self.hp["nce_lambda"] * nce
            logs["nce"] = nce.detach()
        loss.backward()
        opt.step()
        logs.update(self.diagnostics(out, y))
        return {"loss": loss.detach(), **logs}

    @torch.no_grad()
    def diagnostics(self, out: dict[str, Any], y: torch.Tensor) -> dict[str, torch.Tensor]:
        logs = {}
        for m in self.modalities:
            w, z = out["weights"][m].detach().float(), out["inputs"][m].detach().float()
            cos_y = out["cos"][m].detach().gather(1, y[:, None]).squeeze(1) / self.hp["scale"]
            logs[f"wnorm_{m}"] = w.norm(dim=1).mean()
            logs[f"znorm_{m}"] = z.norm(dim=1).mean()
            logs[f"cos_y_{m}"] = cos_y.mean()
            logs[f"cos_y_std_{m}"] = cos_y.std(correction=0)
            logs[f"acc_{m}"] = (out["cos"][m].argmax(1) == y).float().mean()
        raw, _ = self.head(out["features"])
        logs["raw_acc"] = (raw.argmax(1) == y).float().mean()
        return logs

    def predict(self, batch: Batch) -> dict[str, torch.Tensor]:
        out = self.forward_cosine(batch)
        fused = out["fused"]
        if self.hp["eval_fused"] == "raw":
            fused, _ = self.head(out["features"])
        return {"fused": fused, **out["cos"]}
