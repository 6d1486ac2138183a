"""Shared fixtures: a session-wide data root with the generated datasets, CLI helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Prepared datasets shared by the whole session (generated ones made on first use)."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture(scope="session")
def synth(data_root: Path):
    from benchmark.data import open_dataset

    ds, _ = open_dataset("synth", data_root)
    return ds
