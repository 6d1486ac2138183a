"""The training/evaluation loader: memory-mapped reads, whole batches, device-side augmentation.

A worker reads one whole batch per call (rows sorted, one fancy index per array),
picks the frames of each clip, and returns uint8 frames / float16 spectrograms as they
are stored; they cross to the device pinned and non-blocking, and `FrameAugment` turns
the frames into normalised float crops there. No media is decoded here.

Randomness is a function of (seed, epoch, batch number), never of worker scheduling:
a run gives the same batches whatever `workers` is, and a resumed run continues with
the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from datasets.augment import FrameAugment
from datasets.prepared import PreparedDataset

Batch = dict[str, torch.Tensor]


def frame_positions(
    stored: int, used: int, train: bool, rng: np.random.Generator, n: int
) -> np.ndarray:
    """Which of `stored` frames each of n clips uses: `used` segments of equal length,
    a random frame per segment in training, each segment's middle frame in evaluation."""
    used = min(used, stored)
    edges = np.linspace(0, stored, used + 1)
    lo, hi = (
        np.floor(edges[:-1]).astype(np.int64),
        np.maximum(np.floor(edges[1:]), np.floor(edges[:-1]) + 1).astype(np.int64),
    )
    if not train:
        return np.broadcast_to((lo + hi - 1) // 2, (n, used))
    return lo + np.floor(rng.random((n, used)) * (hi - lo)).astype(np.int64)


def resolve_workers(workers: int | str, device: torch.device | str) -> int:
    """Loader worker processes: an int as given; "auto" = 0 on the CPU (the cores train the
    model there) and, on CUDA, one per free core up to 8 (reading and frame picking of a
    64-clip batch take a few ms, so a handful keeps a GPU step of ~20 ms fed)."""
    if workers != "auto":
        return int(workers)
    if torch.device(device).type != "cuda":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(8, (cores or 1) - 1))


def stratified_subset(
    labels: np.ndarray, rows: np.ndarray, fraction: float, seed: int
) -> np.ndarray:
    """A fixed random `fraction` of `rows`, taken per class (at least one row per class)."""
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels[rows]):
        members = rows[labels[rows] == c]
        k = max(1, round(fraction * len(members)))
        keep.append(rng.choice(members, size=k, replace=False))
    return np.sort(np.concatenate(keep))


class _BatchReader(torch.utils.data.Dataset):
    """Indexed by (epoch, batch number, rows): returns one CPU batch dict."""

    def __init__(self, ds: PreparedDataset, frames: int, train: bool, seed: int) -> None:
        self.ds, self.frames, self.train, self.seed = ds, frames, train, seed

    def __len__(self) -> int:  # pragma: no cover - indexed through the sampler only
        return len(self.ds.labels)

    def __getitem__(self, item: tuple[int, int, np.ndarray]) -> Batch:
        epoch, number, rows = item
        rng = np.random.default_rng([self.seed, epoch, number])
        out = {
            "index": torch.from_numpy(rows),
            "label": torch.from_numpy(self.ds.labels[rows]),
        }
        for m, spec in self.ds.modalities.items():
            arr = self.ds.arrays[m]
            if spec.kind == "visual":
                pos = frame_positions(spec.shape[0], self.frames, self.train, rng, len(rows))
                values = arr[rows[:, None], pos]
            else:
                values = arr[rows]
            out[m] = torch.from_numpy(np.ascontiguousarray(values))
        return out


class _EpochSampler(torch.utils.data.Sampler):
    def __init__(
        self, rows: np.ndarray, batch_size: int, shuffle: bool, drop_last: bool, seed: int
    ) -> None:
        self.rows, self.batch_size, self.shuffle, self.drop_last, self.seed = (
            rows,
            batch_size,
            shuffle,
            drop_last,
            seed,
        )
        self.epoch = 0

    def __len__(self) -> int:
        n = len(self.rows)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[int, int, np.ndarray]]:
        rows = self.rows
        if self.shuffle:
            rows = rows[np.random.default_rng([self.seed, self.epoch]).permutation(len(rows))]
        for number in range(len(self)):
            chunk = rows[number * self.batch_size : (number + 1) * self.batch_size]
            yield self.epoch, number, np.sort(chunk)


class Loader:
    """Batches of one split (or of given rows) on `device`, augmented there when `train`."""

    def __init__(
        self,
        ds: PreparedDataset,
        rows: np.ndarray,
        batch_size: int,
        *,
        train: bool,
        augment: FrameAugment,
        seed: int,
        frames: int = 1,
        workers: int = 0,
        device: torch.device | str = "cpu",
        drop_last: bool = False,
    ) -> None:
        self.ds, self.train, self.augment, self.seed = ds, train, augment, seed
        self.device = torch.device(device)
        self.sampler = _EpochSampler(
            rows, batch_size, train, drop_last and len(rows) > batch_size, seed
        )
        pin = self.device.type == "cuda"
        self._loader = torch.utils.data.DataLoader(
            _BatchReader(ds, frames, train, seed),
            sampler=self.sampler,
            batch_size=None,
            num_workers=workers,
            pin_memory=pin,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )

    def __len__(self) -> int:
        return len(self.sampler)

    @property
    def num_samples(self) -> int:
        return len(self.sampler.rows)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """The batches of one epoch, on the device, augmented."""
        generator = None
        if self.train:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(int(np.random.default_rng([self.seed, epoch, 7]).integers(2**62)))
        for batch in self.host_batches(epoch):
            yield self.to_device(batch, generator)

    def host_batches(self, epoch: int) -> Iterator[Batch]:
        """The batches of one epoch as read (the host half of `epoch`): CPU tensors, pinned
        when the device is CUDA, frames still uint8 and unaugmented."""
        self.sampler.epoch = epoch
        yield from self._loader

    def to_device(self, batch: Batch, generator: torch.Generator | None = None) -> Batch:
        out: Batch = {}
        for key, value in batch.items():
            value = value.to(self.device, non_blocking=True)
            kind = self.ds.modalities[key].kind if key in self.ds.modalities else None
            if kind == "visual":
                value = self.augment(value, self.train, generator)
            elif kind is not None:
                value = value.float()
            out[key] = value
        return out


def make_augment(settings: dict[str, Any]) -> FrameAugment:
    """The frame transform from the run settings crop_size, crop_scale, hflip."""
    scale: Sequence[float] = settings.get("crop_scale", (0.08, 1.0))
    return FrameAugment(settings["crop_size"], scale=scale, hflip=settings.get("hflip", True))
