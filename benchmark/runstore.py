"""The run store: results/runs/<dataset>/<method>/<run_id>/, every file written atomically.

A run directory holds config.json, metrics.jsonl (one line per epoch), checkpoint.pt
and, written last, summary.json. Whether a run is done is read from the filesystem:
summary.json present.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from benchmark.config import RunConfig

DEFAULT_RESULTS = "results"
CONFIG, METRICS, CHECKPOINT, SUMMARY = (
    "config.json",
    "metrics.jsonl",
    "checkpoint.pt",
    "summary.json",
)


def results_root(arg: str | None = None) -> Path:
    return Path(arg or os.environ.get("BENCH_RESULTS") or DEFAULT_RESULTS)


def run_dir(results: Path, cfg: RunConfig) -> Path:
    return results / "runs" / cfg.dataset / cfg.method / cfg.run_id


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def write_text(path: Path, text: str) -> None:
    """Write to a temporary name beside `path`, then rename: readers never see half a file."""
    tmp = _tmp(path)
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def write_metrics(directory: Path, rows: list[dict[str, Any]]) -> None:
    write_text(directory / METRICS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_metrics(directory: Path) -> list[dict[str, Any]]:
    path = directory / METRICS
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def save_checkpoint(directory: Path, state: dict[str, Any]) -> None:
    path = directory / CHECKPOINT
    tmp = _tmp(path)
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(directory: Path) -> dict[str, Any] | None:
    path = directory / CHECKPOINT
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def load_summary(directory: Path) -> dict[str, Any] | None:
    path = directory / SUMMARY
    return read_json(path) if path.is_file() else None


def iter_run_dirs(results: Path) -> Iterator[Path]:
    """Every run directory (one with a config.json) under results/runs."""
    yield from sorted(p.parent for p in (results / "runs").glob(f"*/*/*/{CONFIG}"))
