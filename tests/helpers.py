"""Helpers shared by the tests (imported as `helpers`; pytest puts tests/ on sys.path)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT, timeout: int = 600):
    """Run `python -m benchmark ARGS` in a fresh process; return the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "benchmark", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=cwd,
        timeout=timeout,
    )


def tree(path: Path) -> list[str]:
    """Every file under `path` (relative), for 'nothing was written' checks."""
    if not path.exists():
        return []
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file())


SMALL_SHAPES = {"audio": (1, 16, 16), "visual": (2, 16, 16, 3)}


def make_method(
    name: str,
    hp: dict | None = None,
    *,
    seed: int = 0,
    modalities: tuple[str, ...] = ("audio", "visual"),
    classes: int = 6,
    settings: dict | None = None,
    epochs: int = 3,
):
    """A registered method on small CNN encoders (16 x 16 inputs), on the CPU. The first
    modality is audio, the others visual; `settings` override the run defaults."""
    import torch

    from benchmark.train.config import RUN_DEFAULTS
    from methods import RunContext, create_encoder, create_method

    torch.manual_seed(seed)
    kinds = {m: "audio" if i == 0 else "visual" for i, m in enumerate(modalities)}
    encoders = {m: create_encoder("small", kinds[m], SMALL_SHAPES[kinds[m]]) for m in modalities}
    run = {**RUN_DEFAULTS, "encoder": "small", "device": "cpu", **(settings or {})}
    ctx = RunContext(torch.device("cpu"), epochs, 5, kinds, run, 0)
    return create_method(name, encoders, classes, hp or {}, ctx)


def make_batch(n: int = 8, seed: int = 0, classes: int = 6, dtype=None) -> dict:
    """A random batch for `make_method` models: audio [n,1,16,16], one visual frame."""
    import torch

    g = torch.Generator().manual_seed(seed)
    dtype = dtype or torch.float32
    return {
        "audio": torch.randn(n, 1, 16, 16, generator=g, dtype=dtype),
        "visual": torch.randn(n, 1, 3, 16, 16, generator=g, dtype=dtype),
        "label": torch.randint(0, classes, (n,), generator=g),
        "index": torch.arange(n),
    }


class FixedSource:
    """A BatchSource (what method hooks read) that yields given batches and records the
    (split, fraction, augment) it was asked for."""

    def __init__(self, batches: list[dict]):
        self._batches = batches
        self.calls: list[tuple] = []

    def batches(self, split="train", fraction=1.0, augment=False):
        self.calls.append((split, fraction, augment))
        yield from self._batches
