"""MLA: alternating unimodal adaptation with a shared head and test-time entropy fusion.

Paper: X. Zhang, J. Yoon, M. Bansal, H. Yao, "Multimodal Representation Learning by
Alternating Unimodal Adaptation", CVPR 2024 (arXiv 2311.10707). Official code:
github.com/Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation (main.py,
utils/utils.py `GSPlugin`, models/basic_model.py). Specification: methods-zoo/mla.md.

What could be checked: the paper's body text (its equations) could not be read from the
stored sources in this pass, only its abstract (alternating unimodal learning, one head
shared across modalities whose optimisation is "controlled by a gradient modification
mechanism", and "test-time uncertainty-based model fusion"). The equation forms below (the
OWM projection, alpha's schedule, the per-sample entropy weights) therefore follow the
specification and the official code; equation numbers of the paper are not cited. The
spec's [paper?] mark on alpha = 0.1^(1 + b/N_b) is unresolved: the schedule is the official
code's (utils.py, `before_update`).

Model: encoders phi^m and ONE head H = Linear(D, C) applied to every z^m = phi^m(x^m);
u^m = H(z^m). All modalities need the same feature width D (a MethodConfigError otherwise).
There is no fusion head and no fused loss.

Training, per batch, for each modality m in `order` (one sub-step each):

1. z^m = phi^m(x^m), L_m = CE(H(z^m), y); backward. L_m reaches theta^m and H only, and
   only theta^m and H are stepped: the other encoders get no momentum or weight-decay step.
2. Head gradient modification (``gm``), from the second sub-step of the run on:
   r = mean over the batch of z^m (1 x D, detached, float32), k = P r^T (D x 1),
   P <- P - k k^T / (alpha + r k)  (OWM, Zeng et al. 2019: r k is a scalar),
   G_W <- G_W P^T (the head's weight gradient; bias untouched).
   alpha = 0.1^(1 + b / N_b), b = index of the batch in the epoch, N_b = batches per epoch.
   P (D x D, identity at the start, float32) is shared by all modalities and never reset;
   it is updated with the current modality's r before projecting that modality's gradient.
3. optimiser step of theta^m and H. (One factory optimiser per encoder and one for H: the
   same arithmetic as the code's single SGD, whose state is per parameter, where a
   parameter without gradient is skipped.)

Prediction: u^m for each m, and the fused logits of the test-time uncertainty fusion
(``fusion="entropy"``), per sample: p_m = softmax(u^m), e_m = -sum_c p_mc log p_mc,
lambda = softmax over m of (-e_m) (= exp(max e - e_m) / sum, the code's form),
fused = sum_m lambda_m u^m (`entropy_weights`, `fuse`).

Options (``--set key=value``), defaults in brackets:

- ``gm`` ["owm"]: "owm" (step 2), "none" (no modification: what the released code trains
  with, see below), "code_formula" (the official plugin's arithmetic when its name test
  matches: denominator alpha + k r, an outer product (D x D) divided element-wise, then
  P <- P / ||P||_F after every update; `code_formula_update`).
- ``fusion`` ["entropy"]: "entropy" (above) or "fixed": fused = sum_m w_m u^m.
- ``weights`` [null]: w for ``fusion="fixed"``; null = the official (0.55, 0.45) for two
  modalities (main.py passes av_alpha 0.55 for CREMA-D), (0.35, 0.25, 0.4) for three
  (the --a/v/t_alpha defaults), uniform otherwise.
- ``entropy`` ["sample"]: "sample" (above) or "official_batch": the code's
  `calculate_entropy` takes the softmax over the batch (dim 0) and sums -p log p over all
  entries, giving one lambda per modality per evaluation batch that depends on the batch's
  composition (`batch_entropy_weights`).
- ``order`` [null]: the modalities' sub-step order; null = the dataset's order (the code:
  audio, visual[, text]).
- ``stale_zero_grads`` [false]: true reproduces the pinned torch 1.8.1, whose
  ``zero_grad()`` leaves zero tensors: a modality trained earlier in the batch keeps a zero
  gradient, so each later sub-step gives its encoder (and the head) another momentum +
  weight-decay step. Gradients are dropped at the end of the batch (the code deletes them).
- ``variant`` ["paper"]: "official" sets ``gm="none"``, ``entropy="official_batch"`` and
  ``stale_zero_grads=true``: the released code's training step (the README's dynamic-fusion
  command evaluates with the per-batch entropy fusion).

Why the released code trains without head modification: `GSPlugin.before_update` looks for
a parameter named "module.weight", but main.py passes it the bare Linear
``fusion_module.fc_out``, whose parameters are named "weight" and "bias"; the test never
matches, so P is never used (at commit 4735bbc it matched, but main.py passed the class,
not an instance, and crashed). ``gm="code_formula"`` gives the arithmetic of that plugin
for whoever wants the intended-but-never-run behaviour.

Pitfall (logged, not fixed): with exact OWM and a P that is never reset, every update
shrinks P along r by alpha / (alpha + r P r^T) (about 0 for features of ordinary size), so
after roughly D / M batches P is near zero on the span of the features and H's weight
gradient vanishes; ``p_trace`` and ``p_rank`` show it.

Diagnostics. Per step (engine: per-epoch means): ``loss`` (mean of the L_m),
``loss_<m>``, ``lambda_<m>`` (mean entropy weight of m over the training batch, each u^m
from its own sub-step's forward, before its step; always the per-sample rule),
``cos_before_<m>``/``cos_after_<m>`` (cosine between H's weight gradient of m, before /
after projection, and the last raw weight gradient of the modality trained before it; 0
until that one has a gradient). Per epoch (``on_epoch_end``): ``p_trace`` (trace of P),
``p_rank`` (number of singular values of P above 1e-3; the eigenvalues for OWM, where P is
symmetric positive semi-definite). Each modality's per-epoch val/test accuracy of u^m is
evaluated by the engine, and forgetting (running maximum - current) is computed from it by
`benchmark.report.frames.forgetting_frame`, as for every method.

Paper protocol (``paper_settings``, the official README's CREMA-D command): SGD lr 1e-3,
momentum 0.9, weight decay 1e-4, StepLR(70, 0.1), 100 epochs, batch 64, 3 frames.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from methods.parts.base import Batch, Method, StepInfo, cross_entropy
from methods.parts.encoders import init_weights
from methods.parts.registry import MethodConfigError, register_method

GMS = ("owm", "none", "code_formula")
FUSIONS = ("entropy", "fixed")
ENTROPIES = ("sample", "official_batch")
VARIANTS = ("paper", "official")
OFFICIAL_WEIGHTS = {2: (0.55, 0.45), 3: (0.35, 0.25, 0.4)}
_TINY = 1e-12


# -- step 2: the projection P (pure functions, float32) ----------------------------------
def owm_alpha(batch: int, batches_per_epoch: int) -> float:
    """alpha = 0.1^(1 + b / N_b) (official `before_update`)."""
    return 0.1 ** (1.0 + batch / batches_per_epoch)


def owm_update(p: torch.Tensor, r: torch.Tensor, alpha: float) -> torch.Tensor:
    """OWM: k = P r^T, P - k k^T / (alpha + r k); r is 1 x D, r k a scalar."""
    k = p @ r.reshape(-1, 1)
    return p - (k @ k.T) / (alpha + r.reshape(1, -1) @ k)


def code_formula_update(p: torch.Tensor, r: torch.Tensor, alpha: float) -> torch.Tensor:
    """The official plugin's arithmetic: k = P r^T, P - (k k^T) / (alpha + k r) with k r an
    outer product (D x D, element-wise division), then P / ||P||_F."""
    k = p @ r.reshape(-1, 1)
    p = p - (k @ k.T) / (alpha + k @ r.reshape(1, -1))
    return p / torch.linalg.matrix_norm(p)


def project(grad: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """G_W <- G_W P^T (G_W is C x D)."""
    return grad @ p.T


# -- prediction (pure functions) ---------------------------------------------------------
def entropy_weights(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """Per-sample lambda (M x B): e_m = -sum_c p log p, lambda = softmax_m(-e)."""
    log_p = torch.stack([u.float().log_softmax(dim=1) for u in logits])  # M x B x C
    entropy = -(log_p.exp() * log_p).sum(dim=2)  # M x B
    return (-entropy).softmax(dim=0)


def batch_entropy_weights(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The code's `calculate_entropy`: softmax over the batch (dim 0), -sum p log p over all
    entries; one lambda per modality (M x 1), softmax_m(-e)."""
    entropy = torch.stack(
        [-(u.float().log_softmax(dim=0).exp() * u.float().log_softmax(dim=0)).sum() for u in logits]
    )
    return (-entropy).softmax(dim=0).reshape(-1, 1)


def fuse(logits: Sequence[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """sum_m lambda_m u^m; weights M x B (per sample) or M x 1 / M (per modality)."""
    stacked = torch.stack([u.float() for u in logits])  # M x B x C
    w = weights.reshape(weights.shape[0], -1, 1) if weights.dim() > 1 else weights.reshape(-1, 1, 1)
    return (w * stacked).sum(dim=0)


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine between two flattened tensors, 0 when either is zero."""
    return (a * b).sum() / (a.norm() * b.norm() + _TINY)


def _check_weights(weights: Any, modalities: Sequence[str]) -> tuple[float, ...]:
    if weights is None:
        n = len(modalities)
        return OFFICIAL_WEIGHTS.get(n, tuple([1.0 / n] * n))
    ok = isinstance(weights, list | tuple) and len(weights) == len(modalities)
    if not ok or not all(isinstance(w, int | float) and not isinstance(w, bool) for w in weights):
        raise MethodConfigError(
            f"mla: weights must be a list of {len(modalities)} numbers (one per modality, in "
            f"the order {', '.join(modalities)}), got {weights!r}"
        )
    return tuple(float(w) for w in weights)


@register_method("mla")
class MLA(Method):
    """MLA (Zhang et al., CVPR 2024): alternating unimodal sub-steps through one shared head."""

    DIAGNOSTICS = (
        "train/loss_{modality}",
        "train/lambda_{modality}",
        "train/cos_before_{modality}",
        "train/cos_after_{modality}",
        "train/p_trace",
        "train/p_rank",
    )

    defaults: dict[str, Any] = {
        "gm": "owm",
        "fusion": "entropy",
        "weights": None,
        "entropy": "sample",
        "order": None,
        "stale_zero_grads": False,
        "variant": "paper",
    }
    variant_defaults = {
        "official": {"gm": "none", "entropy": "official_batch", "stale_zero_grads": True}
    }
    paper_settings: dict[str, Any] = {
        "optimizer": "sgd",
        "lr": 1e-3,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "scheduler": "step",
        "lr_step": 70,
        "lr_gamma": 0.1,
        "batch_size": 64,
        "epochs": 100,
        "frames": 3,
    }
    min_modalities = 2

    def __init__(self, encoders, num_classes, hp, ctx) -> None:
        super().__init__(encoders, num_classes, hp, ctx)
        hp = self.hp
        for key, allowed in (
            ("gm", GMS),
            ("fusion", FUSIONS),
            ("entropy", ENTROPIES),
            ("variant", VARIANTS),
        ):
            if hp[key] not in allowed:
                raise MethodConfigError(
                    f"mla: {key} must be one of {', '.join(allowed)}, got {hp[key]!r}"
                )
        if not isinstance(hp["stale_zero_grads"], bool):
            raise MethodConfigError(
                f"mla: stale_zero_grads must be true or false, got {hp['stale_zero_grads']!r}"
            )
        order = hp["order"] if hp["order"] is not None else list(self.modalities)
        if not isinstance(order, list | tuple) or sorted(order) != sorted(self.modalities):
            raise MethodConfigError(
                f"mla: order must list each modality once ({', '.join(self.modalities)}), "
                f"got {hp['order']!r}"
            )
        self.order = list(order)
        self.fixed_weights = _check_weights(hp["weights"], self.modalities)
        dims = {m: self.encoders[m].out_dim for m in self.modalities}
        if len(set(dims.values())) != 1:
            widths = ", ".join(f"{m}={d}" for m, d in dims.items())
            raise MethodConfigError(
                f"mla: the shared head needs equal feature widths, got {widths}; "
                "use encoders with the same out_dim"
            )
        d = next(iter(dims.values()))
        device = ctx.device
        self.head = nn.Linear(d, num_classes, device=device)  # H, shared by every modality
        init_weights(self.head)
        # P (step 2): float32, no gradient, shared by the modalities, never reset.
        self.register_buffer("proj", torch.eye(d, device=device))
        # The last raw weight gradient of H per modality (cosine diagnostic; checkpointed so
        # that a resumed run logs the same cosines).
        self.register_buffer(
            "last_grad", torch.zeros(len(self.modalities), num_classes, d, device=device)
        )
        self.substeps = 0  # sub-steps so far in the run (extra_state): step 2 skips the first
        # One optimiser per encoder and one for H, all from the same factory settings: the
        # same arithmetic as the code's single SGD (its state is per parameter), while an
        # encoder's gradient can stay in .grad after its sub-step without being re-applied.
        for m in self.modalities:
            self.add_optimizer(m, self.encoders[m].parameters())
        self.add_optimizer("head", self.head.parameters())

    # -- prediction ------------------------------------------------------------------------
    def predict(self, batch: Batch) -> dict[str, torch.Tensor]:
        uni = {m: self.head(self.encoders[m](batch[m])).float() for m in self.modalities}
        logits = list(uni.values())
        if self.hp["fusion"] == "fixed":
            w = torch.tensor(self.fixed_weights, device=logits[0].device)
        elif self.hp["entropy"] == "official_batch":
            w = batch_entropy_weights(logits)
        else:
            w = entropy_weights(logits)
        return {"fused": fuse(logits, w), **uni}

    # -- training --------------------------------------------------------------------------
    def _no_autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.ctx.device.type, enabled=False)

    def update(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        y = batch["label"]
        alpha = owm_alpha(step.batch, max(self.ctx.steps_per_epoch, 1))
        stale = self.hp["stale_zero_grads"]
        head_opt = self.optimizers["head"]
        logs: dict[str, torch.Tensor] = {}
        logits: dict[str, torch.Tensor] = {}
        done: list[str] = []  # modalities trained earlier in this batch
        for m in self.order:
            opt = self.optimizers[m]
            opt.zero_grad(set_to_none=True)
            head_opt.zero_grad(set_to_none=not stale)
            # (1) L_m through phi^m and H only.
            z = self.encoders[m](batch[m])
            u = self.head(z)
            loss = cross_entropy(u, y)
            loss.backward()
            logits[m] = u.detach().float()
            logs[f"loss_{m}"] = loss.detach()
            with torch.no_grad(), self._no_autocast():
                grad = self.head.weight.grad
                raw = grad.clone()
                # (2) head gradient modification, from the second sub-step of the run on.
                if self.hp["gm"] != "none" and self.substeps > 0:
                    r = z.detach().float().mean(dim=0)
                    update_p = owm_update if self.hp["gm"] == "owm" else code_formula_update
                    self.proj.copy_(update_p(self.proj, r, alpha))
                    grad.copy_(project(grad, self.proj))
                k = self.modalities.index(done[-1] if done else self.order[-1])
                logs[f"cos_before_{m}"] = cosine(raw, self.last_grad[k])
                logs[f"cos_after_{m}"] = cosine(grad, self.last_grad[k])
                self.last_grad[self.modalities.index(m)].copy_(raw)
            # (3) step of phi^m and H.
            opt.step()
            head_opt.step()
            if stale:  # torch 1.8.1: earlier encoders keep zero grads and step again
                for k_m in done:
                    self.optimizers[k_m].zero_grad(set_to_none=False)
                    self.optimizers[k_m].step()
            self.substeps += 1
            done.append(m)
        with torch.no_grad():
            lam = entropy_weights([logits[m] for m in self.modalities]).mean(dim=1)
        for i, m in enumerate(self.modalities):
            logs[f"lambda_{m}"] = lam[i]
        logs["loss"] = torch.stack([logs[f"loss_{m}"] for m in self.order]).mean()
        return logs

    # -- epoch hooks -----------------------------------------------------------------------
    def on_epoch_end(self, epoch, data) -> dict[str, float]:
        with torch.no_grad():
            p = self.proj.float()
            values = torch.stack(
                [p.diagonal().sum(), (torch.linalg.svdvals(p) > 1e-3).sum().float()]
            ).tolist()  # one host read
        diagnostics = {"p_trace": values[0], "p_rank": values[1]}
        diagnostics.update(super().on_epoch_end(epoch, data))
        return diagnostics

    # -- checkpoints -----------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"substeps": self.substeps}

    def load_extra_state(self, state) -> None:
        self.substeps = int(state.get("substeps", 0))
