"""Diagnosing & Re-learning: re-initialise each encoder softly, by how much it overfits.

Wei, Li, Feng, Hu, "Diagnosing and Re-learning for Balanced Multimodal Learning", ECCV
2024. Official code: GeWu-Lab/Diagnosing_Relearning_ECCV2024 (code/ours.py: purity
62-95, diagnosis 99-127, re-initialisation 139-169, schedule 345-349 and 418-427);
specification: docs/methods.md, "Diagnosing & Re-learning".

Training is joint training (CE on the fused logits, one forward and one backward per
step, the run's fusion head); ``predict`` gives the fused logits and the fusion head's
per-modality slices. What the method adds happens between epochs:

R0 theta_init^m: every parameter of encoder m as built, kept (as buffers, so in every
   checkpoint: a resumed run re-initialises toward the SAME weights).
R1 After the evaluation of epoch e, when e > 0, e % T == 0 and e / T <= N (at most N
   events), run in ``on_epoch_start(e + 1)`` so that epoch e is evaluated before it:
R2 features z^m of the whole train split D and the validation split V, encoders in
   evaluation mode, no augmentation, no gradient;
R3 per modality and per set separately: each feature dimension min-max scaled to [-1, 1]
   (a constant dimension is only shifted), k-means with K = C clusters;
R4 purity P = (1/N) sum_k max_c |{i in cluster k : y_i = c}|;
R5 the diagnosis g^m = |P_D^m - P_V^m| (a representation that separates train much better
   than held-out data is over-trained) and the strength alpha^m = tanh(lambda g^m);
R6 every parameter of encoder m (convolutions, batch-norm weight and bias) becomes
   theta^m <- (1 - alpha^m) theta^m + alpha^m theta_init^m. Batch-norm running
   statistics, the fusion head and the optimiser state are left as they are.

R5-R6 are the paper's rule (the tanh of a scaled purity gap, the convex mix with the
initial weights); the paper's text could not be read here, so R1-R4 (when, on which
features, which clustering) follow the official code, as do the defaults lambda = 3,
T = 20, N = 3 (code/script/ours.sh, CREMA-D, 90 epochs).

The official code diagnoses with the validation split and selects its model on the test
split; here the diagnosis uses validation features too (the rule needs held-out data,
and validation is the split the suite holds out from training), and model selection
stays on validation (docs/design.md, "Model selection"). Using validation for both makes
it less of a held-out split than for the other methods; docs/methods.md says so.

Options (``--set key=value``):

- ``lambda`` (3.0): the slope of alpha = tanh(lambda g).
- ``period`` ("scaled"): T in epochs. "scaled" = round(E * 20 / 90) (at least 1) for a
  run of E epochs: the official schedule (events after 21, 41 and 61 of 90 epochs) kept
  in proportion, so a 20-epoch run has events after epochs 4, 8 and 12 (0-based) and a
  90-epoch run has T = 20 exactly. An integer fixes T.
- ``events`` (3): N, the most re-learning events per run.
- ``kmeans_n_init`` (1): k-means restarts (scikit-learn's KMeans, k-means++, seed 0).
  The official code leaves scikit-learn's default: 1 restart with the scikit-learn this
  suite pins (>= 1.4), 10 with scikit-learn <= 1.3. 10 restarts cost ~8x the clustering
  time and move alpha noticeably (0.41 vs 0.32 in one cross-check event), which says how
  noisy a single-restart diagnosis is.
- ``feature_fraction`` (1.0): the stratified part of train and val whose features are
  clustered (for VGGSound-size splits).
- ``reset_bn_stats`` (false): also mix the batch-norm running statistics toward their
  initial values (the official code leaves them).
- ``reset_momentum`` (false): also clear the optimiser's momentum of the re-initialised
  encoder (the official code keeps it).

Diagnostics (per epoch): ``event`` (1 in the epoch that starts with a re-learning event),
and, per modality m, from the latest event (0 before the first): ``purity_train_<m>``,
``purity_val_<m>``, ``gap_<m>``, ``alpha_<m>``; and ``init_dist_<m>`` = ||theta^m -
theta_init^m|| at the epoch's end.

Cost: steps are joint's; each event is one evaluation pass over train and val plus
2 M k-means fits on the CPU (scikit-learn), outside the training steps: on avdigits
(CPU, 2 cores) an event took 0.6-0.8 of a training epoch.

Paper protocol (official script and code): SGD lr 2e-3, momentum 0.9, weight decay 1e-4,
no schedule, batch 64, 90 epochs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from methods.joint import Joint
from methods.parts.base import BatchSource
from methods.parts.registry import MethodConfigError, register_method

OFFICIAL_EPOCHS = 90  # the official schedule: T = 20 of 90 epochs
OFFICIAL_PERIOD = 20


def purity(clusters: np.ndarray, labels: np.ndarray) -> float:
    """R4: the fraction of samples whose label is the majority label of their cluster."""
    clusters = np.asarray(clusters)
    labels = np.asarray(labels)
    hits = 0
    for k in np.unique(clusters):
        hits += np.bincount(labels[clusters == k]).max()
    return float(hits) / len(labels)


def minmax_scale(x: np.ndarray) -> np.ndarray:
    """R3's scaling: each column mapped to [-1, 1] by its own min and max (float64); a
    constant column is shifted to -1 (scale 1, as scikit-learn's MinMaxScaler does)."""
    x = np.asarray(x, dtype=np.float64)
    low, high = x.min(axis=0), x.max(axis=0)
    span = high - low
    span[span == 0.0] = 1.0
    return (x - low) / span * 2.0 - 1.0


def cluster_purity(features: np.ndarray, labels: np.ndarray, k: int, n_init: int) -> float:
    """R3-R4 for one set of features [N, D]: scale, k-means with `k` clusters, purity."""
    from sklearn.cluster import KMeans  # imported only where an event runs

    scaled = minmax_scale(features)
    clusters = KMeans(n_clusters=k, random_state=0, n_init=n_init).fit_predict(scaled)
    return purity(clusters, labels)


def relearn_strength(purity_train: float, purity_val: float, lam: float) -> float:
    """R5: alpha = tanh(lambda |P_D - P_V|)."""
    return math.tanh(lam * abs(purity_train - purity_val))


@torch.no_grad()
def soft_reset_(
    tensors: Sequence[torch.Tensor], initial: Sequence[torch.Tensor], alpha: float
) -> None:
    """R6, in place: t <- (1 - alpha) t + alpha t_init for each pair."""
    for t, t0 in zip(tensors, initial, strict=True):
        t.mul_(1.0 - alpha).add_(t0 * alpha)


def event_due(epoch: int, period: int, events: int) -> bool:
    """R1: whether ``on_epoch_start(epoch)`` runs an event, i.e. e = epoch - 1 > 0,
    e % period == 0 and it is one of the first `events` such epochs."""
    e = epoch - 1
    return e > 0 and e % period == 0 and e // period <= events


def scaled_period(epochs: int) -> int:
    """T for a run of `epochs` epochs in the official proportion 20 / 90 (at least 1)."""
    return max(1, round(epochs * OFFICIAL_PERIOD / OFFICIAL_EPOCHS))


class _Snapshot(nn.Module):
    """Copies of some tensors, as buffers (so they are saved in checkpoints)."""

    def __init__(self, named: Iterable[tuple[str, torch.Tensor]]) -> None:
        super().__init__()
        self.names: list[str] = []
        for name, tensor in named:
            key = name.replace(".", "__")
            self.register_buffer(key, tensor.detach().clone())
            self.names.append(key)

    def tensors(self) -> list[torch.Tensor]:
        return [getattr(self, key) for key in self.names]


@register_method("relearn")
class Relearn(Joint):
    """Diagnosing & Re-learning (Wei et al., ECCV 2024): joint training, with each
    encoder softly re-initialised by tanh(lambda x its train/val purity gap)."""

    DIAGNOSTICS = (
        "train/event",
        "train/purity_train_{modality}",
        "train/gap_{modality}",
        "train/alpha_{modality}",
        "train/init_dist_{modality}",
    )

    defaults: dict[str, Any] = {
        "lambda": 3.0,
        "period": "scaled",
        "events": 3,
        "kmeans_n_init": 1,
        "feature_fraction": 1.0,
        "reset_bn_stats": False,
        "reset_momentum": False,
    }
    paper_settings = {
        "optimizer": "sgd",
        "lr": 2e-3,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "scheduler": "none",
        "batch_size": 64,
        "epochs": 90,
    }

    def __init__(self, encoders, num_classes, hp, ctx) -> None:
        super().__init__(encoders, num_classes, hp, ctx)
        period = self.hp["period"]
        if period == "scaled":
            self.period = scaled_period(ctx.epochs)
        elif isinstance(period, int) and not isinstance(period, bool) and period >= 1:
            self.period = period
        else:
            raise MethodConfigError(
                f'relearn: period must be an epoch count >= 1 or "scaled", got {period!r} '
                "(e.g. --set period=20)"
            )
        for key, low in (("events", 0), ("kmeans_n_init", 1)):
            value = self.hp[key]
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise MethodConfigError(
                    f"relearn: {key} must be an integer >= {low}, got {value!r}"
                )
        if not 0.0 < float(self.hp["feature_fraction"]) <= 1.0:
            raise MethodConfigError(
                f"relearn: feature_fraction must be in (0, 1], got {self.hp['feature_fraction']!r}"
            )
        if not float(self.hp["lambda"]) >= 0.0:
            raise MethodConfigError(f"relearn: lambda must be >= 0, got {self.hp['lambda']!r}")
        # R0: the initial weights (and running statistics, for reset_bn_stats).
        self.initial = nn.ModuleDict(
            {
                m: _Snapshot(
                    [(f"p.{n}", p) for n, p in self.encoders[m].named_parameters()]
                    + [(f"b.{n}", b) for n, b in self._stat_buffers(m)]
                )
                for m in self.modalities
            }
        )
        self.last: dict[str, float] = {"event": 0.0}
        for m in self.modalities:
            for key in ("purity_train", "purity_val", "gap", "alpha"):
                self.last[f"{key}_{m}"] = 0.0

    def _stat_buffers(self, m: str) -> list[tuple[str, torch.Tensor]]:
        """Encoder m's floating-point buffers (batch-norm running mean and variance)."""
        return [(n, b) for n, b in self.encoders[m].named_buffers() if b.is_floating_point()]

    def _initial(self, m: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        n_params = len(list(self.encoders[m].parameters()))
        tensors = self.initial[m].tensors()
        return tensors[:n_params], tensors[n_params:]

    @torch.no_grad()
    def _features(self, data: BatchSource, split: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """R2: every encoder's features of `split` (evaluation mode, no augmentation)."""
        feats: dict[str, list[torch.Tensor]] = {m: [] for m in self.modalities}
        labels = []
        fraction = float(self.hp["feature_fraction"])
        for batch in data.batches(split, fraction=fraction, augment=False):
            for m in self.modalities:
                feats[m].append(self.encoders[m](batch[m]).float().cpu())
            labels.append(batch["label"].cpu())
        y = torch.cat(labels).numpy()
        return {m: torch.cat(v).numpy() for m, v in feats.items()}, y

    def relearn(self, data: BatchSource) -> dict[str, float]:
        """One re-learning event (R2-R6); returns its statistics."""
        was_training = self.training
        self.eval()
        train, y_train = self._features(data, "train")
        val, y_val = self._features(data, "val")
        self.train(was_training)
        stats: dict[str, float] = {"event": 1.0}
        n_init = int(self.hp["kmeans_n_init"])
        for m in self.modalities:
            p_train = cluster_purity(train[m], y_train, self.num_classes, n_init)
            p_val = cluster_purity(val[m], y_val, self.num_classes, n_init)
            alpha = relearn_strength(p_train, p_val, float(self.hp["lambda"]))
            params, stat_buffers = self._initial(m)
            soft_reset_(list(self.encoders[m].parameters()), params, alpha)
            if self.hp["reset_bn_stats"]:
                soft_reset_([b for _, b in self._stat_buffers(m)], stat_buffers, alpha)
            if self.hp["reset_momentum"]:
                state = self.optimizers["main"].state
                for p in self.encoders[m].parameters():
                    state.pop(p, None)
            stats.update(
                {
                    f"purity_train_{m}": p_train,
                    f"purity_val_{m}": p_val,
                    f"gap_{m}": abs(p_train - p_val),
                    f"alpha_{m}": alpha,
                }
            )
        return stats

    def on_epoch_start(self, epoch: int, data: BatchSource) -> None:
        self.last["event"] = 0.0
        if event_due(epoch, self.period, int(self.hp["events"])):
            self.last.update(self.relearn(data))

    def on_epoch_end(self, epoch: int, data: BatchSource) -> dict[str, float]:
        logs = dict(super().on_epoch_end(epoch, data))
        logs.update(self.last)
        with torch.no_grad():
            for m in self.modalities:
                params, _ = self._initial(m)
                current = list(self.encoders[m].parameters())
                pairs = zip(current, params, strict=True)
                sq = sum(((p.float() - p0.float()) ** 2).sum() for p, p0 in pairs)
                logs[f"init_dist_{m}"] = float(torch.as_tensor(sq).sqrt())
        return logs

    def extra_state(self) -> dict[str, Any]:
        return {"last": dict(self.last)}

    def load_extra_state(self, state: Mapping[str, Any]) -> None:
        self.last.update(state.get("last", {}))
