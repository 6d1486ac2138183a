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
fitted on: extracting features is a forward pass, and the whole train split would cost
about a third of a training epoch). val and test features come from the evaluation pass
(`benchmark.contribution.cached_encoders`), so the probe adds no pass over them.
Probes are evaluation only: they touch no parameter, buffer, optimiser or global RNG.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import nn

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)
LBFGS_ITERS = 50


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


def _fit_grid(x: torch.Tensor, y: torch.Tensor, classes: int, l2: torch.Tensor, iters: int):
    """Every l2 of the grid at once: G independent problems, one L-BFGS run on the sum of
    their objectives (its minimiser is each problem's minimiser; one run amortises the
    optimiser's per-iteration overhead over the grid)."""
    g = len(l2)
    weight = torch.zeros(g, classes, x.shape[1], device=x.device, requires_grad=True)
    bias = torch.zeros(g, classes, device=x.device, requires_grad=True)
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
        logits = torch.einsum("nd,gcd->gnc", x, weight) + bias[:, None, :]
        ce = nn.functional.cross_entropy(logits.reshape(-1, classes), y.repeat(g))
        loss = ce * g + 0.5 * (l2 * weight.pow(2).sum(dim=(1, 2))).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return weight.detach(), bias.detach()


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
    with torch.enable_grad():
        x_train = x_train.float()
        mean = x_train.mean(dim=0)
        std = x_train.std(dim=0).clamp_min(1e-6)
        z = (x_train - mean) / std
        grid = sorted(l2_grid, reverse=True)  # strongest first: ties keep it
        l2 = torch.tensor(grid, device=z.device)
        weights, biases = _fit_grid(z, y_train, num_classes, l2, iters)
        best: LinearProbe | None = None
        best_acc = -1.0
        for i, value in enumerate(grid):
            probe = LinearProbe(mean, std, weights[i], biases[i], value)
            acc = probe.accuracy(x_val, y_val)
            if acc > best_acc:
                best, best_acc = probe, acc
    assert best is not None
    return best


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
    for m in x_train:
        probe = fit_probe(x_train[m], y_train, x_val[m], y_val, num_classes)
        for split, (x, y) in evaluated.items():
            row[f"{split}/{m}/probe_acc"] = probe.accuracy(x[m], y)
    return row
