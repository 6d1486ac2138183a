"""The engine: bit-identical seeded CPU runs, resume after a kill, finished runs skipped."""

import json
import signal
import subprocess
import sys
import time

from helpers import ROOT, run_cli

TIMING = ("seconds", "samples_per_s", "probe_seconds")


def metrics(results):
    (path,) = results.glob("runs/synth/joint/*/metrics.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def run_args(results, data_root, epochs=3):
    return [
        "run",
        "--method",
        "joint",
        "--dataset",
        "synth",
        "--epochs",
        str(epochs),
        "--results",
        str(results),
        "--data-root",
        str(data_root),
    ]


def test_seeded_runs_are_identical_and_finished_runs_skipped(tmp_path, synth, data_root):
    a, b = tmp_path / "a", tmp_path / "b"
    assert run_cli(*run_args(a, data_root, 2)).returncode == 0
    assert run_cli(*run_args(b, data_root, 2)).returncode == 0
    assert metrics(a) == metrics(b)
    assert len(metrics(a)) == 2
    (summary,) = a.glob("runs/synth/joint/*/summary.json")
    before = summary.stat().st_mtime_ns
    proc = run_cli(*run_args(a, data_root, 2))
    assert proc.returncode == 0
    assert summary.stat().st_mtime_ns == before  # skipped, not retrained
    assert "epoch" not in proc.stderr
    assert "done already" in proc.stderr


def test_killed_run_resumes_with_identical_metrics(tmp_path, synth, data_root):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    assert run_cli(*run_args(reference, data_root, 4)).returncode == 0

    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmark", *run_args(killed, data_root, 4)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    checkpoints = []
    while time.monotonic() < deadline and proc.poll() is None:
        checkpoints = list(killed.glob("runs/synth/joint/*/checkpoint.pt"))
        if checkpoints:  # epoch 0 is done and saved; epoch 1 is under way
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    run = checkpoints[0].parent
    assert not (run / "summary.json").exists()
    done_before = len(metrics(killed))
    assert 1 <= done_before < 4

    assert run_cli(*run_args(killed, data_root, 4)).returncode == 0
    assert metrics(killed) == metrics(reference)
    assert [r["epoch"] for r in metrics(killed)] == [0, 1, 2, 3]
