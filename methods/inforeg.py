"""InfoReg: information acquisition regulation in the prime learning window.

Chengxiang Huang, Yake Wei, Zequn Yang, Di Hu, "Adaptive Unimodal Regulation for Balanced
Multimodal Information Acquisition", CVPR 2025 (arXiv 2503.18595). Official code:
github.com/GeWu-Lab/InfoReg_CVPR2025, main.py (v1 = 41d887f with models/basic_model.py at
4df625a, the paper release; v2 = 939b2ed, 2025-11).

The paper's text beyond its abstract could not be read with the tools here, so its equation
numbers are not cited and every rule below is the official code's ("M" = main.py at v2, "M1"
= main.py at v1), numbered I1-I7. What the abstract and the official README state agrees with
it: an early "prime learning window" in which information is acquired fast (README: the whole
network's information amount rises quickly), during which the information-sufficient
modality is slowed down, with uni- and multi-modal losses and a coefficient from their
performance gap. For two modalities a, v (``self.modalities`` in order):

Per epoch e, before its first step (``on_epoch_start``):
  I1  anchor: theta_bar^m <- a copy of encoder m's parameters (M:259, the start-of-epoch
      model; a per-step anchor would make I5 vanish);
  I2  window: with T the per-epoch information traces (I7) prefixed by ``window`` = 10 zeros,
      A_e = mean(T[-10:]), A'_e = mean(T[-11:-1]), k_e = (A_e - A'_e) / A_e, k_0 = 1
      (M:236-245, M:693-694); the epoch is in the window iff k_e > tau (recomputed every
      epoch, not latched).
Per step:
  I3  forward; L = CE(fused, y) + sum_m CE(u^m, y), u^m the unimodal logits (M:456-458,
      M1:214-216); one backward;
  I4  s^m = sum_i softmax(u^m_i)[y_i] (batch SUM, no gradient); in the window, the modality
      with the larger s gets beta^m = gamma_m exp(tanh(s^m - s^other)), the other 0
      (M:465-485);
  I5  g_p <- g_p + beta^m (p - p_bar) for every parameter p of encoder m (M:489-495): the
      gradient of the proximal term (beta^m / 2) ||theta^m - theta_bar^m||^2, added after
      backward and before the step;
  I6  F_W += g_W * g_W for every Conv2d/Linear weight W of each encoder, g including I5
      (M:501-523); optimiser step;
at the end of the epoch:
  I7  T^m_e = sum over those weights of mean_elements(F_W) (M:564-595); F is reset.
      (Kept here as per-step sums of ||g_W||^2 / numel(W), which add up to the same numbers
      without a second copy of the weights; rounding aside.)

Options (``--set key=value``):
- ``tau`` (0.04): window threshold (v1, the paper release; v2 0.05).
- ``window`` (10): the number of epochs averaged in I2 (and of leading zeros).
- ``gamma`` ({"audio": 0.95, "visual": 0.1}): the per-modality factor of I4, hard-coded by
  name in the code; looked up by modality name, else by modality kind.
- ``uni_heads`` ("separate"): the unimodal logits u^m: "separate" = one extra Linear(D, C)
  per modality (v1, basic_model.py@4df625a), "slices" = the fusion head's own u^m (v2: for
  concat W_m z^m + b/2, M:361-363).
- ``window_trace`` ("total"): the trace that drives I2: "total" = the sum over the encoders
  (the README describes the window with the whole network's information), "first" = the
  first modality's (the code's: audio), or a modality name.
- ``variant`` ("paper"): "paper" = I1-I7 with the options above; "v1" = the v1 code: its
  second branch repeats the first condition (``elif score_v < score_a``, M1:227), so only the
  first modality is ever regulated; tau 0.04, separate heads, the first modality's trace;
  "v2" = the v2 code: both branches, tau 0.05, slices, the first modality's trace.

Differences of the official code besides the variants: it does not run as published (imports
utils.utils and dataset.VGGSoundDataset, which are absent, and F += g * g meets the None
gradients of unused Linears: a TypeError, v2 M:504, v1 M1:250); it runs 3 extra diagnostic
backward passes per step with ``.item()`` reads and a Python loop over the batch for s^m (ours:
one backward, a gather, no host sync); it chooses its best epoch on the test split.

The anchor is not checkpointed: checkpoints are written at epoch ends and I1 takes it again at
the start of the next epoch, so a resumed run sees the same anchor. The traces are
(``extra_state``).

Diagnostics: per step (averaged per epoch) ``beta_<m>``, ``regulated_<m>`` (share of steps with
beta^m > 0), ``score_gap`` (s^a - s^v), ``in_window``; per epoch ``trace_<m>``, ``trace_total``,
``k`` (I2, the value used in this epoch), ``prox_<m>`` = ||theta^m - theta_bar^m|| at the end
of the epoch.

Paper protocol (``protocol=paper``, v1 CREMA-D script): SGD lr 0.002, momentum 0.9, weight
decay 1e-4, batch 64, 80 epochs, StepLR(40, 0.1), 3 frames (v2: 50 epochs, StepLR(30, 0.1)).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from methods.parts.base import Batch, BatchSource, Method, StepInfo, cross_entropy
from methods.parts.encoders import init_weights
from methods.parts.fusion import create_fusion
from methods.parts.registry import MethodConfigError, register_method

VARIANTS = ("paper", "v1", "v2")
UNI_HEADS = ("separate", "slices")


# -- I2: the learning window -----------------------------------------------------------------
def window_k(traces: Sequence[float], window: int = 10) -> float:
    """k_e = (A_e - A'_e) / A_e from the traces T_0..T_{e-1} of the finished epochs, the list
    prefixed by `window` zeros; A_e = mean of the last `window`, A'_e = mean of the `window`
    before the last (I2). k_0 = 1 (no finished epoch); A_e = 0 gives 0 (no information yet:
    the official code divides by zero)."""
    if not traces:
        return 1.0
    padded = [0.0] * window + list(traces)
    a_now = sum(padded[-window:]) / window
    a_before = sum(padded[-window - 1 : -1]) / window
    return 0.0 if a_now == 0 else (a_now - a_before) / a_now


# -- I4: the regulation coefficients ---------------------------------------------------------
def true_class_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """s = sum_i softmax(u_i)[y_i] (I4), float32, no gradient."""
    with torch.no_grad():
        return logits.float().softmax(dim=1).gather(1, labels.long()[:, None]).sum()


def regulation_coefficients(
    s_a: torch.Tensor,
    s_v: torch.Tensor,
    gamma_a: float,
    gamma_v: float,
    in_window: bool,
    second_branch: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(beta^a, beta^v) (I4): in the window, the modality with the larger s gets
    gamma exp(tanh(s^m - s^other)), the other 0; both 0 at a tie and outside the window.
    `second_branch=False` is the v1 code, where v is never regulated."""
    zero = torch.zeros_like(s_a)
    if not in_window:
        return zero, zero.clone()
    beta_a = torch.where(s_a > s_v, gamma_a * torch.exp(torch.tanh(s_a - s_v)), zero)
    beta_v = torch.where(s_v > s_a, gamma_v * torch.exp(torch.tanh(s_v - s_a)), zero)
    return beta_a, beta_v if second_branch else zero.clone()


# -- I5: the proximal gradient ---------------------------------------------------------------
def add_proximal_(
    grads: list[torch.Tensor],
    params: list[torch.Tensor],
    anchor: list[torch.Tensor],
    beta: torch.Tensor,
) -> None:
    """In place: g <- g + beta (p - p_bar) for each (g, p, p_bar) (I5); beta a 0-d tensor."""
    if not grads:
        return
    diffs = torch._foreach_sub([p.detach() for p in params], anchor)
    torch._foreach_mul_(diffs, beta.to(grads[0].dtype))
    torch._foreach_add_(grads, diffs)


# -- I6, I7: the information trace -----------------------------------------------------------
def trace_increment(grads: list[torch.Tensor], device: torch.device | None = None) -> torch.Tensor:
    """sum_W ||g_W||^2 / numel(W) over the given weight gradients: one step's share of I7's
    sum over layers of mean(F_W). 0-d float64."""
    if not grads:
        return torch.zeros((), dtype=torch.float64, device=device)
    norms = torch._foreach_norm(grads)
    return torch.stack(
        [n.double().square() / g.numel() for n, g in zip(norms, grads, strict=True)]
    ).sum()


@register_method("inforeg")
class InfoReg(Method):
    """InfoReg (Huang et al., CVPR 2025): proximal pull on the leading encoder, early epochs.

    The pull acts in the prime learning window, the early epochs where information is
    acquired fastest."""

    DIAGNOSTICS = (
        "train/beta_{modality}",
        "train/trace_{modality}",
        "train/k",
        "train/prox_{modality}",
    )

    min_modalities = 2
    defaults: dict[str, Any] = {
        "tau": 0.04,
        "window": 10,
        "gamma": {"audio": 0.95, "visual": 0.1},
        "uni_heads": "separate",
        "window_trace": "total",
        "variant": "paper",
    }
    variant_defaults = {
        "v1": {"tau": 0.04, "uni_heads": "separate", "window_trace": "first"},
        "v2": {"tau": 0.05, "uni_heads": "slices", "window_trace": "first"},
    }
    paper_settings = {
        "optimizer": "sgd",
        "lr": 0.002,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "batch_size": 64,
        "epochs": 80,
        "scheduler": "step",
        "lr_step": 40,
        "lr_gamma": 0.1,
        "frames": 3,
    }
    variant_paper_settings = {"v2": {"epochs": 50, "lr_step": 30}}

    def __init__(self, encoders, num_classes, hp, ctx) -> None:
        if len(encoders) != 2:
            raise MethodConfigError(
                f"inforeg compares two modalities' scores; the dataset has {len(encoders)} "
                f"({', '.join(encoders)})"
            )
        super().__init__(encoders, num_classes, hp, ctx)
        # the variant's defaults also when built without benchmark.train.config (tests, scripts)
        variant = self.variant_defaults.get(self.hp["variant"], {})
        self.hp = hp = {**self.defaults, **variant, **hp}
        if hp["variant"] not in VARIANTS:
            raise MethodConfigError(
                f"inforeg: unknown variant {hp['variant']!r}; choose one of {', '.join(VARIANTS)}"
            )
        if hp["uni_heads"] not in UNI_HEADS:
            raise MethodConfigError(
                f"inforeg: unknown uni_heads {hp['uni_heads']!r}; choose one of "
                f"{', '.join(UNI_HEADS)}"
            )
        traces = ("total", "first", *self.modalities)
        if hp["window_trace"] not in traces:
            raise MethodConfigError(
                f"inforeg: window_trace must be one of {', '.join(traces)}, got "
                f"{hp['window_trace']!r}"
            )
        if not _is_number(hp["tau"]):
            raise MethodConfigError(f"inforeg: tau must be a number, got {hp['tau']!r}")
        if not isinstance(hp["window"], int) or isinstance(hp["window"], bool) or hp["window"] < 1:
            raise MethodConfigError(
                f"inforeg: window must be an integer >= 1, got {hp['window']!r}"
            )
        self.gamma = self.resolve_gamma(hp["gamma"], ctx.modalities)
        dims = {m: self.encoders[m].out_dim for m in self.modalities}
        self.head = create_fusion(ctx.settings.get("fusion", "concat"), dims, num_classes)
        if hp["uni_heads"] == "separate":
            self.uni_heads = nn.ModuleDict({m: nn.Linear(d, num_classes) for m, d in dims.items()})
            init_weights(self.uni_heads)
        self.add_optimizer("main", self.parameters())
        # I6: the weights whose squared gradients make the trace, per modality
        self.traced = {
            m: [
                mod.weight
                for mod in self.encoders[m].modules()
                if isinstance(mod, nn.Conv2d | nn.Linear) and mod.weight.requires_grad
            ]
            for m in self.modalities
        }
        self.params = self.modality_parameters()
        self.anchor: dict[str, list[torch.Tensor]] | None = None  # I1
        self.traces: dict[str, list[float]] = {m: [] for m in self.modalities}  # I7, per epoch
        self.fisher: torch.Tensor | None = None  # this epoch's running I6 sums, [M] float64
        self.in_window = True
        self.k = 1.0

    def resolve_gamma(self, gamma: Any, kinds: Mapping[str, str]) -> dict[str, float]:
        if not isinstance(gamma, Mapping):
            raise MethodConfigError(
                f"inforeg: gamma must be a mapping {{modality: factor}}, got {gamma!r}"
            )
        unknown = sorted(set(gamma) - set(self.modalities) - set(kinds.values()))
        if unknown:
            example = ", ".join(f'"{m}": G{i + 1}' for i, m in enumerate(self.modalities))
            raise MethodConfigError(
                f"inforeg: gamma names {', '.join(unknown)}, which is no modality "
                f"({', '.join(self.modalities)}) nor kind of this dataset; give each modality "
                f"its factor, e.g. --set 'gamma={{{example}}}'"
            )
        out = {}
        for m in self.modalities:
            value = gamma.get(m, gamma.get(kinds.get(m, m)))
            if not _is_number(value) or value < 0:
                raise MethodConfigError(
                    f"inforeg: gamma needs a factor >= 0 for modality {m!r} (by name or kind), "
                    f"got {value!r}"
                )
            out[m] = float(value)
        return out

    # -- I1, I2: epoch start -----------------------------------------------------------------
    def trace_series(self) -> list[float]:
        which = self.hp["window_trace"]
        if which == "total":
            return [sum(t) for t in zip(*self.traces.values(), strict=True)]
        return list(self.traces[self.modalities[0] if which == "first" else which])

    @torch.no_grad()
    def take_anchor(self) -> None:
        self.anchor = {m: [p.detach().clone() for p in ps] for m, ps in self.params.items()}

    def on_epoch_start(self, epoch: int, data: BatchSource) -> None:
        super().on_epoch_start(epoch, data)
        self.take_anchor()  # I1
        self.k = window_k(self.trace_series(), self.hp["window"])  # I2
        self.in_window = self.k > self.hp["tau"]
        self.fisher = None

    # -- I3-I6: one step ---------------------------------------------------------------------
    def forward_heads(self, batch: Batch) -> dict[str, Any]:
        feats = {m: self.encoders[m](batch[m]) for m in self.modalities}
        fused, slices = self.head(feats)
        if self.hp["uni_heads"] == "separate":
            uni = {m: self.uni_heads[m](feats[m]) for m in self.modalities}
        else:
            uni = slices
        return {"features": feats, "fused": fused, "uni": uni}

    def update(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        if self.anchor is None:  # called without on_epoch_start: anchor at the first step
            self.take_anchor()
        opt = self.optimizers["main"]
        opt.zero_grad(set_to_none=True)
        out = self.forward_heads(batch)
        y = batch["label"]
        loss = cross_entropy(out["fused"], y)  # I3
        for m in self.modalities:
            loss = loss + cross_entropy(out["uni"][m], y)
        loss.backward()
        a, v = self.modalities
        s_a, s_v = true_class_sum(out["uni"][a], y), true_class_sum(out["uni"][v], y)  # I4
        betas = regulation_coefficients(
            s_a,
            s_v,
            self.gamma[a],
            self.gamma[v],
            self.in_window,
            second_branch=self.hp["variant"] != "v1",
        )
        for m, beta in zip(self.modalities, betas, strict=True):  # I5
            params = [p for p in self.params[m] if p.grad is not None]
            add_proximal_([p.grad for p in params], params, self.anchor_of(m, params), beta)
        increments = torch.stack(  # I6
            [
                trace_increment([w.grad for w in self.traced[m] if w.grad is not None], y.device)
                for m in (a, v)
            ]
        )
        self.fisher = increments if self.fisher is None else self.fisher + increments
        opt.step()
        logs = {"loss": loss.detach(), "score_gap": s_a - s_v}
        one = torch.ones_like(s_a)
        logs["in_window"] = one if self.in_window else torch.zeros_like(one)
        for m, beta in zip(self.modalities, betas, strict=True):
            logs[f"beta_{m}"] = beta
            logs[f"regulated_{m}"] = (beta > 0).float()
        return logs

    def anchor_of(self, m: str, params: list[torch.Tensor]) -> list[torch.Tensor]:
        assert self.anchor is not None
        if len(params) == len(self.params[m]):
            return self.anchor[m]
        ids = {id(p) for p in params}
        return [t for p, t in zip(self.params[m], self.anchor[m], strict=True) if id(p) in ids]

    # -- I7: epoch end -----------------------------------------------------------------------
    def on_epoch_end(self, epoch: int, data: BatchSource) -> dict[str, float]:
        logs = super().on_epoch_end(epoch, data)
        sums = [0.0] * len(self.modalities) if self.fisher is None else self.fisher.tolist()
        for m, value in zip(self.modalities, sums, strict=True):
            self.traces[m].append(float(value))
            logs[f"trace_{m}"] = float(value)
        logs["trace_total"] = float(sum(sums))
        logs["k"] = float(self.k)
        if self.anchor is not None:
            with torch.no_grad():
                for m in self.modalities:
                    diffs = torch._foreach_sub([p.detach() for p in self.params[m]], self.anchor[m])
                    norms = torch.stack(torch._foreach_norm(diffs)).double()
                    logs[f"prox_{m}"] = float(norms.square().sum().sqrt())
        self.fisher = None
        return logs

    def predict(self, batch: Batch) -> dict[str, torch.Tensor]:
        out = self.forward_heads(batch)
        return {"fused": out["fused"], **out["uni"]}

    # -- checkpoints -------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"traces": {m: list(t) for m, t in self.traces.items()}}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        traces = state.get("traces")
        if traces is not None:
            self.traces = {m: [float(x) for x in traces[m]] for m in self.modalities}


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
