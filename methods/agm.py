"""AGM: Adaptive Gradient Modulation (docs/methods.md, "AGM").

Hong Li, Xingyu Li, Pengbo Hu, Yinuo Lei, Chunxiao Li, Yi Zhou, "Boosting Multi-modal Model
Performance with Adaptive Gradient Modulation", ICCV 2023. Official code:
github.com/lihong2303/AGM_ICCV2023.

Only the official code and the authors' replies could be read, so the steps below are
numbered as docs/methods.md gives them (S1-S6), not by the paper's equation numbers. For two
modalities a, v (``self.modalities`` in order) and one batch:

  S1  Mono-modal responses by zero-padding (Shapley values of a two-player game):
        f(a,v): the fused logits (train mode);
        f(a,0), f(0,v): the logits with the other modality's input replaced by zeros,
        the encoders in eval mode (BatchNorm running statistics), gradients flowing;
        phi^a = 1/2 [f(a,v) - f(0,v) + f(a,0)],   phi^v = 1/2 [f(a,v) - f(a,0) + f(0,v)].
  S2  Scores (no gradient): CE^m = mean_i -log max(softmax(phi^m_i)[y_i], 1e-8).
  S3  Ratios: r^a = exp(CE^v - CE^a), r^v = exp(CE^a - CE^v).
  S4  Reference: running means over all steps so far,
        CE-bar^m_t = CE-bar^m_{t-1} (t-1)/t + CE^m_t / t  (t counts steps from 1);
      r-bar^m is S3 applied to CE-bar^m_{t-1}, the values before this step's update.
  S5  Coefficient: kappa^m = exp(alpha * min(r-bar^m - r^m, clip)), applied as a backward
      hook on phi^m: the gradient flowing into each branch is multiplied by kappa^m.
      Loss: CE(phi^a + phi^v, y), numerically CE(f(a,v), y).
  S6  After backward: if any weight gradient of the fusion head has an element outside
      [-1, 1], clip the total gradient norm of all parameters to ``grad_clip_norm``.

Options (``--set key=value``), with defaults:
  alpha          1.5   modulation strength (CREMA-D value from the authors' reply; preset
                       ``cremad``: 1.5).
  clip           10.0  upper bound of r-bar - r inside the exponential (the official CREMA-D
                       code; ``--set clip=Infinity``: no bound, as the official AVE and
                       AV-MNIST code).
  grad_clip_norm 1.0   S6's max norm (official CREMA-D code); a value <= 0 turns S6 off.
  muted_pass     "eval"  how f(a,0) and f(0,v) are computed:
      "eval": docs/methods.md's rule and the official code's: both muted passes run the encoders
              in eval mode (BatchNorm running statistics), gradients flowing, so the present
              modality is re-encoded in eval mode. Cost: ONE extra eval-mode forward per
              encoder and step, on the batch plus one all-zero sample (an eval-mode encoder
              maps every all-zero sample to the same features, so one zero sample broadcast
              to the batch gives the batched passes' values and gradients); no host sync.
      "fast": a speed option that is a different rule: the present modality's features are
              the main (train-mode) pass's, only the one all-zero sample is encoded in eval
              mode. Train-mode features (batch statistics) and eval-mode ones (running
              statistics) differ whenever BatchNorm's running statistics lag the batch, so the
              scores move. Measured (small encoders, random batches of 16, 12 AGM steps at lr
              1e-2, both rules from the same weights at each step): r^a moved by up to 0.28
              and the side of the imbalance (r^a above or below 1) flipped in 2 of 12 steps.
  variant        "paper"  "paper" (S1-S6 above) or "official" (below).
  modulation_start 0   first epoch (0-based) in which kappa is recomputed.
  modulation_end  -1   last epoch (0-based, inclusive) in which kappa is recomputed; -1 = no
                       end. Outside the window the hooks keep applying the LAST kappa (1
                       before the first window step), as the official code does; the running
                       reference CE-bar is updated at every step regardless. The paper variant
                       has no window (docs/methods.md gives none); the official variant's is epochs
                       0..19 (the official scripts' ``modulation_starts`` 0 and
                       ``modulation_ends`` 20 over 1-based epochs, RM:159, RM:227-232 below).

``variant="official"`` reproduces the official training step (run/CREMAD_main.py, "RM",
and model/CREMAD_net.py of the official code):
  - the window 0..19 above (``modulation_end`` 19);
  - S4 starts from CE-bar = 0 (RM:48, RM:612-613), so the first step's reference is r-bar = 1
    and its kappa is exp(alpha min(1 - r, clip)), not 1 (RM:145-152);
  - the per-dataset bounds of the official scripts, as presets of this variant: CREMA-D clip
    10 and S6 with max norm 1.0 (RM:151-152, RM:233-243); AVE no clip and no S6
    (run/AVE_main.py:133-134). The registered datasets without an official script (avdigits,
    ks, vggsound, synth) take the CREMA-D values, which are the defaults;
  - muted passes "eval" (``muted_pass="fast"`` is refused with this variant).

Paper protocol (``protocol=paper``): SGD, lr 1e-3, momentum 0.9, weight decay 1e-4.

Where the paper variant differs from the official code:
  - Step 0: the official code starts CE-bar at 0, so r-bar = 1 at the first step. Here the
    first step's reference is the first step's own scores (r-bar_0 = r_0, kappa = 1): no
    modulation before there is any history. From step 1 on both agree.
  - No modulation window (see ``modulation_end``).
Where both variants differ from it: the official code evaluates the unimodal accuracy on
phi^m; ``predict`` here returns the fusion head's own unimodal logits u^m (as every
joint-style method of the benchmark), so unimodal accuracies compare across methods.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from methods.joint import Joint
from methods.parts.base import Batch, StepInfo, cross_entropy
from methods.parts.registry import MethodConfigError, register_method

MUTED_PASSES = ("eval", "fast")
VARIANTS = ("paper", "official")
PROB_FLOOR = 1e-8  # S2: the floor of the true-class probability


# -- S1: Shapley mono-modal responses --------------------------------------------------------
def shapley_responses(
    f_av: torch.Tensor, f_a0: torch.Tensor, f_0v: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """phi^a = (f(a,v) - f(0,v) + f(a,0)) / 2, phi^v = (f(a,v) - f(a,0) + f(0,v)) / 2 (S1);
    phi^a + phi^v = f(a,v)."""
    phi_a = 0.5 * (f_av - f_0v + f_a0)
    phi_v = 0.5 * (f_av - f_a0 + f_0v)
    return phi_a, phi_v


# -- S2: scores ------------------------------------------------------------------------------
def mono_scores(phi: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """CE^m = mean_i -log max(softmax(phi_i)[y_i], 1e-8) (S2), float32, no gradient."""
    with torch.no_grad():
        p = torch.softmax(phi.float(), dim=1).gather(1, labels[:, None]).squeeze(1)
        return -p.clamp_min(PROB_FLOOR).log().mean()


# -- S3: ratios ------------------------------------------------------------------------------
def score_ratios(ce_a: torch.Tensor, ce_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """r^a = exp(CE^v - CE^a), r^v = exp(CE^a - CE^v) (S3)."""
    return torch.exp(ce_v - ce_a), torch.exp(ce_a - ce_v)


# -- S4: running reference -------------------------------------------------------------------
def running_scores(
    ce_bar: torch.Tensor, ce: torch.Tensor, t: torch.Tensor, start_from_zero: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """(reference for this step, running mean after it) given the mean `ce_bar` of the `t`
    steps so far and this step's scores `ce` (S4). The reference is `ce_bar`, the value
    before the update; at t = 0 it is `ce` itself (so r-bar = r and kappa = 1), or, with
    `start_from_zero` (the official code), `ce_bar` = 0 (so r-bar = 1)."""
    t = t.to(ce.dtype)
    reference = ce_bar.clone() if start_from_zero else torch.where(t > 0, ce_bar, ce)
    return reference, ce_bar * (t / (t + 1)) + ce / (t + 1)


# -- S5: modulation coefficients -------------------------------------------------------------
def modulation_coefficients(
    ce_a: torch.Tensor,
    ce_v: torch.Tensor,
    ce_bar_a: torch.Tensor,
    ce_bar_v: torch.Tensor,
    alpha: float,
    clip: float = 10.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """kappa^m = exp(alpha * min(r-bar^m - r^m, clip)) with r from (CE^a, CE^v) and r-bar
    from (CE-bar^a, CE-bar^v) (S3, S5)."""
    r_a, r_v = score_ratios(ce_a, ce_v)
    rbar_a, rbar_v = score_ratios(ce_bar_a, ce_bar_v)
    kappa_a = torch.exp(alpha * (rbar_a - r_a).clamp(max=clip))
    kappa_v = torch.exp(alpha * (rbar_v - r_v).clamp(max=clip))
    return kappa_a, kappa_v


def scale_gradient(x: torch.Tensor, kappa: torch.Tensor) -> torch.Tensor:
    """Register a hook on `x` that multiplies the gradient flowing into it by `kappa` (S5)."""
    x.register_hook(lambda g: g * kappa.to(g.dtype))
    return x


# -- S6: conditional norm clip ---------------------------------------------------------------
def conditional_clip_factor(
    watched: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], max_norm: float
) -> torch.Tensor:
    """min(1, max_norm / (||grads||_2 + 1e-6)) if any element of `watched` lies outside
    [-1, 1], else 1 (S6). A 0-d tensor: no host synchronisation."""
    outside = torch.stack([g.detach().abs().amax() for g in watched]).amax() > 1.0
    total = torch.linalg.vector_norm(torch.stack(torch._foreach_norm([g.detach() for g in grads])))
    factor = (max_norm / (total + 1e-6)).clamp(max=1.0)
    return torch.where(outside, factor, torch.ones_like(factor))


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Run `module` in eval mode, then restore each submodule's own train/eval flag."""
    flags = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in flags:
            m.training = training


@register_method("agm")
class AGM(Joint):
    """AGM (Li et al., ICCV 2023): Shapley mono-modal responses, adaptive gradient scaling."""

    DIAGNOSTICS = (
        "train/kappa_{modality}",
        "train/r_{modality}",
        "train/rbar_{modality}",
    )

    defaults: dict[str, Any] = {
        "alpha": 1.5,
        "clip": 10.0,
        "grad_clip_norm": 1.0,
        "muted_pass": "eval",
        "variant": "paper",
        "modulation_start": 0,
        "modulation_end": -1,
    }
    presets = {"cremad": {"alpha": 1.5}}
    variant_defaults = {"official": {"modulation_end": 19}}
    variant_presets = {
        "official": {
            "cremad": {"clip": 10.0, "grad_clip_norm": 1.0},
            "ave": {"clip": math.inf, "grad_clip_norm": 0.0},
        }
    }
    paper_settings = {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4}
    min_modalities = 2

    def __init__(self, encoders, num_classes, hp, ctx) -> None:
        if len(encoders) != 2:
            raise MethodConfigError(
                f"agm's Shapley responses are defined for exactly two modalities, the dataset "
                f"has {len(encoders)} ({', '.join(encoders)})"
            )
        super().__init__(encoders, num_classes, hp, ctx)
        hp = self.hp
        if hp["muted_pass"] not in MUTED_PASSES:
            raise MethodConfigError(
                f"agm: unknown muted_pass {hp['muted_pass']!r}; choose one of "
                f"{', '.join(MUTED_PASSES)}"
            )
        if hp["variant"] not in VARIANTS:
            raise MethodConfigError(
                f"agm: unknown variant {hp['variant']!r}; choose one of {', '.join(VARIANTS)}"
            )
        if hp["variant"] == "official" and hp["muted_pass"] != "eval":
            raise MethodConfigError(
                "agm: variant=official computes the muted passes in eval mode; drop "
                "muted_pass=fast (or use variant=paper)"
            )
        for key in ("modulation_start", "modulation_end"):
            if not isinstance(hp[key], int) or isinstance(hp[key], bool) or hp[key] < -1:
                raise MethodConfigError(
                    f"agm: {key} must be an epoch number (0-based; -1 for modulation_end = "
                    f"no end), got {hp[key]!r}"
                )
        # S4 state: running mean scores (in self.modalities order) and the step count.
        # float64, as the official code's Python floats (the scores themselves are float32).
        self.register_buffer("ce_bar", torch.zeros(2, dtype=torch.float64))
        self.register_buffer("t", torch.zeros((), dtype=torch.long))
        # S5: the coefficients last computed, applied outside the modulation window.
        self.register_buffer("kappa", torch.ones(2, dtype=torch.float64))

    def in_window(self, epoch: int) -> bool:
        """Whether kappa is recomputed in `epoch` (0-based); see ``modulation_end``."""
        end = self.hp["modulation_end"]
        return self.hp["modulation_start"] <= epoch and (end < 0 or epoch <= end)

    # -- S1 ------------------------------------------------------------------------------
    def muted_features(
        self, batch: Batch, out: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """({m: present features [B, D]}, {m: all-zero input's features [1, D]}), with
        gradient. Each encoder runs once in eval mode: on the batch with one all-zero sample
        appended ("eval"), or on the zero sample alone, the present features being the main
        pass's ("fast"). In eval mode every sample is encoded on its own, so appending the
        zero sample changes nothing for the others."""
        present, zero = {}, {}
        for m in self.modalities:
            x = batch[m]
            blank = x.new_zeros((1, *x.shape[1:]))
            with eval_mode(self.encoders[m]):
                if self.hp["muted_pass"] == "eval":
                    z = self.encoders[m](torch.cat([x, blank]))
                    present[m], zero[m] = z[:-1], z[-1:]
                else:
                    present[m], zero[m] = out["features"][m], self.encoders[m](blank)
        return present, zero

    def responses(
        self, batch: Batch, out: dict[str, Any]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(f(a,v), phi^a, phi^v) from the main pass `out` (S1). Runs encoders only in eval
        mode, so it changes no BatchNorm statistics."""
        a, v = self.modalities
        present, zero = self.muted_features(batch, out)
        n = batch[a].shape[0]
        za, zv = present[a], present[v]
        # f(a,0) and f(0,v) in one head call: rows [0, n) mute v, rows [n, 2n) mute a.
        muted, _ = self.head(
            {
                a: torch.cat([za, zero[a].expand(n, -1).to(za.dtype)]),
                v: torch.cat([zero[v].expand(n, -1).to(zv.dtype), zv]),
            }
        )
        f_a0, f_0v = muted.chunk(2)
        f_av = out["fused"]
        phi_a, phi_v = shapley_responses(f_av, f_a0, f_0v)
        return f_av, phi_a, phi_v

    # -- S2-S5 ---------------------------------------------------------------------------
    def compute_loss(
        self, batch: Batch, out: dict[str, Any], step: StepInfo
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        a, v = self.modalities
        y = batch["label"]
        _, phi_a, phi_v = self.responses(batch, out)
        ce = torch.stack([mono_scores(phi_a, y), mono_scores(phi_v, y)]).double()  # S2
        official = self.hp["variant"] == "official"
        with torch.no_grad():
            reference, ce_bar = running_scores(self.ce_bar, ce, self.t, official)  # S4
            self.ce_bar.copy_(ce_bar)
            self.t += 1
            if self.in_window(step.epoch):
                kappa = modulation_coefficients(  # S3, S5
                    ce[0], ce[1], reference[0], reference[1], self.hp["alpha"], self.hp["clip"]
                )
                self.kappa.copy_(torch.stack(kappa))
            kappa_a, kappa_v = self.kappa.clone().unbind()  # outside the window: the last
            r_a, r_v = score_ratios(ce[0], ce[1])
            rbar_a, rbar_v = score_ratios(reference[0], reference[1])
        scale_gradient(phi_a, kappa_a)
        scale_gradient(phi_v, kappa_v)
        loss = cross_entropy(phi_a + phi_v, y)
        logs = {
            f"kappa_{a}": kappa_a,
            f"kappa_{v}": kappa_v,
            f"r_{a}": r_a,
            f"r_{v}": r_v,
            f"rbar_{a}": rbar_a,
            f"rbar_{v}": rbar_v,
        }
        return loss, logs

    # -- S6 ------------------------------------------------------------------------------
    def modify_gradients(
        self, batch: Batch, out: dict[str, Any], step: StepInfo
    ) -> dict[str, torch.Tensor]:
        max_norm = self.hp["grad_clip_norm"]
        if max_norm <= 0:
            return {}
        watched = [p.grad for p in self.head.parameters() if p.ndim >= 2 and p.grad is not None]
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if not watched:
            return {}
        factor = conditional_clip_factor(watched, grads, max_norm)
        torch._foreach_mul_(grads, factor)
        return {"clip_factor": factor.detach()}
