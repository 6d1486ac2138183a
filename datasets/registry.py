"""Dataset registry: a name -> how to prepare it, and its per-dataset run defaults."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class DatasetError(ValueError):
    """A user-facing dataset problem (unknown name, missing or malformed files)."""


@dataclass(frozen=True)
class DatasetSpec:
    """How to make one dataset in the prepared format.

    `prepare(out_dir, raw, options)` writes the prepared directory. `generated` datasets
    (built-in, no raw release) are prepared automatically on first use. `defaults` are
    the run settings of the fair benchmark protocol for this dataset (encoder, batch
    size, epochs, optimiser, crop size, ...). `options` are the knobs `prepare` accepts,
    with their defaults. `reads_raw`: a generated dataset whose source files `prepare`
    finds on this machine and also accepts with --raw (cgfashion).
    """

    name: str
    prepare: Callable[[Path, Path | None, dict[str, Any]], None]
    description: str
    generated: bool = False
    defaults: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    reads_raw: bool = False  # a generated dataset that may also read files given by --raw


_DATASETS: dict[str, DatasetSpec] = {}


def register_dataset(
    name: str,
    *,
    description: str,
    generated: bool = False,
    defaults: dict[str, Any] | None = None,
    options: dict[str, Any] | None = None,
    reads_raw: bool = False,
) -> Callable[[Callable], Callable]:
    """Decorator for a module's `prepare(out_dir, raw, options)` function."""

    def decorator(prepare: Callable) -> Callable:
        if name in _DATASETS:
            raise RuntimeError(f"dataset {name!r} is registered twice")
        _DATASETS[name] = DatasetSpec(
            name,
            prepare,
            description,
            generated,
            dict(defaults or {}),
            dict(options or {}),
            reads_raw,
        )
        return prepare

    return decorator


def list_datasets(pattern: str = "*") -> list[str]:
    return sorted(n for n in _DATASETS if fnmatch.fnmatch(n, pattern))


def get_dataset_spec(name: str) -> DatasetSpec:
    try:
        return _DATASETS[name]
    except KeyError:
        raise DatasetError(
            f"unknown dataset {name!r}; known datasets: {', '.join(list_datasets())}, "
            "or give the path of a prepared directory"
        ) from None
