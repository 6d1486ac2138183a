"""The run store's reliability: identity from data, one writer per run, damaged files,
safe checkpoints, runs of older code (issue 14). Real prepared data, real processes."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import ROOT, run_cli, tree
from test_prepared import write_by_hand

from benchmark.cli import main
from benchmark.launch.grid import plan_grid
from benchmark.train import runlock, runstore
from benchmark.train.engine import build_method, resolve_device, set_rng_state, train_run
from benchmark.train.fingerprint import data_fingerprint
from datasets import PreparedDataset
from methods import list_methods

TIMING = ("seconds", "samples_per_s", "probe_seconds")
EPOCHS = 4


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in rows]


def args(results: Path, data_root: Path, *extra: str, dataset: str = "synth") -> list[str]:
    return [
        "run", "--method", "joint", "--dataset", dataset, "--epochs", str(EPOCHS),
        "--results", str(results), "--data-root", str(data_root), *extra,
    ]  # fmt: skip


def the_run(results: Path) -> Path:
    (run,) = (p.parent for p in results.glob("runs/*/joint/*/config.json"))
    return run


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, synth, data_root: Path) -> Path:
    """One uninterrupted run: what every interrupted, raced or repaired run must equal."""
    results = tmp_path_factory.mktemp("reference")
    assert main(args(results, data_root)) == 0
    return the_run(results)


def interrupted(results: Path, data_root: Path, after_epoch: int = 1) -> Path:
    """A run stopped (as by a crash) right after epoch `after_epoch` was checkpointed."""
    (cfg,) = plan_grid(["joint"], ["synth"], [0], {"epochs": EPOCHS}, data_root)

    def stop(row: dict) -> None:
        if row["epoch"] == after_epoch:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_run(cfg, results, data_root, progress=False, on_epoch=stop)
    run = runstore.run_dir(results, cfg)
    assert not (run / "summary.json").exists() and not (run / runlock.LOCK).exists()
    return run


# ---------------------------------------------------------------- identity


def _fingerprint(root: Path) -> str:
    ds = PreparedDataset.open(root)
    return data_fingerprint(ds.root, ds.meta)


def _prepare(out: Path, option: str) -> None:
    proc = run_cli("prepare", "synth", "--out", str(out), "--set", option)
    assert proc.returncode == 0, proc.stderr


def test_same_name_other_data_gets_its_own_run(tmp_path: Path, reference: Path, data_root):
    """An audio-only and a visual-only copy of synth, both renamed "avd" by hand: the
    second is trained, not served the first one's result. Preparing the same directory
    again with the same options keeps its fingerprint (and so its run ids)."""
    audio_only, visual_only = tmp_path / "audio", tmp_path / "visual"
    _prepare(audio_only, "visual_info=0")
    first_fingerprint = _fingerprint(audio_only)
    _prepare(audio_only, "visual_info=0")
    assert _fingerprint(audio_only) == first_fingerprint
    _prepare(visual_only, "audio_info=0")
    for root in (audio_only, visual_only):
        meta = json.loads((root / "meta.json").read_text())
        (root / "meta.json").write_text(json.dumps({**meta, "name": "avd"}))
    results = tmp_path / "results"
    first = run_cli(*args(results, data_root, "--epochs", "1", dataset=str(audio_only)))
    second = run_cli(*args(results, data_root, "--epochs", "1", dataset=str(visual_only)))
    assert first.returncode == 0 and second.returncode == 0, second.stderr
    assert "done already" not in second.stderr and "epoch 1/1" in second.stderr
    runs = sorted(results.glob("runs/avd/joint/*/summary.json"))
    assert len(runs) == 2
    configs = [json.loads((p.parent / "config.json").read_text()) for p in runs]
    assert configs[0]["data_fingerprint"] != configs[1]["data_fingerprint"]
    reference_config = json.loads((reference / "config.json").read_text())
    assert reference_config["data_fingerprint"] == _fingerprint(data_root / "synth")


# ---------------------------------------------------------------- one writer per run


def _popen(cmd_args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "benchmark", *cmd_args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path_glob, results: Path, proc: subprocess.Popen, timeout: float = 120) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(results.glob(path_glob))
        if found:
            return found[0]
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    raise AssertionError(f"{path_glob} did not appear")


def test_two_processes_race_the_second_defers(tmp_path: Path, reference: Path, data_root):
    results = tmp_path / "results"
    first = _popen(args(results, data_root))
    _wait_for(f"runs/synth/joint/*/{runlock.LOCK}", results, first)
    second = run_cli(*args(results, data_root))
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert second.returncode == 0, second.stderr
    busy = [line for line in second.stderr.splitlines() if "being trained by" in line]
    assert len(busy) == 1 and f"pid {first.pid} on {socket.gethostname()}" in busy[0]
    assert "not started" in busy[0] and "epoch 1/" not in second.stderr
    assert "being trained by" in second.stdout  # the table's row for that run
    run = the_run(results)
    assert metrics(run) == metrics(reference)
    assert not (run / runlock.LOCK).exists()


def test_killed_holder_lock_is_taken_over(tmp_path: Path, reference: Path, data_root):
    results = tmp_path / "results"
    proc = _popen(args(results, data_root))
    _wait_for("runs/synth/joint/*/checkpoint.pt", results, proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    run = the_run(results)
    holder = runlock.read_holder(run / runlock.LOCK)
    assert holder is not None and holder.pid == proc.pid  # left behind by the killed run
    again = run_cli(*args(results, data_root))
    assert again.returncode == 0, again.stderr
    note = [line for line in again.stderr.splitlines() if "took over the lock" in line]
    assert len(note) == 1 and f"process {proc.pid}" in note[0] and "dead" in note[0]
    assert metrics(run) == metrics(reference)
    assert not (run / runlock.LOCK).exists()


def test_lock_of_another_host_is_respected(tmp_path: Path):
    """A holder on another host without a Slurm job cannot be checked: it counts as live,
    and the error names the lock file."""
    run = tmp_path / "run"
    run.mkdir()
    other = runlock.Holder("node-elsewhere", 4242, "2026-12-01T10:00:00+00:00", "abc")
    (run / runlock.LOCK).write_text(json.dumps(other.__dict__))
    with pytest.raises(runlock.RunLocked) as info:
        runlock.acquire(run)
    assert info.value.holder == other
    runlock.release(run, runlock.me())  # not ours: left alone
    assert runlock.read_holder(run / runlock.LOCK) == other


# ---------------------------------------------------------------- damaged files


def _one_error_line(capsys: pytest.CaptureFixture) -> str:
    lines = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0] == lines[-1], lines
    return errors[0]


def test_truncated_checkpoint_is_one_line_then_restart(
    tmp_path: Path, reference: Path, data_root, capsys: pytest.CaptureFixture
):
    results = tmp_path / "results"
    run = interrupted(results, data_root)
    checkpoint = run / "checkpoint.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    capsys.readouterr()
    assert main(args(results, data_root)) == 2
    line = _one_error_line(capsys)
    assert str(checkpoint) in line and "cannot be read" in line and "--restart" in line
    assert not (run / runlock.LOCK).exists()
    assert main(args(results, data_root, "--restart")) == 0
    assert metrics(run) == metrics(reference)


@pytest.mark.parametrize(
    "damage",
    ["summary not json", "summary incomplete", "metrics middle line", "checkpoint foreign"],
)
def test_damaged_file_is_one_line_exit_2(
    damage: str, tmp_path: Path, reference: Path, data_root, capsys: pytest.CaptureFixture
):
    results = tmp_path / "results"
    shutil.copytree(reference.parents[3], results)
    run = the_run(results)
    if damage == "summary not json":
        (run / "summary.json").write_text('{"method": "joint", ')
        name, problem = "summary.json", "not valid JSON"
    elif damage == "summary incomplete":
        (run / "summary.json").write_text('{"method": "joint"}')
        name, problem = "summary.json", "lacks"
    elif damage == "metrics middle line":
        (run / "summary.json").unlink()
        lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
        (run / "metrics.jsonl").write_text("".join([lines[0], "{oops\n", *lines[1:]]))
        name, problem = "metrics.jsonl", "line 2 is not a metrics record"
    else:  # a pickle that would run code when loaded without weights_only
        (run / "summary.json").unlink()
        torch.save({"epoch": 1, "method": {}, "rng": {}, "evil": Path("/")}, run / "checkpoint.pt")
        name, problem = "checkpoint.pt", "cannot be read safely"
    before = {p: p.read_bytes() for p in run.iterdir()}
    capsys.readouterr()
    assert main(args(results, data_root)) == 2
    line = _one_error_line(capsys)
    assert f"{run / name}: {problem}" in line and "--restart" in line
    assert {p: p.read_bytes() for p in run.iterdir()} == before  # nothing touched
    assert main(args(results, data_root, "--restart")) == 0
    assert metrics(run) == metrics(reference)
    assert json.loads((run / "summary.json").read_text())["status"] == "done"


def test_truncated_last_metrics_line_is_dropped_and_the_run_resumes(
    tmp_path: Path, reference: Path, data_root, capsys: pytest.CaptureFixture
):
    results = tmp_path / "results"
    run = interrupted(results, data_root)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"epoch": 2, "lr": 0.00')  # the crash came mid-line
    capsys.readouterr()
    assert main(args(results, data_root)) == 0
    err = capsys.readouterr().err
    assert "dropped a truncated last line (line 3)" in err
    assert "epoch 3/4" in err and "epoch 1/4" not in err  # resumed after epoch 1
    assert metrics(run) == metrics(reference)


# ---------------------------------------------------------------- safe checkpoints


@pytest.mark.parametrize("method", list_methods())
def test_every_method_checkpoint_loads_with_weights_only(
    method: str, tmp_path: Path, synth, data_root: Path
):
    (cfg,) = plan_grid([method], ["synth"], [0], {"epochs": 1, "batch_size": 32}, data_root)
    train_run(cfg, tmp_path, data_root, progress=False)
    path = runstore.run_dir(tmp_path, cfg) / "checkpoint.pt"
    state = torch.load(path, map_location="cpu", weights_only=True)
    fresh = build_method(cfg, synth, resolve_device("cpu"), steps_per_epoch=1)
    fresh.load_training_state(state["method"])
    set_rng_state(state["rng"])
    assert state["epoch"] == 0


# ---------------------------------------------------------------- older code


def test_runs_of_older_code_are_reported_and_rerun(
    tmp_path: Path, reference: Path, data_root, capsys: pytest.CaptureFixture
):
    """A finished run whose recorded code fingerprint differs is 'done with older code'
    in run, status and report; --rerun-stale retrains it with this code."""
    results = tmp_path / "results"
    shutil.copytree(reference.parents[3], results)
    run = the_run(results)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "code": "0ld", "commit": "abc1234f"}))
    capsys.readouterr()
    assert main(args(results, data_root)) == 0
    out, err = capsys.readouterr()
    assert "done with older code (abc1234)" in err and "--rerun-stale" in err
    assert "done with older code (abc1234)" in out
    assert main(["status", "--results", str(results)]) == 0
    assert "1 with older code (abc1234)" in capsys.readouterr().out
    assert main(["report", "--results", str(results), "--no-figures"]) == 0
    out = capsys.readouterr().out
    assert "joint (older code)" in out and "abc1234" in out
    assert main(args(results, data_root, "--rerun-stale")) == 0
    assert "epoch 4/4" in capsys.readouterr().err
    assert metrics(run) == metrics(reference)
    assert runstore.older_code(run) is None


def test_committed_results_load_in_report_as_current_code(tmp_path: Path):
    """The committed sweep reports, and was made by this code: no row is older code (the
    code fingerprint of each run's method matches; tests/test_committed_results.py checks
    the numbers themselves)."""
    committed = ROOT / "results" / "runs"
    if not any(committed.glob("*/*/*/summary.json")):
        pytest.skip("no committed runs in this checkout")
    results = tmp_path / "results"
    shutil.copytree(committed, results / "runs")
    proc = run_cli("report", "--results", str(results), "--no-figures")
    assert proc.returncode == 0, proc.stderr
    assert "(older code)" not in proc.stdout and "done with older code" not in proc.stdout
    summaries = len(list(committed.glob("*/*/*/summary.json")))
    assert f"{summaries} run(s)" in proc.stdout
    assert tree(results / "runs") == tree(committed)


def test_data_fingerprint_reads_a_few_mib_only(tmp_path: Path) -> None:
    """A sparse 6 GB modality array is fingerprinted from its edges in well under a second."""
    root = write_by_hand(tmp_path / "big")
    meta = json.loads((root / "meta.json").read_text())
    with open(root / "camera.npy", "r+b") as fh:
        fh.truncate(6 << 30)  # sparse: no disk used
    start = time.perf_counter()
    first = data_fingerprint(root, meta)
    assert time.perf_counter() - start < 2.0
    np.save(root / "labels.npy", np.arange(48, dtype=np.int64) % 2)
    assert data_fingerprint(root, meta) != first


def test_code_fingerprint_is_per_method(tmp_path):
    """A run's code fingerprint covers the shared sources and its own method's modules
    (with their base classes): a new or edited method file stales only its own runs."""
    import shutil

    from benchmark.train.fingerprint import code_files, code_fingerprint

    agm = {p.relative_to(ROOT).as_posix() for p in code_files("agm")}
    assert {"methods/agm.py", "methods/joint.py", "methods/parts/base.py"} <= agm
    assert {"methods/parts/fusion.py", "benchmark/train/engine.py"} <= agm
    assert not agm & {"methods/mie.py", "methods/pmr.py", "methods/__init__.py"}
    root = tmp_path / "checkout"
    for sub in ("methods", "benchmark", "datasets"):
        shutil.copytree(ROOT / sub, root / sub)
    before = {m: code_fingerprint(m, root) for m in ("agm", "mie")}
    assert before["agm"] != before["mie"]
    (root / "methods" / "mie.py").write_text((ROOT / "methods/mie.py").read_text() + "\nX = 1\n")
    (root / "methods" / "newmethod.py").write_text("Y = 2\n")
    code_fingerprint.cache_clear()
    assert code_fingerprint("agm", root) == before["agm"]
    assert code_fingerprint("mie", root) != before["mie"]
