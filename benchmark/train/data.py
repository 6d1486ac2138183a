"""Where the engine gets data: dataset references -> prepared directories -> loaders.

`--dataset` takes a registered name (looked up under the data root, generated datasets
prepared on first use) or the path of any prepared directory.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from datasets import DatasetError, PreparedDataset, get_dataset_spec, list_datasets
from datasets.loader import Loader, make_augment, resolve_workers, stratified_subset
from datasets.prepared import atomic_write_text as write_text

DEFAULT_DATA_ROOT = "data"


def data_root(arg: str | None = None) -> Path:
    return Path(arg or os.environ.get("BENCH_DATA_ROOT") or DEFAULT_DATA_ROOT)


@contextmanager
def _lock(path: Path) -> Iterator[None]:
    """An exclusive lock file, so that parallel runs prepare a dataset once."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def raw_flag() -> str:
    """How the user names the release directory: "RAW=" under `make prepare` (the Makefile
    sets BENCH_VIA_MAKE=1), else "--raw "."""
    return "RAW=" if os.environ.get("BENCH_VIA_MAKE") == "1" else "--raw "


def prepare_dataset(
    name: str,
    root: Path,
    raw: Path | None = None,
    options: Mapping[str, Any] | None = None,
    out_dir: Path | None = None,
) -> PreparedDataset:
    """Run a registered dataset's `prepare` into `out_dir` (default <root>/<name>)."""
    spec = get_dataset_spec(name)
    unknown = set(options or {}) - set(spec.options)
    if unknown:
        raise DatasetError(
            f"unknown option(s) {', '.join(sorted(unknown))} for dataset {name!r}; "
            f"its options: {', '.join(sorted(spec.options)) or 'none'}"
        )
    flag = raw_flag()
    if spec.generated and not spec.reads_raw and raw is not None:
        raise DatasetError(
            f"dataset {name!r} is generated on this machine and reads no release: "
            f"drop {flag.rstrip()}"
        )
    if not spec.generated and raw is None:
        raise DatasetError(
            f"dataset {name!r} is made from its release: give {flag}/path/to/release"
            + (f" (make prepare DATASET={name} RAW=/path/to/release)" if flag == "RAW=" else "")
        )
    if raw is not None and not Path(raw).is_dir():
        raise DatasetError(
            f"raw directory {raw} does not exist; give the release's path with {flag}DIR"
        )
    out = Path(out_dir) if out_dir else root / name
    with _lock(out.parent / f".{out.name}.lock"):
        spec.prepare(out, Path(raw) if raw else None, dict(options or {}))
        ds = PreparedDataset.open(out)
        if ds.meta.get("registered") != name:  # so that runs on it get the dataset's defaults
            write_text(out / "meta.json", json.dumps({**ds.meta, "registered": name}, indent=1))
    return PreparedDataset.open(out)


def open_dataset(ref: str, root: Path) -> tuple[PreparedDataset, dict[str, Any]]:
    """A prepared dataset and its run defaults, from a registered name or a directory."""
    if ref in list_datasets():
        spec = get_dataset_spec(ref)
        path = root / ref
        if not (path / "meta.json").is_file():
            if not spec.generated:
                raise DatasetError(
                    f"dataset {ref!r} is not prepared under {root}: run "
                    f"`make prepare DATASET={ref} RAW=/path/to/release` (or set BENCH_DATA_ROOT)"
                )
            with _lock(root / f".{ref}.lock"):
                if not (path / "meta.json").is_file():
                    start = time.monotonic()
                    print(f"{ref}: first use, generating it in {path} ...", file=sys.stderr)
                    spec.prepare(path, None, {})
                    took = time.monotonic() - start
                    print(f"{ref}: generated in {took:.0f} s", file=sys.stderr, flush=True)
        return PreparedDataset.open(path), dict(spec.defaults)
    path = Path(ref)
    if not path.exists():
        raise DatasetError(
            f"unknown dataset {ref!r}: not a registered name ({', '.join(list_datasets())}) "
            "and no such directory"
        )
    ds = PreparedDataset.open(path)
    registered = ds.meta.get("registered", ds.name)  # set by prepare, e.g. with --out
    defaults = get_dataset_spec(registered).defaults if registered in list_datasets() else {}
    return ds, dict(defaults)


class RunData:
    """The loaders of one run; also the `BatchSource` that method hooks read from."""

    def __init__(
        self, ds: PreparedDataset, settings: Mapping[str, Any], seed: int, device: torch.device
    ) -> None:
        self.ds, self.settings, self.seed, self.device = ds, dict(settings), seed, device
        self.augment = make_augment(self.settings)
        self._loaders: dict[tuple[str, float, bool], Loader] = {}
        self.train = self.loader("train", train=True)

    def loader(self, split: str, fraction: float = 1.0, train: bool = False) -> Loader:
        key = (split, fraction, train)
        if key not in self._loaders:
            rows = self.ds.splits[split]
            if fraction < 1.0:
                rows = stratified_subset(self.ds.labels, rows, fraction, self.seed)
            s = self.settings
            self._loaders[key] = Loader(
                self.ds,
                rows,
                s["batch_size"] if train else s["eval_batch_size"],
                train=train,
                augment=self.augment,
                seed=self.seed,
                frames=s["frames"],
                workers=resolve_workers(s["workers"], self.device),
                device=self.device,
                drop_last=train,
            )
        return self._loaders[key]

    def batches(
        self, split: str = "train", fraction: float = 1.0, augment: bool = False
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Device batches of `split` (a fixed stratified `fraction` of it); `augment=True`
        reads it as the training loader does (augmentation, shuffling, training batch
        size), otherwise with the evaluation transform in order."""
        return self.loader(split, fraction, augment).epoch(0)
