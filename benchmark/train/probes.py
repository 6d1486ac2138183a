"""Linear probes of each encoder: how much of the label its frozen features still hold.

As in OGM-GE (Peng et al., CVPR 2022, Sec. 4.3), BalanceBenchmark (Xu et al., 2025) and
"Diagnosing and Re-learning for Balanced Multimodal Learning" (Wei et al., ECCV 2024):
freeze an encoder (evaluation mode), take its features of the train split, fit a
multinomial logistic regression on them, and score it on val and test. A modality whose
probe is far below its unimodal reference lost features inside joint training.

The fit: features standardised with the train mean and std; W, b minimise
CE(x W^T + b, y) + l2/2 ||W||^2 by full-batch L-BFGS (strong Wolfe line search) for a
fixed number of iterations, on the run's device; l2 is chosen from `L2_GRID` by val
accuracy only (ties go to the stronger l2); test is scored once, with that choice.

Run settings: ``probe_every`` (probe every N-th epoch; "last" = only the last epoch; 0 =
never; in every case also the last epoch and every epoch that improves the selection key,
so that summary.json, read at the best-val epoch, carries the probe) and
``probe_fraction`` (the fixed, stratified, seeded part of the train split the probe is
fitted on, 0.2 by default: extracting features is a forward pass, and the whole train
split would cost about a third of a training epoch). Measured on avdigits (CPU, 2
cores, best of 7): extracting 20% of train takes ~6% of a training epoch and the
batched fit (both modalities, the whole l2 grid, 25 L-BFGS iterations) ~2%, under the
10% budget; a probe on 25% of train scores the audio encoder within a point of 20%,
and one on all of train ~3 points higher, so probe accuracies are comparable between
runs of one fraction, not with other suites' full-train probes. val and test features
come from the evaluation pass (`benchmark.train.contribution.cached_encoders`), so the probe
adds no pass over them.
Probes are evaluation only: they touch no parameter, buffer, optimiser or global RNG.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
LBFGS_ITERS = 25


@dataclass
class LinearProbe:
    """A fitted probe: standardisation, weights, and the l2 chosen on val."""

    mean: torch.Tensor
    std: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor
    l2: float

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return ((x.float() - self.mean) / self.std) @ self.weight.t() + self.bias

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        return float((self.logits(x).argmax(dim=1) == y).float().mean())


def _fit_grid(z: torch.Tensor, y: torch.Tensor, classes: int, l2: torch.Tensor, iters: int):
    """M feature sets z [M, N, D] times every l2 of the grid [G] at once: M * G independent
    problems, one L-BFGS run on the sum of their objectives (its minimiser is each
    problem's minimiser; one run amortises the optimiser's per-iteration overhead over
    the modalities and the grid). Returns weights [M, G, C, D] and biases [M, G, C]."""
    m, g = z.shape[0], len(l2)
    weight = torch.zeros(m, g, classes, z.shape[2], device=z.device, requires_grad=True)
    bias = torch.zeros(m, g, classes, device=z.device, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=iters,
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        logits = torch.einsum("mnd,mgcd->mgnc", z, weight) + bias[:, :, None, :]
        ce = nn.functional.cross_entropy(logits.reshape(-1, classes), y.repeat(m * g))
        loss = ce * (m * g) + 0.5 * (l2[:, None, None] * weight.pow(2)).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach(), bias.detach()


def fit_probes(
    x_train: Mapping[str, torch.Tensor],
    y_train: torch.Tensor,
    x_val: Mapping[str, torch.Tensor],
    y_val: torch.Tensor,
    num_classes: int,
    l2_grid: Sequence[float] = L2_GRID,
    iters: int = LBFGS_ITERS,
) -> dict[str, LinearProbe]:
    """One probe per feature set of `x_train` ({name: [N, D_name]}), each with the l2 of
    the grid that scores best on its val features. Test is never seen here. The feature
    sets are fitted together (zero-padded to one width: a padded column is 0 after
    standardisation, so its weight stays 0 and the problem is unchanged)."""
    names = list(x_train)
    width = max(x_train[n].shape[1] for n in names)
    grid = sorted(l2_grid, reverse=True)  # strongest first: ties keep it
    with torch.enable_grad():
        stats, padded = {}, []
        for n in names:
            x = x_train[n].float()
            mean, std = x.mean(dim=0), x.std(dim=0).clamp_min(1e-6)
            stats[n] = (mean, std)
            padded.append(nn.functional.pad((x - mean) / std, (0, width - x.shape[1])))
        l2 = torch.tensor(grid, device=padded[0].device)
        weights, biases = _fit_grid(torch.stack(padded), y_train, num_classes, l2, iters)
    probes: dict[str, LinearProbe] = {}
    for i, n in enumerate(names):
        mean, std = stats[n]
        best_acc = -1.0
        for j, value in enumerate(grid):
            probe = LinearProbe(mean, std, weights[i, j, :, : len(mean)], biases[i, j], value)
            acc = probe.accuracy(x_val[n], y_val)
            if acc > best_acc:
                probes[n], best_acc = probe, acc
    return probes


def fit_probe(
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    num_classes: int,
    l2_grid: Sequence[float] = L2_GRID,
    iters: int = LBFGS_ITERS,
) -> LinearProbe:
    """Fit one probe per l2 on train, keep the best on val. Test is never seen here."""
    probes = fit_probes({"x": x_train}, y_train, {"x": x_val}, y_val, num_classes, l2_grid, iters)
    return probes["x"]


def probe_due(epoch: int, epochs: int, every: int | str, improves: bool) -> bool:
    """Whether to probe after `epoch` (0-based): every `every`-th epoch ("last": none), the
    last epoch and each epoch that improves the selection key; never when `every` is 0."""
    if every == 0:
        return False
    if epoch == epochs - 1 or improves:
        return True
    return every != "last" and (epoch + 1) % int(every) == 0


@torch.no_grad()
def encoder_features(
    encoders: Mapping[str, nn.Module],
    batches: Iterable[Mapping[str, torch.Tensor]],
    autocast: Callable[[], AbstractContextManager],
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """{m: features [N, D]} (float32) and labels [N] of the given batches, encoders frozen."""
    feats: dict[str, list[torch.Tensor]] = {m: [] for m in encoders}
    labels = []
    for batch in batches:
        with autocast():
            for m, enc in encoders.items():
                feats[m].append(enc(batch[m]).float())
        labels.append(batch["label"])
    return {m: torch.cat(v) for m, v in feats.items()}, torch.cat(labels)


def probe_row(
    train: tuple[Mapping[str, torch.Tensor], torch.Tensor],
    evaluated: Mapping[str, tuple[Mapping[str, torch.Tensor], torch.Tensor]],
    num_classes: int,
) -> dict[str, float]:
    """``<split>/<m>/probe_acc`` for each split of `evaluated` ({split: (features, labels)},
    val among them), probes fitted on `train` = (features, labels)."""
    x_train, y_train = train
    x_val, y_val = evaluated["val"]
    row: dict[str, float] = {}
    for m, probe in fit_probes(x_train, y_train, x_val, y_val, num_classes).items():
        for split, (x, y) in evaluated.items():
            row[f"{split}/{m}/probe_acc"] = probe.accuracy(x[m], y)
    return row
