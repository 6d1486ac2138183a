"""Each modality's contribution to the fused accuracy, and robustness to a missing modality.

For a set M of modalities and each subset S of it, v(S) is the fused accuracy when the
modalities outside S are *absent*: their input is replaced by zeros, the convention of AGM
(Li et al., ICCV 2023) and of BalanceBenchmark (Xu et al., "BalanceBenchmark: A Survey for
Multimodal Imbalance Learning", 2025), which measures each modality's contribution as its
Shapley value (Shapley, "A Value for n-Person Games", 1953) over these subsets:

    phi_m = sum_{S subset of M \\ {m}} |S|! (|M| - |S| - 1)! / |M|!  [v(S + {m}) - v(S)]

(two modalities: phi_a = 1/2 [(v(av) - v(v)) + (v(a) - v(0))]). The values sum to
v(M) - v(empty set). The engine logs ``<split>/<m>/contribution`` (phi_m) and
``<split>/fused_without_<m>/acc`` (v(M \\ {m})), missing-modality robustness as MultiBench
(Liang et al., NeurIPS 2021 Datasets and Benchmarks) reports it.

Cost: no extra pass of the encoders over the data. `cached_encoders` wraps each encoder so
that, within one batch, an input it has already encoded returns the stored features and an
absent (all-zero) input returns the features of one zero sample, broadcast: in evaluation
mode (BatchNorm on running statistics) an encoder maps every all-zero sample to the same
features, so this equals encoding the zero batch. Only the heads run once per subset.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

Batch = dict[str, torch.Tensor]


def subsets(modalities: Sequence[str]) -> list[frozenset[str]]:
    """Every subset of `modalities`, the empty one and the full one included."""
    return [
        frozenset(c)
        for r in range(len(modalities) + 1)
        for c in itertools.combinations(modalities, r)
    ]


def shapley(values: Mapping[frozenset[str], float], modalities: Sequence[str]) -> dict[str, float]:
    """Exact Shapley value of each modality from v(S) for every subset S (a pure function)."""
    n = len(modalities)
    phi = {}
    for m in modalities:
        others = [o for o in modalities if o != m]
        total = 0.0
        for s in subsets(others):
            weight = math.factorial(len(s)) * math.factorial(n - len(s) - 1) / math.factorial(n)
            total += weight * (values[s | {m}] - values[s])
        phi[m] = total
    return phi


def contribution_row(
    split: str, values: Mapping[frozenset[str], float], modalities: Sequence[str]
) -> dict[str, float]:
    """The metrics.jsonl keys ``<split>/<m>/contribution`` and
    ``<split>/fused_without_<m>/acc``."""
    full = frozenset(modalities)
    row = {f"{split}/fused_without_{m}/acc": values[full - {m}] for m in modalities}
    row.update({f"{split}/{m}/contribution": v for m, v in shapley(values, modalities).items()})
    return row


class CachedEncoder(nn.Module):
    """An encoder that remembers, for the current batch, the features of the inputs it saw
    (by tensor identity) and answers an `absent` input with one zero sample's features."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for known, features in self.seen:
            if x is known:
                return features
        out = self.inner(x)
        self.seen.append((x, out))
        return out

    def absent(self, like: torch.Tensor) -> torch.Tensor:
        """A zero input shaped like `like` (a broadcast view, no memory) whose features are
        computed on one zero sample and broadcast to the batch."""
        zeros = torch.zeros((), dtype=like.dtype, device=like.device).expand_as(like)
        one = self.inner(torch.zeros_like(like[:1]))
        self.seen.append((zeros, one.expand(like.shape[0], *one.shape[1:])))
        return zeros

    def features(self, x: torch.Tensor) -> torch.Tensor | None:
        """The stored features of input `x`, if it was encoded in this batch."""
        return next((f for known, f in self.seen if x is known), None)

    def clear(self) -> None:
        self.seen = []


@contextmanager
def cached_encoders(method: nn.Module) -> Iterator[dict[str, CachedEncoder]]:
    """Swap each of `method.encoders` for a `CachedEncoder` while the block runs."""
    originals = dict(method.encoders.items())
    wrapped = {m: CachedEncoder(e) for m, e in originals.items()}
    try:
        for m, w in wrapped.items():
            method.encoders[m] = w
        yield wrapped
    finally:
        for m, e in originals.items():
            method.encoders[m] = e


def subset_batches(
    batch: Batch, encoders: Mapping[str, CachedEncoder]
) -> Iterator[tuple[frozenset[str], Batch]]:
    """(S, the batch with every modality outside S absent) for each proper subset S."""
    modalities = list(encoders)
    zeros = {m: encoders[m].absent(batch[m]) for m in modalities}
    full = frozenset(modalities)
    for s in subsets(modalities):
        if s != full:
            yield s, {**batch, **{m: zeros[m] for m in modalities if m not in s}}
