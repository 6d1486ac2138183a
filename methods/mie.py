"""MIE / IGM: alternating unimodal training with SAM and flat gradient modification.

Paper: Q.-Y. Jiang, Z. Chi, Y. Yang, "Multimodal Classification via Modal-Aware Interactive
Enhancement", arXiv 2407.04587, 2024; published as "Interactive Multimodal Learning via Flat
Gradient Modification" (IGM), IJCAI 2025. Official code: github.com/njustkmg/IJCAI25-IGM.
The rule implemented is docs/methods.md, section "MIE"; its steps 1-6 are numbered in the code
below as in docs/methods.md, and the backward-phase modification is the paper's Eq. 9 (IGM).

Model: encoder phi^m and head h^m per modality; no fused loss. Prediction: p^m =
softmax(h^m(phi^m(x^m))); fused logits = log(mean_m p^m) (the official code's late fusion).

Training, per batch, for each scheduled modality j in order (k = the modality trained just
before j, i.e. the previous modality in the alternation; T^(k) = I until k has trained):

1. L^j = CE(h^j(phi^j(x^j)), y).
2. SAM forward phase: g = grad L^j(theta^j); eps = rho g / ||g||_2 (norm over all of
   theta^j = phi^j and h^j); g_sam = grad L^j(theta^j + eps); theta^j restored bit-exactly
   (the original values are copied back). The perturbed pass runs in train mode (batch
   statistics) but leaves the BatchNorm running statistics and num_batches_tracked as the
   clean pass left them (the encoder's buffers are saved and copied back).
3. Flat gradient modification, backward phase (Eq. 9): G_W <- G_W T_l^(k) for each Linear
   layer l of h^j (W is out x in, T is in x in). Biases and encoder gradients unchanged.
4. Step of modality j's own optimiser (one per modality: momentum never mixes).
5. Ybar_l^(j) += xbar xbar^T, xbar = batch mean of the input of layer l in the forward pass
   of step 1 (cumulative from the start of training; buffers, so checkpoints keep them).
6. T_l^(j) = V diag(sigma) V^T, Ybar = V Lambda V^T, sigma_i = exp(-tau (lambda_i -
   lambda_min) / (lambda_max - lambda_min)) (`flat_transform`); T = I when lambda_max -
   lambda_min ~ 0. Refreshed every `t_refresh` steps and at every epoch end.

Options (`--set key=value`), defaults in brackets:

- ``rho`` [0.05]: SAM radius. The paper's (and official code's) value is 1e-10 for the
  audio-visual data: a step of 1e-10 along a unit direction is below float32 resolution for
  every weight of ordinary size (|w| > ~1e-3), so the perturbed pass equals the clean one and
  SAM does nothing. The default is therefore the standard SAM radius (Foret et al., ICLR
  2021); ``rho=1e-10`` reproduces the paper. ``rho=0`` switches SAM off (one pass).
- ``tau`` [0.4]: temperature of the flat transform (step 6; the official `temperature1`).
- ``head`` ["mlp"]: "mlp" = Linear(D,256) -> ReLU -> Linear(256,64) -> Linear(64,C), the
  official head; "linear" = one Linear(D,C).
- ``t_refresh`` [50]: steps between refreshes of T (each refresh runs `torch.linalg.eigh`,
  which synchronises with the host on CUDA: the only sync of `update`, amortised over
  `t_refresh` steps).
- ``schedule`` ["batch"]: "batch" = every batch trains each modality in turn (the paper);
  or a list of stages ``[[modality, epochs], ...]`` repeated ``cycles`` times, one modality
  per epoch (the official code, e.g. ``[["audio", 25], ["visual", 50]]`` with cycles 6 for
  CREMA-D). The stages must cover the run's epochs.
- ``cycles`` [1]: repetitions of the stage list.
- ``variant`` ["paper"]: "paper" (steps 1-6 above) or "official" (below).
- ``flat_ratio`` [0.3]: beta of the official variant.
- ``mixup_alpha`` [1.0]: Beta(alpha, alpha) of the official variant's mixup (0 = off).

`variant="official"` follows train_*.py of the official code:
- mixup on the trained modality's input: x~ = lam x + (1 - lam) x[perm], lam ~ Beta(alpha,
  alpha) (drawn with numpy on the host, no device sync); L_mix = lam CE(o, y) + (1 - lam)
  CE(o, y[perm]) with o = h^j(z~), z~ = phi^j(x~);
- per-tensor perturbation eps_t = rho g_t / ||g_t|| with g = grad L_mix, added to every
  tensor of theta^j and never removed;
- loss (1 - beta) L_mix + beta CE(h^j_{theta+eps}(z~), y): the perturbed head is applied to
  the same features z~ (the encoder is not re-run, as in the official code);
- T applied to every Linear weight of h^j, matched by weight shape against every Linear
  layer of h^k (several matches apply in turn, as in the official loop);
- with ``protocol=paper``, batch 12 (configs/crema.json and kinetics_sound.json), on top of
  the paper protocol's optimiser.
What this reproduces, and at which rho: the official code adds eps to the weights'
``.data`` after the forward pass and then back-propagates the combined loss through the
graph of that pass, so wherever a layer's backward reads its weight (the gradient passed
to its input) it reads theta + eps, while the activations are those at theta. Here the
gradient of L_mix is taken before the perturbation and the encoder's backward reads theta.
The two differ by O(rho): at the official rho = 1e-10 they agree to float32 rounding (every
weight of ordinary size is unchanged by eps), at rho = 0.05 the parameters differ by about
1.4e-3 per step. So ``variant=official`` reproduces the official step only at rho = 1e-10;
``rho`` keeps one default for both variants, and a warning says so when the official variant
runs with another rho (a never-removed perturbation also drifts the weights at large rho).

Where this implementation differs from the official code (in both variants): the official
code computes Ybar once per stage, from an evaluation-mode pass over the whole training set
after the stage, re-creates the optimiser and schedule at every stage, and reloads the
checkpoint with the best *test* accuracy before each stage; here Ybar is the running sum of
step 5 (in the official variant it sees the mixed inputs), the optimisers and the run's
schedule persist across stages, and nothing is selected on the test split.

Layer pairing and feature widths: layer l of h^j is modified by T_l^(k), built from the
inputs of layer l of h^k, so the two must have the same input width. The MLP layers after
the first always match; the first Linear reads the encoder's D, so when two encoders differ
in D the first layer (and, for head="linear", the whole head) is left unmodified for that
pair, as the official code's match-by-shape does.

Logged per step (engine: per-epoch means): ``loss`` (mean over the modalities trained in
the batch), ``loss_<m>`` (the training loss of m: L^m, or the official combined loss) and
``loss_perturbed_<m>`` (the loss at theta + eps). Per epoch (``on_epoch_end``):
``cos_before``/``cos_after`` (and ``_<m>``): cosine similarity between the head-weight
gradient of j (g_sam, before / after step 3) and the last raw head-weight gradient of k,
on the concatenation of the Linear weight gradients of the layers whose weight shapes match
(biases excluded), averaged over the sub-steps where k already has a gradient (omitted when
none has or no shape matches); ``sigma_min_<m>_l<i>``, ``sigma_mean_<m>_l<i>``: spectrum of
T_l^(m) after the epoch-end refresh.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from methods.parts.base import Batch, Method, StepInfo, cross_entropy
from methods.parts.encoders import init_weights
from methods.parts.registry import MethodConfigError, register_method

HIDDEN = (256, 64)  # widths of the official MLP head
_TINY = 1e-12  # added to gradient norms (SAM) and to cosine denominators


# -- step 6: the flat transform (a pure function) ----------------------------------------
def flat_spectrum(ybar: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(T, sigma) of step 6: Ybar = V diag(lambda) V^T, sigma_i = exp(-tau (lambda_i -
    lambda_min) / (lambda_max - lambda_min)), T = V diag(sigma) V^T; T = I (sigma = 1) when
    lambda_max - lambda_min <= 1e-5 max |lambda| (float32 eigh noise of a flat spectrum).
    float32, no host-side branch."""
    y = ybar.float()
    y = 0.5 * (y + y.transpose(0, 1))
    lam, vec = torch.linalg.eigh(y)
    lo, hi = lam.amin(), lam.amax()
    span = hi - lo
    flat = span <= 1e-5 * lam.abs().amax().clamp_min(1e-30)
    sigma = torch.exp(-tau * (lam - lo) / torch.where(flat, torch.ones_like(span), span))
    sigma = torch.where(flat, torch.ones_like(sigma), sigma)
    eye = torch.eye(y.shape[0], dtype=y.dtype, device=y.device)
    t = torch.where(flat, eye, (vec * sigma) @ vec.transpose(0, 1))
    return t, sigma


def flat_transform(ybar: torch.Tensor, tau: float) -> torch.Tensor:
    """The in x in matrix T of step 6 (see `flat_spectrum`)."""
    return flat_spectrum(ybar, tau)[0]


# -- model parts --------------------------------------------------------------------------
class UnimodalHead(nn.Module):
    """h^m: "mlp" = Linear(D,256) -> ReLU -> Linear(256,64) -> Linear(64,C) | "linear"."""

    def __init__(self, in_dim: int, num_classes: int, kind: str) -> None:
        super().__init__()
        widths = [in_dim, *HIDDEN, num_classes] if kind == "mlp" else [in_dim, num_classes]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True)
        )
        self.relu_after = {0} if kind == "mlp" else set()  # the official head: one ReLU
        init_weights(self)

    def forward(self, z: torch.Tensor, inputs: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Logits; when `inputs` is a list, each Linear layer's input is appended to it."""
        x = z
        for i, layer in enumerate(self.layers):
            if inputs is not None:
                inputs.append(x)
            x = layer(x)
            if i in self.relu_after:
                x = torch.relu(x)
        return x


class FlatState(nn.Module):
    """Per modality: Ybar_l, T_l, sigma_l (persistent), last raw head-weight gradients and
    epoch sums of the cosine diagnostics (not persistent)."""

    def __init__(self, head: UnimodalHead, device: torch.device) -> None:
        super().__init__()
        self.num_layers = len(head.layers)
        for i, layer in enumerate(head.layers):
            d = layer.in_features
            self.register_buffer(f"ybar{i}", torch.zeros(d, d, device=device))
            self.register_buffer(f"t{i}", torch.eye(d, device=device))
            self.register_buffer(f"sigma{i}", torch.ones(d, device=device))
            self.register_buffer(
                f"grad{i}", torch.zeros_like(layer.weight, device=device), persistent=False
            )
        # [sum cos before, sum cos after, number of sub-steps with a gradient of k]
        self.register_buffer("cos_stats", torch.zeros(3, device=device), persistent=False)

    def get(self, name: str, i: int) -> torch.Tensor:
        return getattr(self, f"{name}{i}")


def _parse_schedule(
    schedule: Any, cycles: Any, modalities: Sequence[str], epochs: int
) -> list[str] | None:
    """None for "batch"; else the modality trained in each epoch (stages x cycles)."""
    if schedule == "batch":
        return None
    example = f'[["{modalities[0]}", 25], ["{modalities[-1]}", 50]]'
    if not isinstance(schedule, list) or not schedule:
        raise MethodConfigError(
            f'mie: schedule must be "batch" or a list of [modality, epochs] stages such as '
            f"{example}, got {schedule!r}"
        )
    if not isinstance(cycles, int) or isinstance(cycles, bool) or cycles < 1:
        raise MethodConfigError(f"mie: cycles must be a positive integer, got {cycles!r}")
    per_epoch: list[str] = []
    for stage in schedule:
        ok = (
            isinstance(stage, list | tuple)
            and len(stage) == 2
            and isinstance(stage[1], int)
            and not isinstance(stage[1], bool)
            and stage[1] >= 1
        )
        if not ok:
            raise MethodConfigError(
                f"mie: each stage is [modality, epochs] with epochs >= 1 (e.g. {example}), "
                f"got {stage!r}"
            )
        if stage[0] not in modalities:
            raise MethodConfigError(
                f"mie: schedule names modality {stage[0]!r}; the dataset's modalities are "
                f"{', '.join(modalities)}"
            )
        per_epoch += [stage[0]] * stage[1]
    per_epoch *= cycles
    if len(per_epoch) < epochs:
        raise MethodConfigError(
            f"mie: the schedule covers {len(per_epoch)} epochs but the run has {epochs}; "
            "raise cycles or lengthen the stages (or shorten the run)"
        )
    return per_epoch


def _previous_modality(schedule: Any, modalities: Sequence[str]) -> dict[str, str | None]:
    """k for each j: the modality trained just before j in the alternation (cyclically)."""
    if schedule == "batch":
        return {m: modalities[i - 1] for i, m in enumerate(modalities)}
    order = [stage[0] for stage in schedule]
    prev: dict[str, str | None] = {}
    for i, m in enumerate(order):
        if m in prev:
            continue
        earlier = [order[(i - s) % len(order)] for s in range(1, len(order) + 1)]
        prev[m] = next((o for o in earlier if o != m), None)
    return prev


@register_method("mie")
class MIE(Method):
    """MIE / IGM (Jiang et al., IJCAI 2025): alternating unimodal SAM + flat grad modification."""

    DIAGNOSTICS = (
        "train/cos_before",
        "train/cos_after",
        "train/sigma_min_{modality}_l0",
        "train/sigma_mean_{modality}_l1",
    )

    defaults: dict[str, Any] = {
        "rho": 0.05,
        "tau": 0.4,
        "head": "mlp",
        "t_refresh": 50,
        "schedule": "batch",
        "cycles": 1,
        "variant": "paper",
        "flat_ratio": 0.3,
        "mixup_alpha": 1.0,
    }
    paper_settings: dict[str, Any] = {
        "optimizer": "sgd",
        "lr": 1e-2,
        "momentum": 0.9,
        "weight_decay": 1e-4,
    }
    variant_paper_settings = {"official": {"batch_size": 12}}  # configs/crema.json
    min_modalities = 2

    def __init__(self, encoders, num_classes, hp, ctx) -> None:
        super().__init__(encoders, num_classes, hp, ctx)
        hp = self.hp
        if hp["head"] not in ("mlp", "linear"):
            raise MethodConfigError(f'mie: head must be "mlp" or "linear", got {hp["head"]!r}')
        if hp["variant"] not in ("paper", "official"):
            raise MethodConfigError(
                f'mie: variant must be "paper" or "official", got {hp["variant"]!r}'
            )
        t_refresh = hp["t_refresh"]
        if not isinstance(t_refresh, int) or isinstance(t_refresh, bool) or t_refresh < 1:
            raise MethodConfigError(f"mie: t_refresh must be a positive integer, got {t_refresh!r}")
        if hp["rho"] < 0 or hp["tau"] < 0 or hp["mixup_alpha"] < 0:
            raise MethodConfigError("mie: rho, tau and mixup_alpha must be >= 0")
        if not 0 <= hp["flat_ratio"] <= 1:
            raise MethodConfigError(f"mie: flat_ratio must be in [0, 1], got {hp['flat_ratio']}")
        if hp["variant"] == "official" and hp["rho"] != 1e-10:
            warnings.warn(
                f"mie: variant=official with rho={hp['rho']}: the official code uses rho=1e-10 "
                "and never removes the perturbation; set rho=1e-10 to reproduce it",
                stacklevel=2,
            )
        self.epoch_modality = _parse_schedule(
            hp["schedule"], hp["cycles"], self.modalities, ctx.epochs
        )
        self.previous = _previous_modality(hp["schedule"], self.modalities)

        device = ctx.device
        self.heads = nn.ModuleDict(
            {
                m: UnimodalHead(self.encoders[m].out_dim, num_classes, hp["head"]).to(device)
                for m in self.modalities
            }
        )
        self.flat = nn.ModuleDict({m: FlatState(self.heads[m], device) for m in self.modalities})
        self.theta = {
            m: [p for p in (*self.encoders[m].parameters(), *self.heads[m].parameters())]
            for m in self.modalities
        }
        for m in self.modalities:  # one optimiser per modality (step 4)
            self.add_optimizer(m, self.theta[m])

        # Static layer pairings (Python lists, fixed at construction: no runtime checks).
        self.pairs: dict[str, list[tuple[int, int]]] = {}  # (layer of h^j, layer of h^k)
        self.diag_layers: dict[str, list[int]] = {}  # layers compared by the cosine
        for j in self.modalities:
            k = self.previous.get(j)
            if k is None:
                self.pairs[j], self.diag_layers[j] = [], []
                continue
            wj = [tuple(layer.weight.shape) for layer in self.heads[j].layers]
            wk = [tuple(layer.weight.shape) for layer in self.heads[k].layers]
            if hp["variant"] == "official":  # every Linear weight, matched by shape
                self.pairs[j] = [
                    (a, b) for a in range(len(wj)) for b in range(len(wk)) if wj[a] == wk[b]
                ]
            else:  # layer l with layer l, where the input widths agree
                self.pairs[j] = [
                    (a, a) for a in range(min(len(wj), len(wk))) if wj[a][1] == wk[a][1]
                ]
            self.diag_layers[j] = [a for a in range(min(len(wj), len(wk))) if wj[a] == wk[a]]
        self._inputs: list[torch.Tensor] = []  # head layer inputs of the last step-1 forward
        self._saved: dict[str, list[torch.Tensor]] = {}  # theta^j kept during the SAM pass

    # -- prediction ------------------------------------------------------------------------
    def predict(self, batch: Batch) -> dict[str, torch.Tensor]:
        uni = {m: self.heads[m](self.encoders[m](batch[m])).float() for m in self.modalities}
        log_p = torch.stack([u.log_softmax(dim=1) for u in uni.values()])
        fused = torch.logsumexp(log_p, dim=0) - math.log(len(uni))  # log mean_m p^m
        return {"fused": fused, **uni}

    # -- training --------------------------------------------------------------------------
    def scheduled(self, epoch: int) -> list[str]:
        """The modalities trained in each batch of `epoch`, in order."""
        if self.epoch_modality is None:
            return list(self.modalities)
        return [self.epoch_modality[epoch]]

    def update(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        logs: dict[str, torch.Tensor] = {}
        losses = []
        for j in self.scheduled(step.epoch):
            if self.hp["variant"] == "official":
                loss, perturbed = self._gradients_official(j, batch)
            else:
                loss, perturbed = self._gradients_paper(j, batch)
            with self._no_autocast():
                self._modify_gradients(j)  # step 3 (Eq. 9)
                self.optimizers[j].step()  # step 4
                self._accumulate(j)  # step 5
                if (step.step + 1) % self.hp["t_refresh"] == 0:
                    self.refresh(j)  # step 6 (eigh: syncs on CUDA, every t_refresh steps)
            logs[f"loss_{j}"] = loss.detach()
            logs[f"loss_perturbed_{j}"] = perturbed.detach()
            losses.append(loss.detach())
        logs["loss"] = torch.stack(losses).mean()
        return logs

    def _no_autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.ctx.device.type, enabled=False)

    def _grad(self, loss: torch.Tensor, params: list[nn.Parameter], **kw) -> list[torch.Tensor]:
        grads = torch.autograd.grad(loss, params, allow_unused=True, **kw)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]

    def _gradients_paper(self, j: str, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Steps 1-2; leaves g_sam in .grad of theta^j."""
        params, y = self.theta[j], batch["label"]
        # (1) L^j at theta^j; the head's layer inputs are kept for step 5.
        self._inputs = []
        loss = cross_entropy(self.heads[j](self.encoders[j](batch[j]), self._inputs), y)
        rho = float(self.hp["rho"])
        if rho == 0:  # SAM off: g_sam = g, one pass
            grads = self._grad(loss, params)
            perturbed = loss
        else:
            # (2) SAM: eps = rho g / ||g||_2 over all of theta^j.
            eps = self._grad(loss, params)  # g, turned into eps in place
            with torch.no_grad(), self._no_autocast():
                norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(eps)))
                torch._foreach_mul_(eps, rho / (norm + _TINY))
                # theta^j + eps in place: parameters keep their storage and layout, which
                # compiled encoders assert and CUDA graphs record as static addresses.
                original = self._saved_parameters(j)
                torch._foreach_copy_(original, params)
                torch._foreach_add_(params, eps)
            encoder = self.encoders[j]
            saved = [b.detach().clone() for b in encoder.buffers()]  # BN running statistics
            perturbed = cross_entropy(self.heads[j](encoder(batch[j])), y)
            grads = self._grad(perturbed, params)
            with torch.no_grad():  # restore theta^j and the statistics bit-exactly
                torch._foreach_copy_(params, original)
                for b, s in zip(encoder.buffers(), saved, strict=True):
                    b.copy_(s)
        for p, g_sam in zip(params, grads, strict=True):
            p.grad = g_sam
        return loss, perturbed

    def _saved_parameters(self, j: str) -> list[torch.Tensor]:
        """Buffers that hold theta^j during the SAM pass, allocated once per modality."""
        if j not in self._saved:
            self._saved[j] = [torch.empty_like(p) for p in self.theta[j]]
        return self._saved[j]

    def _gradients_official(self, j: str, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The official code's loss: mixup + per-tensor, never-removed perturbation."""
        params, x, y = self.theta[j], batch[j], batch["label"]
        alpha = float(self.hp["mixup_alpha"])
        lam = float(np.random.beta(alpha, alpha)) if alpha > 0 else 1.0  # host RNG, no sync
        perm = torch.randperm(x.shape[0], device=x.device)
        x_mix = lam * x + (1 - lam) * x[perm]
        self._inputs = []
        z = self.encoders[j](x_mix)
        logits = self.heads[j](z, self._inputs)
        loss_mix = lam * cross_entropy(logits, y) + (1 - lam) * cross_entropy(logits, y[perm])
        g = self._grad(loss_mix, params, retain_graph=True)
        n_enc = len(list(self.encoders[j].parameters()))
        rho = float(self.hp["rho"])
        with torch.no_grad(), self._no_autocast():
            norms = torch._foreach_add(torch._foreach_norm(g), _TINY)
            eps = torch._foreach_mul(torch._foreach_div(g, norms), rho)
            torch._foreach_add_(params[n_enc:], eps[n_enc:])  # head: theta + eps
        flat = cross_entropy(self.heads[j](z), y)  # perturbed head, same features
        g_flat = self._grad(flat, params)
        with torch.no_grad(), self._no_autocast():
            torch._foreach_add_(params[:n_enc], eps[:n_enc])  # encoder: never removed either
        beta = float(self.hp["flat_ratio"])
        for p, a, b in zip(params, g, g_flat, strict=True):
            p.grad = (1 - beta) * a + beta * b
        return (1 - beta) * loss_mix + beta * flat, flat

    def _modify_gradients(self, j: str) -> None:
        """Step 3 (Eq. 9): G_W <- G_W T_l^(k) on the head's Linear weights; cosine stats."""
        k = self.previous.get(j)
        weights = [layer.weight for layer in self.heads[j].layers]
        raw = [w.grad.detach().clone() for w in weights]
        for a, b in self.pairs[j]:
            weights[a].grad = weights[a].grad @ self.flat[k].get("t", b)
        state = self.flat[j]
        if k is not None and self.diag_layers[j]:
            other = self.flat[k]
            layers = self.diag_layers[j]
            last = [other.get("grad", a) for a in layers]
            nk = sum(g.square().sum() for g in last)
            cos = []
            for grads in ([raw[a] for a in layers], [weights[a].grad for a in layers]):
                dot = sum((g * h).sum() for g, h in zip(grads, last, strict=True))
                nj = sum(g.square().sum() for g in grads)
                cos.append(dot / (nj.sqrt() * nk.sqrt() + _TINY))
            valid = (nk > 0).float()
            state.cos_stats.add_(torch.stack([cos[0] * valid, cos[1] * valid, valid]))
        for a, g in enumerate(raw):
            state.get("grad", a).copy_(g)

    @torch.no_grad()
    def _accumulate(self, j: str) -> None:
        """Step 5: Ybar_l^(j) += xbar xbar^T, xbar = batch mean of layer l's input."""
        state = self.flat[j]
        for i, x in enumerate(self._inputs):
            xbar = x.detach().float().mean(dim=0)
            state.get("ybar", i).addr_(xbar, xbar)
        self._inputs = []

    @torch.no_grad()
    def refresh(self, j: str) -> None:
        """Step 6: T_l^(j) (and its sigma) from Ybar_l^(j)."""
        state = self.flat[j]
        for i in range(state.num_layers):
            t, sigma = flat_spectrum(state.get("ybar", i), float(self.hp["tau"]))
            state.get("t", i).copy_(t)
            state.get("sigma", i).copy_(sigma)

    # -- epoch hooks -----------------------------------------------------------------------
    def on_epoch_start(self, epoch, data) -> None:
        for m in self.modalities:
            self.flat[m].cos_stats.zero_()

    def on_epoch_end(self, epoch, data) -> dict[str, float]:
        names: list[str] = []
        values: list[torch.Tensor] = []
        for m in self.modalities:
            if m in self.scheduled(epoch):
                self.refresh(m)  # step 6 at every epoch end
            state = self.flat[m]
            names += [f"_cos_{m}"]
            values.append(state.cos_stats)
            for i in range(state.num_layers):
                sigma = state.get("sigma", i)
                names += [f"sigma_min_{m}_l{i}", f"sigma_mean_{m}_l{i}"]
                values += [sigma.amin().reshape(1), sigma.mean().reshape(1)]
        flat = torch.cat([v.reshape(-1).float() for v in values]).tolist()  # one host read
        diagnostics: dict[str, float] = {}
        totals = [0.0, 0.0, 0.0]
        pos = 0
        for name, value in zip(names, values, strict=True):
            n = value.numel()
            part = flat[pos : pos + n]
            pos += n
            if name.startswith("_cos_"):
                m = name[len("_cos_") :]
                if part[2] > 0:
                    diagnostics[f"cos_before_{m}"] = part[0] / part[2]
                    diagnostics[f"cos_after_{m}"] = part[1] / part[2]
                totals = [t + p for t, p in zip(totals, part, strict=True)]
            else:
                diagnostics[name] = part[0]
        if totals[2] > 0:
            diagnostics["cos_before"] = totals[0] / totals[2]
            diagnostics["cos_after"] = totals[1] / totals[2]
        with warnings.catch_warnings():  # a stage's idle optimiser has not stepped: expected
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            diagnostics.update(super().on_epoch_end(epoch, data))
        return diagnostics
