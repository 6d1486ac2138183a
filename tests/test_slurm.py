"""Grids as Slurm job arrays through submitit, against a REAL single-node cluster.

The session fixture `slurm_cluster` (conftest.py) starts munged, MariaDB, slurmdbd,
slurmctld and slurmd from slurm/testcluster/; every test here submits real jobs through
`python -m benchmark run --launcher slurm` and reads what they wrote. Nothing is mocked.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import ROOT, run_cli, tree

from benchmark.launch.grid import plan_grid
from benchmark.launch.slurm_profiles import PROFILE_KEYS, load_profile
from benchmark.train.runstore import run_dir

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

EPOCH_SECONDS: list[float] = []  # measured per-epoch times, to size the time-limit test


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def records(results: Path) -> list[dict[str, Any]]:
    paths = sorted((results / "slurm").glob("*/*/submission.json"))
    return [json.loads(p.read_text()) | {"dir": p.parent} for p in paths]


def status(results: Path) -> list[dict[str, Any]]:
    out = run_cli("status", "--json", "--results", str(results))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def squeue() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True)
    return out.stdout.split()


@contextmanager
def release_requeued_jobs() -> Iterator[None]:
    """Slurm holds a requeued job for two minutes (reason BeginTime) before it may start
    again; on the test cluster, let such jobs start at once, as an admin could."""
    stop = threading.Event()

    def release() -> None:
        while not stop.wait(1.0):
            out = subprocess.run(
                ["squeue", "-h", "-t", "PENDING", "-o", "%i %r"], capture_output=True, text=True
            )
            for job in (line.split()[0] for line in out.stdout.splitlines() if "BeginTime" in line):
                subprocess.run(["scontrol", "update", f"jobid={job}", "StartTime=now"])

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def run_args(results: Path, data_root: Path, *args: str) -> list[str]:
    return ["run", *args, "--results", str(results), "--data-root", str(data_root)]


def test_profiles_load_typed_and_example_is_valid():
    example = load_profile("example")
    assert example.gpus_per_task == 1 and example.timeout_min == 240
    params = example.executor_parameters()
    assert params["slurm_partition"] == "gpu" and params["slurm_gpus_per_task"] == 1
    assert params["slurm_array_parallelism"] == example.array_parallelism
    local = load_profile("local")
    assert local.partition == "debug" and "slurm_gpus_per_task" not in local.executor_parameters()
    assert "partition" in PROFILE_KEYS and "name" not in PROFILE_KEYS


def test_bad_profiles_fail_in_one_line_before_submitting(slurm_cluster, synth, data_root, tmp_path):
    results = tmp_path / "results"
    typo = tmp_path / "typo.yaml"
    typo.write_text("partition: debug\npartiton: gpu\n")
    out = run_cli(
        *run_args(results, data_root, "--method", "joint", "--dataset", "synth"),
        "--launcher", "slurm", "--profile", str(typo),
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1, out.stderr
    assert "unknown key 'partiton'" in out.stderr and "valid keys: partition" in out.stderr

    nowhere = tmp_path / "nowhere.yaml"
    nowhere.write_text("partition: gpu-a100\ncpus_per_task: 1\n")
    out = run_cli(
        *run_args(results, data_root, "--method", "joint", "--dataset", "synth"),
        "--launcher", "slurm", "--profile", str(nowhere),
    )  # fmt: skip
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1, out.stderr
    assert "partition 'gpu-a100'" in out.stderr and "partitions: debug" in out.stderr
    assert tree(results) == [] and squeue() == []


def test_grid_is_one_array_a_raising_task_is_reported_and_relaunch_runs_only_it(
    slurm_cluster, synth, data_root, tmp_path
):
    results = tmp_path / "results"
    grid = ("--method", "joint", "ogm_ge", "--dataset", "synth", "--seeds", "0", "1")
    configs = plan_grid(["joint", "ogm_ge"], ["synth"], [0, 1], {"epochs": 2}, data_root)
    # One run's code raises at run time: its checkpoint.pt is not a checkpoint.
    broken = run_dir(results, configs[1])
    broken.mkdir(parents=True)
    (broken / "checkpoint.pt").write_bytes(b"not a checkpoint")

    args = run_args(results, data_root, *grid, "--epochs", "2")
    out = run_cli(*args, "--launcher", "slurm", "--profile", "local", "--wait")
    assert out.returncode == 1, out.stdout + out.stderr
    [record] = records(results)
    array = record["slurm_job_id"]
    assert f"as Slurm job array {array}" in out.stdout
    assert [t["job_id"] for t in record["tasks"]] == [f"{array}_{i}" for i in range(4)]
    # The raising task: its exception and log path are reported; the log holds the traceback.
    match = re.search(r"FAILED joint/synth/seed 1 \(job (\S+)\): (.*)", out.stderr)
    assert match and match.group(1) == f"{array}_1", out.stderr
    log = Path(re.search(r"log: (\S+)", out.stderr).group(1))
    assert log.is_file() and "Traceback" in log.read_text()
    assert match.group(2).strip() in log.read_text()  # the exception's last line
    # The others finished, as tasks of that one array.
    for i, cfg in enumerate(configs):
        directory = run_dir(results, cfg)
        if cfg == configs[1]:
            assert not (directory / "summary.json").exists()
            continue
        assert (directory / "summary.json").is_file()
        [job] = json.loads((directory / "config.json").read_text())["jobs"]
        assert job["slurm_array_job_id"] == array and job["slurm_array_task_id"] == str(i)
        EPOCH_SECONDS.extend(
            json.loads(line)["seconds"] for line in (directory / "metrics.jsonl").open()
        )
    [grid_status] = status(results)
    assert (grid_status["done"], len(grid_status["failed"])) == (3, 1)
    assert grid_status["failed"][0]["log"] == str(log)

    # Relaunch after the fix: only the failed run is submitted, as a new array of one.
    (broken / "checkpoint.pt").unlink()
    out = run_cli(*args, "--launcher", "slurm", "--profile", "local", "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "3 of 4 runs are done already" in out.stdout
    second = records(results)[-1]
    assert f"1 run(s) as Slurm job {second['slurm_job_id']} " in out.stdout
    assert [t["run"] for t in second["tasks"]] == [record["tasks"][1]["run"]]
    assert all((run_dir(results, c) / "summary.json").is_file() for c in configs)
    jobs = json.loads((broken / "config.json").read_text())["jobs"]
    assert jobs[-1]["slurm_job_id"] == second["slurm_job_id"]  # one run: a plain job
    [grid_status] = status(results)
    assert (grid_status["done"], grid_status["failed"]) == (4, [])


def test_cancelled_task_is_failed_in_status_and_relaunch_resumes_it(
    slurm_cluster, synth, data_root, tmp_path
):
    results = tmp_path / "results"
    # ~0.3 s per synth epoch: enough left after the second one that the run cannot finish
    # in the seconds scancel takes (KillWait=2 in the test cluster).
    epochs = 40
    args = run_args(results, data_root, "--method", "joint", "--dataset", "synth")
    args += ["--epochs", str(epochs), "--launcher", "slurm", "--profile", "local"]
    [cfg] = plan_grid(["joint"], ["synth"], [0], {"epochs": epochs}, data_root)
    directory = run_dir(results, cfg)
    out = run_cli(*args)
    assert out.returncode == 0, out.stderr
    [record] = records(results)
    [task] = record["tasks"]

    def epochs_done() -> int:
        path = directory / "checkpoint.pt"
        return torch.load(path, weights_only=False)["epoch"] + 1 if path.is_file() else 0

    wait_until(lambda: epochs_done() >= 2, 180, "two checkpointed epochs", every=0.2)
    subprocess.run(["scancel", task["job_id"]], check=True)
    wait_until(lambda: not squeue(), 60, "the cancelled job to leave the queue")
    done = epochs_done()
    assert done < epochs, "the run finished before it was cancelled"
    before = (directory / "metrics.jsonl").read_text().splitlines()[:done]

    [grid_status] = wait_until(
        lambda: (s := status(results)) and s[0]["failed"] and s, 60, "status to say failed"
    )
    [failed] = grid_status["failed"]
    assert failed["job_id"] == task["job_id"] and failed["state"].startswith("CANCELLED")
    assert Path(failed["log"]).is_file()
    text = run_cli("status", "--results", str(results)).stdout
    assert f"FAILED joint/synth/seed 0 (job {task['job_id']}): CANCELLED" in text
    assert "log: " in text and "relaunch" in text

    out = run_cli(*args, "--wait")
    assert out.returncode == 0, out.stdout + out.stderr
    second = records(results)[-1]
    assert f"1 run(s) as Slurm job {second['slurm_job_id']} " in out.stdout
    log = Path(second["dir"]) / second["tasks"][0]["job_id"]
    err = next(log.glob("*_log.err")).read_text()
    assert "resuming from checkpoint.pt" in err
    first_epoch = int(re.search(r"epoch (\d+)/", err).group(1))
    assert first_epoch == done + 1  # the first epoch it trained is the one after the checkpoint
    rows = (directory / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in rows] == list(range(epochs))
    assert rows[:done] == before  # the epochs before the kill are kept byte for byte
    assert len(json.loads((directory / "config.json").read_text())["jobs"]) == 2
    EPOCH_SECONDS.extend(json.loads(r)["seconds"] for r in rows)
    assert status(results)[0]["done"] == 1


def test_task_at_its_time_limit_is_requeued_and_completes(
    slurm_cluster, synth, data_root, tmp_path
):
    # Slurm sends USR2 `signal_delay_s` before the 1-minute limit, rounded to its 30 s
    # check: 15-45 s after the start, i.e. after at most ~40 s of training. Size the run
    # to about 60 s of training at the fastest epoch speed measured above, so that it
    # cannot finish before the first signal.
    per_epoch = min(EPOCH_SECONDS) if EPOCH_SECONDS else 1.0
    epochs = min(300, max(30, round(60 / per_epoch)))
    profile = tmp_path / "short.yaml"
    profile.write_text(
        "partition: debug\ncpus_per_task: 1\ntimeout_min: 1\nsignal_delay_s: 15\n"
        "max_num_timeout: 20\narray_parallelism: 1\n"
    )
    results = tmp_path / "results"
    with release_requeued_jobs():
        out = run_cli(
            *run_args(results, data_root, "--method", "joint", "--dataset", "synth"),
            "--epochs", str(epochs), "--launcher", "slurm", "--profile", str(profile), "--wait",
            timeout=900,
        )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    [cfg] = plan_grid(["joint"], ["synth"], [0], {"epochs": epochs}, data_root)
    directory = run_dir(results, cfg)
    assert json.loads((directory / "summary.json").read_text())["epochs"] == epochs
    rows = [json.loads(r) for r in (directory / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(epochs))  # each epoch exactly once
    jobs = json.loads((directory / "config.json").read_text())["jobs"]
    assert len(jobs) >= 2, f"never requeued ({epochs} epochs of ~{per_epoch:.1f} s)"
    assert jobs[-1]["slurm_restart_count"] == str(len(jobs) - 1)
    [record] = records(results)
    logs = sorted((Path(record["dir"]) / record["tasks"][0]["job_id"]).glob("*_log.*"))
    log = "".join(p.read_text() for p in logs)
    assert "Caught signal SIGUSR2" in log and "Requeued job" in log
    assert log.count("resuming from checkpoint.pt") == len(jobs) - 1


def test_local_launcher_runs_the_grid_in_processes(synth, data_root, tmp_path):
    results = tmp_path / "results"
    out = run_cli(
        *run_args(results, data_root, "--method", "joint", "--dataset", "synth"),
        "--seeds", "0", "1", "--epochs", "1", "--launcher", "local", "--profile", "local",
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "2 at once" in out.stdout
    [record] = records(results)
    assert record["launcher"] == "local" and len(record["tasks"]) == 2
    for cfg in plan_grid(["joint"], ["synth"], [0, 1], {"epochs": 1}, data_root):
        [job] = json.loads((run_dir(results, cfg) / "config.json").read_text())["jobs"]
        assert job["launcher"] == "local" and job["job_id"] in {
            t["job_id"] for t in record["tasks"]
        }
    [grid_status] = status(results)
    assert grid_status["done"] == 2


def test_make_sweep_passes_launcher_and_profile():
    out = subprocess.run(
        ["make", "-n", "sweep", "LAUNCHER=slurm", "PROFILE=local", "EPOCHS=3"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    command = out.stdout.replace("\\\n", " ")  # join the recipe's continued lines
    line = next(x for x in command.splitlines() if "-m benchmark run" in x)
    assert "--launcher slurm" in line and "--profile local" in line and "--epochs 3" in line


def test_run_lock_of_an_ended_slurm_job_is_taken_over_a_live_one_is_not(slurm_cluster, tmp_path):
    """A lock held by a Slurm job on another host: respected while squeue lists the job,
    taken over (with a note naming its final state) once the job has ended."""
    from benchmark.train import runlock

    def submit(command: str) -> str:
        out = subprocess.run(
            ["sbatch", "--parsable", "-o", str(tmp_path / "%j.out"), "--wrap", command],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip().split(";")[0]

    def locked_by(job: str, name: str) -> Path:
        run = tmp_path / name
        run.mkdir()
        holder = runlock.Holder("node-elsewhere", 4242, "2026-12-01T10:00:00", "t0k", job)
        (run / runlock.LOCK).write_text(json.dumps(holder.__dict__))
        return run

    live = submit("sleep 300")
    try:
        run = locked_by(live, "live")
        with pytest.raises(runlock.RunLocked) as info:
            runlock.acquire(run)
        assert info.value.holder.slurm_job_id == live
    finally:
        subprocess.run(["scancel", live], check=True)
    ended = submit("true")
    wait_until(lambda: ended not in squeue(), 60, "the short job to end")
    run = locked_by(ended, "ended")
    notes: list[str] = []
    mine = runlock.acquire(run, notes.append)
    assert runlock.read_holder(run / runlock.LOCK) == mine
    assert len(notes) == 1 and f"Slurm job {ended} is no longer running" in notes[0]
