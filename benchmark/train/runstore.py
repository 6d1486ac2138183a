"""The run store: results/runs/<dataset>/<method>/<run_id>/, every file written atomically.

A run directory holds config.json, metrics.jsonl (one line per epoch), checkpoint.pt
and, written last, summary.json; while a process trains it, also `.lock` (runlock.py).
Whether a run is done is read from the filesystem: summary.json present. Whether it
was done by this code is read from the code fingerprint its summary.json (or, for runs
of older versions, config.json) records.

Reading never ends in a traceback: a file that cannot be read raises `DamagedRunFile`,
one line naming the file, what is wrong with it and the fix. The one exception is a
truncated last line of metrics.jsonl (a crash mid-write where renames are not atomic):
it is dropped with a note and the run resumes from its checkpoint. Checkpoints hold
tensors and plain Python values only and are loaded with ``weights_only=True``, so
opening a results tree from elsewhere cannot run code.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from benchmark.errors import UserError
from benchmark.train.config import RunConfig
from benchmark.train.fingerprint import code_fingerprint
from datasets import atomic

DEFAULT_RESULTS = "results"
CONFIG, METRICS, CHECKPOINT, SUMMARY = (
    "config.json",
    "metrics.jsonl",
    "checkpoint.pt",
    "summary.json",
)
RESTART_FIX = "run the same command with --restart to train this run again from scratch"
SUMMARY_KEYS = ("method", "dataset", "seed", "status", "best_epoch", "epochs", "heads")


class DamagedRunFile(UserError):
    """A run's file that cannot be read: the file, what is wrong, and the fix."""

    def __init__(self, path: Path, problem: str, fix: str = RESTART_FIX) -> None:
        super().__init__(f"{path}: {problem}; {fix}")
        self.path = path


def results_root(arg: str | None = None) -> Path:
    return Path(arg or os.environ.get("BENCH_RESULTS") or DEFAULT_RESULTS)


def run_dir(results: Path, cfg: RunConfig) -> Path:
    return results / "runs" / cfg.dataset / cfg.method / cfg.run_id


def write_text(path: Path, text: str) -> None:
    """Write to a temporary name beside `path`, then rename: readers never see half a file
    (on a full disk: DiskFullError, the previous file intact, the temporary one removed)."""
    atomic.write_text(path, text)


def write_json(path: Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=1, sort_keys=False, default=str) + "\n")


def _first_line(exc: BaseException) -> str:
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= 160 else text[:157] + "..."


def read_json(path: Path) -> Any:
    """A JSON file's content; DamagedRunFile when it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise DamagedRunFile(path, f"not valid JSON ({_first_line(exc)})") from None


def write_metrics(directory: Path, rows: list[dict[str, Any]]) -> None:
    write_text(directory / METRICS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def read_metrics(
    directory: Path, note: Callable[[str], None] | None = None
) -> list[dict[str, Any]]:
    """The rows of metrics.jsonl ([] when absent). A truncated last line is dropped (and
    `note` told); any other unreadable line raises DamagedRunFile."""
    path = directory / METRICS
    if not path.is_file():
        return []
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise DamagedRunFile(path, "is not UTF-8 text") from None
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
                raise ValueError("not an object with an integer epoch")
        except ValueError as exc:
            if number == len(lines) and not text.endswith("\n"):
                if note is not None:
                    note(f"{path}: dropped a truncated last line (line {number})")
                break
            raise DamagedRunFile(
                path, f"line {number} is not a metrics record ({_first_line(exc)})"
            ) from None
        rows.append(row)
    return rows


def save_checkpoint(directory: Path, state: dict[str, Any]) -> None:
    """Save `state` (tensors and plain values only) as checkpoint.pt, atomically."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic.write_bytes(directory / CHECKPOINT, buffer.getvalue())


def load_checkpoint(directory: Path) -> dict[str, Any] | None:
    """checkpoint.pt (None when absent), read with weights_only=True: it cannot run code.
    DamagedRunFile when it is truncated, corrupt, or holds anything but tensors and plain
    values (a checkpoint of an older version of the suite, or not one of ours)."""
    path = directory / CHECKPOINT
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ...
        raise DamagedRunFile(path, f"cannot be read safely ({_first_line(exc)})") from None
    if not isinstance(state, dict) or not {"epoch", "method", "rng"} <= set(state):
        raise DamagedRunFile(path, "is not a checkpoint of this suite (no epoch/method/rng)")
    return state


def load_summary(directory: Path) -> dict[str, Any] | None:
    """summary.json (None when absent); DamagedRunFile when unreadable or incomplete."""
    path = directory / SUMMARY
    if not path.is_file():
        return None
    summary = read_json(path)
    if not isinstance(summary, dict):
        raise DamagedRunFile(path, "is not a JSON object")
    missing = [k for k in SUMMARY_KEYS if k not in summary]
    if missing:
        raise DamagedRunFile(path, f"lacks {', '.join(missing)}")
    return summary


def run_method(directory: Path, summary: dict[str, Any] | None = None) -> str | None:
    """The method a run directory belongs to (summary.json or config.json)."""
    method = (summary or {}).get("method")
    if method is None:
        try:
            method = read_json(directory / CONFIG).get("method")
        except (OSError, DamagedRunFile, AttributeError):
            return None
    return method if isinstance(method, str) else None


def run_code(directory: Path, summary: dict[str, Any] | None = None) -> tuple[str | None, str]:
    """(code fingerprint, short commit) a run was made with; the fingerprint is None for
    runs of versions that did not record one, the commit "unknown commit" when neither
    file names it."""
    summary = summary if summary is not None else {}
    fingerprint, commit = summary.get("code"), summary.get("commit")
    if fingerprint is None or commit is None:
        try:
            config = read_json(directory / CONFIG)
        except (OSError, DamagedRunFile):
            config = {}
        code = config.get("code") or {}
        fingerprint = fingerprint or code.get("fingerprint")
        commit = commit or code.get("commit") or (config.get("environment") or {}).get("git_commit")
    return fingerprint, (str(commit)[:7] if commit else "unknown commit")


def older_code(directory: Path, summary: dict[str, Any] | None = None) -> str | None:
    """None when the run was made by this code; else the short commit it was made with."""
    fingerprint, commit = run_code(directory, summary)
    return None if fingerprint == code_fingerprint(run_method(directory, summary)) else commit


def to_train(directory: Path, restart: bool = False, rerun_stale: bool = False) -> bool:
    """Whether a launch trains this run: no summary.json, or (with `rerun_stale`) one made
    by older code, or (with `restart`) a damaged one; a damaged summary.json without
    `restart` is DamagedRunFile."""
    try:
        summary = load_summary(directory)
    except DamagedRunFile:
        if restart:
            return True
        raise
    if summary is None:
        return True
    return rerun_stale and older_code(directory, summary) is not None


def discard(directory: Path) -> None:
    """Remove a run's state (config, metrics, checkpoint, summary) so that it trains from
    scratch; the caller holds the run's lock."""
    for name in (SUMMARY, CHECKPOINT, METRICS, CONFIG):
        (directory / name).unlink(missing_ok=True)


def store_line(results: Path) -> str | None:
    """One line on the whole run store for `status`: runs done (how many with older code,
    by commit), unfinished, damaged; None when there is no run."""
    done, unfinished, damaged = 0, 0, 0
    older: dict[str, int] = {}
    for directory in iter_run_dirs(results):
        try:
            summary = load_summary(directory)
        except DamagedRunFile:
            damaged += 1
            continue
        if summary is None:
            unfinished += 1
            continue
        done += 1
        commit = older_code(directory, summary)
        if commit is not None:
            older[commit] = older.get(commit, 0) + 1
    if not done + unfinished + damaged:
        return None
    line = f"run store {results / 'runs'}: {done} done"
    if older:
        stale = sum(older.values())
        commits = ", ".join(f"{c}" for c in sorted(older))
        line += f" ({stale} with older code ({commits}): `run ... --rerun-stale` retrains them)"
    line += f", {unfinished} unfinished"
    if damaged:
        line += f", {damaged} with a damaged summary.json (`run ... --restart` retrains them)"
    return line


def iter_run_dirs(results: Path) -> Iterator[Path]:
    """Every run directory (one with a config.json) under results/runs."""
    yield from sorted(p.parent for p in (results / "runs").glob(f"*/*/*/{CONFIG}"))
