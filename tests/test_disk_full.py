"""A full disk (issue 14): the failing write leaves the previous files intact, removes its
temporary file and ends in one line naming the path and the space needed.

The disk really fills: each command runs in a private mount namespace with a small
tmpfs (`unshare --mount`, as root) and its files are copied out before the namespace
ends. Where no tmpfs can be mounted, the temporary file is pointed at /dev/full, whose
writes fail with the kernel's own ENOSPC.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import ROOT, run_cli

from benchmark.cli import main
from benchmark.train import runlock
from datasets import PreparedDataset
from datasets.atomic import DiskFullError, write_text
from datasets.atomic import tmp_path as temporary_name

TIMING = ("seconds", "samples_per_s", "probe_seconds")


def _can_mount_tmpfs(where: Path) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    script = f"mount -t tmpfs -o size=64k tmpfs {shlex.quote(str(where))}"
    try:
        proc = subprocess.run(
            ["unshare", "--mount", "sh", "-c", script], capture_output=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


def in_mount_namespace(script: str) -> subprocess.CompletedProcess:
    """Run shell `script` in a private mount namespace, from the checkout, with the suite
    importable (its mounts vanish with it)."""
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c", script],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=600,
    )


def in_tmpfs(size: int, mount: Path, out: Path, *cli: str) -> subprocess.CompletedProcess:
    """`python -m benchmark CLI` with a `size`-byte tmpfs on `mount`; what it left there
    is copied to `out`."""
    mount.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    command = shlex.join([sys.executable, "-m", "benchmark", *cli])
    script = (
        f"mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(mount))} || exit 99; "
        f"{command}; rc=$?; cp -a {shlex.quote(str(mount))}/. {shlex.quote(str(out))}; exit $rc"
    )
    proc = in_mount_namespace(script)
    assert proc.returncode != 99, proc.stderr
    return proc


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def run_args(results: Path, data_root: Path) -> list[str]:
    return [
        "run", "--method", "joint", "--dataset", "synth", "--epochs", "3",
        "--results", str(results), "--data-root", str(data_root),
    ]  # fmt: skip


def _error_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and stderr.strip().splitlines()[-1] == lines[0], stderr
    return lines[0]


def test_checkpoint_on_a_full_disk(tmp_path: Path, synth, data_root: Path, capsys) -> None:
    """Room for one checkpoint and a half: epoch 0's checkpoint is written, epoch 1's
    temporary copy fills the disk. One line names checkpoint.pt; epoch 0's checkpoint is
    intact, no temporary file is left, and the run resumes elsewhere to the numbers of an
    uninterrupted run."""
    reference = tmp_path / "reference"
    assert main(run_args(reference, data_root)) == 0
    (ref_run,) = (p.parent for p in reference.glob("runs/synth/joint/*/checkpoint.pt"))
    size = (ref_run / "checkpoint.pt").stat().st_size
    mount, copy = tmp_path / "mnt", tmp_path / "copy"
    run = copy / "results" / ref_run.relative_to(reference)
    if _can_mount_tmpfs(tmp_path / "probe"):
        proc = in_tmpfs(size * 3 // 2, mount, copy, *run_args(mount / "results", data_root))
        assert proc.returncode == 2, proc.stderr
        line = _error_line(proc.stderr)
        assert f"no space left for {mount / 'results' / ref_run.relative_to(reference)}" in line
    else:  # the kernel's ENOSPC through /dev/full, for epoch 1's checkpoint
        from benchmark.launch.grid import plan_grid
        from benchmark.train.engine import train_run

        def fill_disk(row: dict) -> None:
            if row["epoch"] == 0:
                os.symlink("/dev/full", temporary_name(run / "checkpoint.pt"))

        (cfg,) = plan_grid(["joint"], ["synth"], [0], {"epochs": 3}, data_root)
        with pytest.raises(DiskFullError) as info:
            train_run(cfg, copy / "results", data_root, progress=False, on_epoch=fill_disk)
        line = f"error: {info.value}"
    assert "checkpoint.pt: it needs" in line and "free there" in line and "intact" in line
    assert torch.load(run / "checkpoint.pt", weights_only=True)["epoch"] == 0
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]
    assert not (run / runlock.LOCK).exists() and not (run / "summary.json").exists()
    again = run_cli(*run_args(copy / "results", data_root))
    assert again.returncode == 0, again.stderr
    assert metrics(run) == metrics(ref_run)


def test_prepare_on_a_full_disk_keeps_the_previous_dataset(tmp_path: Path) -> None:
    """A small synth fits; preparing the full-size one over it does not: one line naming
    the directory and the space needed, and the small one is untouched."""
    if not _can_mount_tmpfs(tmp_path / "probe"):
        pytest.skip("no tmpfs can be mounted here (needs root and unshare)")
    mount, copy = tmp_path / "mnt", tmp_path / "copy"
    out = mount / "synth"
    script_size = 1 << 20
    first = ["prepare", "synth", "--out", str(out), "--set", "num_samples=200"]
    second = ["prepare", "synth", "--out", str(out)]
    mount.mkdir()
    command = " && ".join(
        shlex.join([sys.executable, "-m", "benchmark", *c]) for c in (first, ["list"])
    )
    script = (
        f"mount -t tmpfs -o size={script_size} tmpfs {shlex.quote(str(mount))} || exit 99; "
        f"{command} || exit 98; "
        f"{shlex.join([sys.executable, '-m', 'benchmark', *second])}; rc=$?; "
        f"cp -a {shlex.quote(str(mount))}/. {shlex.quote(str(copy))}; exit $rc"
    )
    copy.mkdir()
    proc = in_mount_namespace(script)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = _error_line(proc.stderr)
    assert f"no space left for {out}: it needs" in line and "free there" in line
    ds = PreparedDataset.open(copy / "synth")
    assert len(ds.labels) == 200
    assert not [p for p in (copy / "synth").iterdir() if ".tmp" in p.name]
    shutil.rmtree(copy / "synth")


def test_atomic_write_failing_removes_its_temporary_file(tmp_path: Path) -> None:
    """The writer itself, on the kernel's ENOSPC (/dev/full behind the temporary name)."""
    target = tmp_path / "summary.json"
    target.write_text("previous\n")
    os.symlink("/dev/full", temporary_name(target))
    with pytest.raises(DiskFullError) as info:
        write_text(target, "new content\n")
    assert str(target) in str(info.value) and "it needs 12 B" in str(info.value)
    assert target.read_text() == "previous\n"
    assert not os.path.lexists(temporary_name(target))
