"""Greedy: balanced multi-modal learning by conditional learning speeds.

Nan Wu, Stanislaw Jastrzebski, Kyunghyun Cho, Krzysztof J. Geras, "Characterizing and
Overcoming the Greedy Nature of Learning in Multi-modal Deep Neural Networks", ICML 2022.
Official code: github.com/nyukat/greedy_multimodal_learning (read at a190e03): src/model.py,
src/balanced_mmtm.py ("MM"), src/callbacks.py ("CB", Bias_Mitigation_Strong),
configs/training_guided.gin.

The paper's text could not be read with the tools here, so its equation numbers are not
cited; the rule is the official code's, numbered G1-G6.

Architecture (intermediate fusion: NOT the suite's late fusion head; document it when
comparing). Each encoder runs as its four stages (``FrameEncoder.stages``); after stages
2, 3, 4 an MMTM block (Joze et al. 2020, as in MM) joins the two streams:
  G1  squeeze q_a = mean over H, W of F_a; q_v = mean over frames K, H, W of F_v (a clip's
      frames together, never B*K "samples"); e = ReLU(W_s [q_a; q_v] + b_s), of width
      2 (C_a + C_v) / ``ratio``; gates g_m = sigmoid(W_m e + b_m) in R^{C_m};
      F_m <- F_m * g_m (broadcast over space and frames).
  Heads h^m = Linear(D_m, C) on each stream's pooled features; fused = (h^a + h^v) / 2.
Per step:
  G2  forward in mode (cur, care): the gate of modality ``care`` is its running mean r_care
      (detached) while cur > 0, else the live g; on training forwards
      r_m <- (n r_m + mean_batch g_m) / (n + 1) (MM:113-116);
      L = sum_m CE(h^m, y) (train.py blend_loss); one backward.
  G3  conditional learning speeds (no gradient, before the optimiser step, only when cur = 0):
      mu(P) = sum_{p in P} ||g_p||^2 / sum_{p in P} ||p||^2 with P = main_m (encoder m and
      h^m) or byp_m (W_m, b_m of every MMTM and the shared W_s, b_s);
      M_main,m += mu(main_m), M_byp,m += mu(byp_m);
      BDR_m = log10(M_byp,m / M_main,m); d = BDR_a - BDR_v (CB:199-233).
  G4  from epoch ``warmup_epochs`` on: if cur = 0 and |d| > alpha: care = a if d > 0 else v,
      cur = Q (the next Q steps are re-balancing steps); elif cur > 0: cur -= 1 (CB:240-267).
  G5  optimiser step (one SGD over everything).
  G6  prediction: fused with live gates; the unimodal logits <m> = h^m with the cross-modal
      flow off: the other modality's squeeze replaced by its mean over the train split
      (MM:72-91, eval.gin mmtm_off), recomputed at every epoch end. One extra forward gives
      both modalities' flow-off logits.

In a re-balancing step the cared-for gate's excitation weights W_m, b_m get a zero gradient,
so weight decay and momentum still move them, as in the official code under the torch 1.x it
was written for (its ``zero_grad`` zeroed gradients in place; with torch >= 2.0's default
``set_to_none`` those weights would skip the step).

State (cur, care, M in float64, r, n, the squeeze means) lives in device buffers, saved in
checkpoints; the state machine runs with torch.where, so a step never syncs with the host.

Options (``--set key=value``), the official gin values:
- ``alpha`` (0.01): the threshold on |d| (gin ``epsilon``; BalanceBenchmark uses 0.001).
- ``curation_steps`` (5): Q (gin ``curation_windowsize``).
- ``warmup_epochs`` (1): epochs before G4 starts (gin starting_epoch = 2 over 1-based epochs);
  M accumulates from the first step.
- ``ratio`` (4): the MMTM squeeze ratio.
- ``est_fraction`` (1.0): the fraction of the train split (fixed, stratified, evaluation
  transform) the squeeze means of G6 are computed on.
- ``util_fraction`` (0.1): the fraction the epoch-end utilisation diagnostics are computed on
  (0 turns them off).
- ``variant`` ("paper"): "official" reproduces two quirks of the official MMTM: the running
  mean of the second modality accumulates the FIRST modality's gate (MM:114; both streams
  need the same channels at every joined stage) and the running means are updated on every
  forward with live gates, also in evaluation (MM:113-116), never reset.

Encoders without stages (anything but resnet18 and small) are refused with a
MethodConfigError; ``fusion`` is ignored (Greedy has its own architecture).

Diagnostics (``train/<key>``): per step ``d``, ``bdr_<m>``, ``curation`` (share of steps in
re-balancing), ``care_<m>`` (share of steps re-balancing with modality m's gate frozen),
``trigger``, ``gate<stage>_<m>`` (mean live gate), ``acc_<m>`` (batch accuracy of h^m with
the flow on); per epoch, on ``util_fraction`` of the train split, ``acc_on_<m>``,
``acc_off_<m>`` and ``u_<m>`` = (A_on - A_off) / A_on (how much branch m uses the other
modality) and ``d_util`` = u_first - u_second.

Paper protocol (``protocol=paper``, the gin of ModelNet40, no audio-visual settings were
published): SGD lr 0.1, momentum 0, weight decay 0, batch 8 (the official
ReduceLROnPlateau on the training loss is not among the suite's schedules: the run's
``scheduler`` stays).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from methods.parts.base import Batch, BatchSource, Method, StepInfo, cross_entropy
from methods.parts.encoders import init_weights
from methods.parts.registry import MethodConfigError, register_method

VARIANTS = ("paper", "official")
JOINED = (1, 2, 3)  # 0-based stages after which an MMTM joins the streams (stages 2, 3, 4)


def encoder_stages(encoder: nn.Module, name: str) -> list[nn.Module]:
    """The four stages of a shared encoder, or a MethodConfigError naming the encoder."""
    stages = getattr(encoder, "stages", None)
    if stages is None:
        raise MethodConfigError(
            f"greedy joins encoder stages, and the encoder of modality {name!r} "
            f"({type(encoder).__name__}) has none; use --set encoder=resnet18|small"
        )
    return stages()


def stage_channels(stage: nn.Module) -> int:
    """The channels a stage outputs: the width of its last BatchNorm."""
    norms = [m for m in stage.modules() if isinstance(m, nn.BatchNorm2d)]
    if not norms:
        raise MethodConfigError(f"greedy: cannot tell the width of stage {stage}")
    return norms[-1].num_features


# -- G3: conditional learning speed ----------------------------------------------------------
def learning_speed(grads: list[torch.Tensor], params: list[torch.Tensor]) -> torch.Tensor:
    """mu(P) = sum ||g_p||^2 / sum ||p||^2 (G3), float64, 0-d."""
    g = torch.stack(torch._foreach_norm(grads)).double().square().sum()
    w = torch.stack(torch._foreach_norm([p.detach() for p in params])).double().square().sum()
    return g / w


def bdr_difference(
    m_main: torch.Tensor, m_byp: torch.Tensor, eps: float = 1e-300
) -> tuple[torch.Tensor, torch.Tensor]:
    """(BDR [2], d = BDR_0 - BDR_1) from the accumulated speeds (G3); log10 guarded at eps."""
    bdr = torch.log10(m_byp.clamp_min(eps) / m_main.clamp_min(eps))
    return bdr, bdr[0] - bdr[1]


# -- G4: the re-balancing state machine ------------------------------------------------------
def next_state(
    cur: torch.Tensor, care: torch.Tensor, d: torch.Tensor, alpha: float, q: int, unlocked: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cur, care, trigger) after a step that started in state (cur, care) (G4). Locked
    (warm-up): cur = 0, care = 0. Unlocked: a step with cur = 0 and |d| > alpha starts Q
    re-balancing steps caring for modality 0 if d > 0 else 1; a step with cur > 0 counts
    one down."""
    zero = torch.zeros_like(cur)
    if not unlocked:
        return zero, torch.zeros_like(care), torch.zeros_like(cur, dtype=torch.bool)
    trigger = (cur == 0) & (d.abs() > alpha)
    new_care = torch.where(d > 0, torch.zeros_like(care), torch.ones_like(care))
    care = torch.where(trigger, new_care, torch.where(cur == 0, torch.zeros_like(care), care))
    cur = torch.where(trigger, torch.full_like(cur, q), (cur - 1).clamp_min(0))
    return cur, care, trigger


class MMTM(nn.Module):
    """One multimodal transfer module between two streams of widths (c_a, c_v) (G1)."""

    def __init__(self, c_a: int, c_v: int, ratio: float) -> None:
        super().__init__()
        hidden = int(2 * (c_a + c_v) / ratio)
        self.squeeze = nn.Linear(c_a + c_v, hidden)  # W_s, b_s (shared)
        self.excite = nn.ModuleList([nn.Linear(hidden, c_a), nn.Linear(hidden, c_v)])
        init_weights(self)

    def gates(self, q_a: torch.Tensor, q_v: torch.Tensor) -> list[torch.Tensor]:
        e = torch.relu(self.squeeze(torch.cat([q_a, q_v], dim=1)))
        return [torch.sigmoid(self.excite[i](e)) for i in range(2)]


@register_method("greedy")
class Greedy(Method):
    """Greedy (Wu et al., ICML 2022): MMTM fusion, re-balanced by conditional learning speed.

    Re-balancing steps hold one modality's MMTM gates at their running means, the modality
    chosen from the difference of the two conditional learning speeds."""

    DIAGNOSTICS = (
        "train/d",
        "train/curation",
        "train/care_{modality}",
        "train/gate2_{modality}",
        "train/u_{modality}",
    )

    min_modalities = 2
    defaults: dict[str, Any] = {
        "alpha": 0.01,
        "curation_steps": 5,
        "warmup_epochs": 1,
        "ratio": 4,
        "est_fraction": 1.0,
        "util_fraction": 0.1,
        "variant": "paper",
    }
    paper_settings = {
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.0,
        "weight_decay": 0.0,
        "batch_size": 8,
    }

    def __init__(self, encoders, num_classes, hp, ctx) -> None:
        if len(encoders) != 2:
            raise MethodConfigError(
                f"greedy joins exactly two modality streams; the dataset has {len(encoders)} "
                f"({', '.join(encoders)})"
            )
        super().__init__(encoders, num_classes, hp, ctx)
        hp = self.hp
        if hp["variant"] not in VARIANTS:
            raise MethodConfigError(
                f"greedy: unknown variant {hp['variant']!r}; choose one of {', '.join(VARIANTS)}"
            )
        for key in ("curation_steps", "warmup_epochs"):
            if not isinstance(hp[key], int) or isinstance(hp[key], bool) or hp[key] < 0:
                raise MethodConfigError(f"greedy: {key} must be an integer >= 0, got {hp[key]!r}")
        if not _is_number(hp["alpha"]) or hp["alpha"] < 0:
            raise MethodConfigError(f"greedy: alpha must be a number >= 0, got {hp['alpha']!r}")
        if not _is_number(hp["ratio"]) or hp["ratio"] <= 0:
            raise MethodConfigError(f"greedy: ratio must be a number > 0, got {hp['ratio']!r}")
        for key in ("est_fraction", "util_fraction"):
            low_ok = hp[key] >= 0 if key == "util_fraction" else hp[key] > 0
            if not _is_number(hp[key]) or not low_ok or hp[key] > 1:
                raise MethodConfigError(f"greedy: {key} must be in (0, 1], got {hp[key]!r}")
        a, v = self.modalities
        self.stages = {m: encoder_stages(self.encoders[m], m) for m in self.modalities}
        widths = {m: [stage_channels(s) for s in self.stages[m]] for m in self.modalities}
        if hp["variant"] == "official" and any(widths[a][i] != widths[v][i] for i in JOINED):
            raise MethodConfigError(
                "greedy: variant=official sizes both running means by the first stream "
                f"(MM:31), so the streams need equal widths at the joined stages; got {widths}"
            )
        self.mmtm = nn.ModuleList([MMTM(widths[a][i], widths[v][i], hp["ratio"]) for i in JOINED])
        self.heads = nn.ModuleDict(
            {m: nn.Linear(self.encoders[m].out_dim, num_classes) for m in self.modalities}
        )
        init_weights(self.heads)
        self.add_optimizer("main", self.parameters())
        # G2: running mean gates r [per MMTM, per modality] and their count n
        for j, i in enumerate(JOINED):
            for k in range(2):
                self.register_buffer(f"running_gate_{j}_{k}", torch.zeros(widths[(a, v)[k]][i]))
                self.register_buffer(f"mean_squeeze_{j}_{k}", torch.zeros(widths[(a, v)[k]][i]))
        self.register_buffer("gate_count", torch.zeros(len(JOINED), dtype=torch.float64))
        # G3, G4: accumulated speeds [main/byp per modality], the state machine
        self.register_buffer("m_main", torch.zeros(2, dtype=torch.float64))
        self.register_buffer("m_byp", torch.zeros(2, dtype=torch.float64))
        self.register_buffer("cur", torch.zeros((), dtype=torch.long))
        self.register_buffer("care", torch.zeros((), dtype=torch.long))
        # G3 parameter groups
        self.main_params = {
            m: [*self.encoders[m].parameters(), *self.heads[m].parameters()]
            for m in self.modalities
        }
        shared = [p for t in self.mmtm for p in t.squeeze.parameters()]
        self.byp_params = {
            m: [*(p for t in self.mmtm for p in t.excite[k].parameters()), *shared]
            for k, m in enumerate(self.modalities)
        }

    def running_gate(self, j: int, k: int) -> torch.Tensor:
        return getattr(self, f"running_gate_{j}_{k}")

    def mean_squeeze(self, j: int, k: int) -> torch.Tensor:
        return getattr(self, f"mean_squeeze_{j}_{k}")

    # -- G1, G2, G6: the forward pass --------------------------------------------------------
    def forward_streams(
        self, batch: Batch, mode: str = "live", curate: bool = False, track: bool = False
    ) -> dict[str, Any]:
        """Run both streams stage by stage with the MMTMs between them.

        mode: "live" (gates from both squeezes) or "off" (each gate from its own squeeze and
        the other's train-split mean, G6). curate: apply G2's frozen gate where cur > 0.
        track: update the running mean gates (G2). Returns the heads' logits, the squeezes
        and the live gates."""
        a, v = self.modalities
        x_a, x_v = batch[a], batch[v]
        b = x_a.shape[0]
        visual = [batch[m].dim() == 5 for m in (a, v)]  # [B, K, 3, H, W] clips of frames
        h = [x.flatten(0, 1) if vis else x for x, vis in zip((x_a, x_v), visual, strict=True)]
        frames = [x.shape[1] if vis else 1 for x, vis in zip((x_a, x_v), visual, strict=True)]
        squeezes, gates = [], []
        for i in range(4):
            h = [self.stages[m][i](h[k]) for k, m in enumerate((a, v))]
            if i not in JOINED:
                continue
            j = JOINED.index(i)
            # G1: squeeze over space and a clip's frames
            q = [_squeeze(h[k], b, frames[k]) for k in range(2)]
            squeezes.append(q)
            if mode == "off":
                means = [self.mean_squeeze(j, k).to(q[k].dtype).expand_as(q[k]) for k in range(2)]
                g = [self.mmtm[j].gates(q[0], means[1])[0], self.mmtm[j].gates(means[0], q[1])[1]]
            else:
                g = self.mmtm[j].gates(q[0], q[1])
            gates.append(g)
            if track:
                self.track_gates(j, g)
            if curate:  # G2: the cared-for modality's gate is its running mean
                active = self.cur > 0
                g = [
                    torch.where(
                        active & (self.care == k),
                        self.running_gate(j, k).to(g[k].dtype).expand_as(g[k]),
                        g[k],
                    )
                    for k in range(2)
                ]
            h = [_excite(h[k], g[k], b, frames[k]) for k in range(2)]
        feats = [_pool(h[k], b, frames[k]) for k in range(2)]
        logits = {m: self.heads[m](feats[k]) for k, m in enumerate((a, v))}
        return {"logits": logits, "squeezes": squeezes, "gates": gates}

    @torch.no_grad()
    def track_gates(self, j: int, g: list[torch.Tensor]) -> None:
        """r_m <- (n r_m + mean_B g_m) / (n + 1) (G2); official: r_1 tracks g_0 (MM:114)."""
        n = self.gate_count[j]
        sources = (g[0], g[0]) if self.hp["variant"] == "official" else (g[0], g[1])
        for k in range(2):
            r = self.running_gate(j, k)
            r.copy_(((sources[k].float().mean(0) + r * n) / (n + 1)).to(r.dtype))
        self.gate_count[j] += 1

    # -- G2-G5: one step ---------------------------------------------------------------------
    def update(self, batch: Batch, step: StepInfo) -> dict[str, torch.Tensor]:
        opt = self.optimizers["main"]
        opt.zero_grad(set_to_none=True)
        out = self.forward_streams(batch, curate=True, track=True)  # G2
        y = batch["label"]
        logits = out["logits"]
        loss = sum(cross_entropy(logits[m], y) for m in self.modalities)
        loss.backward()
        # G3: speeds from this step's gradients and the weights before the step
        free = self.cur == 0
        mu_main = torch.stack([self.speed(self.main_params[m]) for m in self.modalities])
        mu_byp = torch.stack([self.speed(self.byp_params[m]) for m in self.modalities])
        self.m_main += torch.where(free, mu_main, torch.zeros_like(mu_main))
        self.m_byp += torch.where(free, mu_byp, torch.zeros_like(mu_byp))
        bdr, d = bdr_difference(self.m_main, self.m_byp)
        curating, care = self.cur > 0, self.care.clone()
        # G4: the state of the next steps
        unlocked = step.epoch >= self.hp["warmup_epochs"]
        cur, care_next, trigger = next_state(
            self.cur, self.care, d, self.hp["alpha"], self.hp["curation_steps"], unlocked
        )
        self.cur.copy_(cur)
        self.care.copy_(care_next)
        opt.step()  # G5
        logs = {"loss": loss.detach(), "d": d.float(), "trigger": trigger.float()}
        logs["curation"] = curating.float()
        for k, m in enumerate(self.modalities):
            logs[f"bdr_{m}"] = bdr[k].float()
            logs[f"care_{m}"] = (curating & (care == k)).float()
            logs[f"acc_{m}"] = (logits[m].detach().argmax(1) == y).float().mean()
            for j, g in enumerate(out["gates"]):
                logs[f"gate{JOINED[j] + 1}_{m}"] = g[k].detach().float().mean()
        return logs

    def speed(self, params: list[nn.Parameter]) -> torch.Tensor:
        with_grad = [p for p in params if p.grad is not None]
        return learning_speed([p.grad for p in with_grad], with_grad)

    # -- G6: prediction ----------------------------------------------------------------------
    def predict(self, batch: Batch) -> dict[str, torch.Tensor]:
        official = self.hp["variant"] == "official"
        live = self.forward_streams(batch, track=official)["logits"]
        off = self.forward_streams(batch, mode="off")["logits"]
        a, v = self.modalities
        return {"fused": (live[a] + live[v]) / 2, a: off[a], v: off[v]}

    @torch.no_grad()
    def on_epoch_end(self, epoch: int, data: BatchSource) -> dict[str, float]:
        logs = super().on_epoch_end(epoch, data)
        was_training = self.training
        self.eval()
        device = self.m_main.device
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
        sums = [[torch.zeros_like(self.mean_squeeze(j, k)) for k in range(2)] for j in range(3)]
        count = 0
        for batch in data.batches("train", fraction=self.hp["est_fraction"], augment=False):
            with autocast:
                out = self.forward_streams(batch)
            for j, q in enumerate(out["squeezes"]):
                for k in range(2):
                    sums[j][k] += q[k].float().sum(0)
            count += batch["label"].shape[0]
        if count:
            for j in range(3):
                for k in range(2):
                    self.mean_squeeze(j, k).copy_(sums[j][k] / count)
        if self.hp["util_fraction"] > 0:
            logs.update(self.utilisation(data, autocast))
        self.train(was_training)
        return logs

    def utilisation(self, data: BatchSource, autocast: Any) -> dict[str, float]:
        """Accuracy of each h^m with the cross-modal flow on and off, u_m = (A_on - A_off) /
        A_on, and d_util = u_first - u_second, on `util_fraction` of the train split."""
        hits = torch.zeros(2, 2, device=self.m_main.device)  # [on/off, modality]
        count = 0
        for batch in data.batches("train", fraction=self.hp["util_fraction"], augment=False):
            y = batch["label"]
            with autocast:
                on = self.forward_streams(batch)["logits"]
                off = self.forward_streams(batch, mode="off")["logits"]
            for k, m in enumerate(self.modalities):
                hits[0, k] += (on[m].argmax(1) == y).sum()
                hits[1, k] += (off[m].argmax(1) == y).sum()
            count += y.shape[0]
        if not count:
            return {}
        acc = (hits / count).tolist()
        logs = {}
        u = []
        for k, m in enumerate(self.modalities):
            logs[f"acc_on_{m}"], logs[f"acc_off_{m}"] = acc[0][k], acc[1][k]
            u.append((acc[0][k] - acc[1][k]) / acc[0][k] if acc[0][k] > 0 else 0.0)
            logs[f"u_{m}"] = u[-1]
        logs["d_util"] = u[0] - u[1]
        return logs


def _squeeze(h: torch.Tensor, b: int, frames: int) -> torch.Tensor:
    """[B*K, C, H, W] -> [B, C]: the mean over a clip's frames and space (G1)."""
    return h.view(b, frames, *h.shape[1:]).mean(dim=(1, 3, 4))


def _excite(h: torch.Tensor, g: torch.Tensor, b: int, frames: int) -> torch.Tensor:
    """F * g, the gate [B, C] broadcast over each clip's frames and space (G1)."""
    shaped = h.view(b, frames, *h.shape[1:]) * g.to(h.dtype)[:, None, :, None, None]
    return shaped.view_as(h)


def _pool(h: torch.Tensor, b: int, frames: int) -> torch.Tensor:
    """Global average pool, then the mean over a clip's frames: the encoder's features."""
    return h.mean(dim=(2, 3)).view(b, frames, -1).mean(dim=1)


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)
