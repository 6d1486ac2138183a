"""Datasets: the registry, the prepared on-disk format, the loader, one module per dataset.

Importing this package registers every dataset module listed in `_DATASET_MODULES`.
"""

from __future__ import annotations

import importlib

from datasets.prepared import ModalitySpec, PreparedDataset, PreparedWriter, write_prepared
from datasets.registry import (
    DatasetError,
    DatasetSpec,
    get_dataset_spec,
    list_datasets,
    register_dataset,
)

_DATASET_MODULES = ("synth", "avdigits", "cgfashion", "cremad", "ks", "ave", "vggsound")

for _module in _DATASET_MODULES:
    importlib.import_module(f"datasets.{_module}")

__all__ = [
    "DatasetError",
    "DatasetSpec",
    "ModalitySpec",
    "PreparedDataset",
    "PreparedWriter",
    "get_dataset_spec",
    "list_datasets",
    "register_dataset",
    "write_prepared",
]
