"""The submitit launchers: a grid as one Slurm job array, or as N local processes.

Each run is one call of `TrainTask`, a checkpointable callable: when Slurm signals a
job before its time limit (or a preemption), submitit calls `TrainTask.checkpoint`,
which resubmits a fresh `TrainTask` with the same arguments; the requeued job finds
checkpoint.pt in the run directory and resumes after the last finished epoch (the
engine rewrites metrics.jsonl from the checkpoint's epoch, so no epoch appears twice).
Runs with a summary.json are never submitted again, nor runs still queued or running
in an earlier submission of any grid.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import submitit
from tqdm.auto import tqdm

from benchmark.errors import UserError
from benchmark.launch.slurm_profiles import check_partition, load_profile
from benchmark.launch.submissions import (
    Submission,
    Task,
    TaskState,
    grid_id,
    live_runs,
    log_tail,
    new_submission,
    run_key,
    task_states,
)
from benchmark.train import runstore
from benchmark.train.config import RunConfig

# Local launcher without a profile: this many runs at once.
DEFAULT_LOCAL_PARALLELISM = max(1, min(4, os.cpu_count() or 1))
LOCAL_TIMEOUT_MIN = 7 * 24 * 60  # submitit's local default (2 min) would kill real runs


def job_record() -> dict[str, Any]:
    """Which job ran (or resumed) a run: recorded in its config.json under "jobs"."""
    env = os.environ
    record: dict[str, Any] = {
        "launcher": "slurm" if "SLURM_JOB_ID" in env else "local",
        "host": socket.gethostname(),
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    try:
        job = submitit.JobEnvironment()
        record["job_id"] = job.job_id
    except RuntimeError:  # not inside a submitit job (e.g. called directly)
        record["job_id"] = None
    for key in (
        "SLURM_JOB_ID",
        "SLURM_ARRAY_JOB_ID",
        "SLURM_ARRAY_TASK_ID",
        "SLURM_RESTART_COUNT",
        "SLURM_JOB_PARTITION",
    ):
        if key in env:
            record[key.lower()] = env[key]
    return record


class TrainTask:
    """One run as a submitit job: train it, or resume it from checkpoint.pt.

    A class (not a function) so that submitit can call `checkpoint` on timeout or
    preemption and requeue the job with a fresh instance.
    """

    def __call__(
        self,
        cfg: RunConfig,
        results: Path,
        data_root: Path,
        threads: int | None = None,
        restart: bool = False,
        rerun_stale: bool = False,
    ) -> dict[str, Any]:
        import torch

        from benchmark.train.engine import train_run

        if threads:
            torch.set_num_threads(threads)
        directory = runstore.run_dir(results, cfg)
        record = job_record()
        jobs: list[dict[str, Any]] = []
        config_path = directory / runstore.CONFIG
        if config_path.is_file():
            config = runstore.read_json(config_path)
            jobs = [*config.get("jobs", []), record]
            # train_run writes config.json only on a fresh start: add this job on resume.
            runstore.write_json(config_path, {**config, "jobs": jobs})
        else:
            jobs = [record]
        resumed = (directory / runstore.CHECKPOINT).is_file()
        print(
            f"{cfg.method}/{cfg.dataset}/seed {cfg.seed} in {directory} (job {record['job_id']}, "
            f"attempt {len(jobs)}): "
            + ("resuming from checkpoint.pt" if resumed else "starting from epoch 0"),
            file=sys.stderr,
            flush=True,
        )
        return train_run(
            cfg,
            results,
            data_root,
            progress=False,
            extra_config={"jobs": jobs},
            restart=restart,
            rerun_stale=rerun_stale,
        )

    def checkpoint(self, *args: Any, **kwargs: Any) -> submitit.helpers.DelayedSubmission:
        """Requeue with a fresh task: it resumes from the last checkpoint.pt on disk."""
        print(
            "time limit or preemption: requeued, will resume from checkpoint.pt",
            file=sys.stderr,
            flush=True,
        )
        return submitit.helpers.DelayedSubmission(TrainTask(), *args, **kwargs)


def _absolute(configs: Sequence[RunConfig], results: Path, data_root: Path):
    """Jobs may start in another directory: every path they get is absolute."""
    configs = [
        dataclasses.replace(c, dataset_path=str(Path(c.dataset_path).resolve())) for c in configs
    ]
    return configs, results.resolve(), data_root.resolve()


def _to_submit(
    configs: Sequence[RunConfig], results: Path, restart: bool = False, rerun_stale: bool = False
) -> tuple[list[RunConfig], list[TaskState]]:
    """Runs to submit (no summary.json, or one to redo with `restart`/`rerun_stale`; not
    queued/running in an earlier submission) and the states of those still queued or
    running."""
    unfinished = [
        c for c in configs if runstore.to_train(runstore.run_dir(results, c), restart, rerun_stale)
    ]
    done = [c for c in configs if c not in unfinished]
    live = live_runs(results, [run_key(c) for c in unfinished])
    if done:
        older = sorted(
            {o for c in done if (o := runstore.older_code(runstore.run_dir(results, c)))}
        )
        stale = sum(runstore.older_code(runstore.run_dir(results, c)) is not None for c in done)
        print(
            f"{len(done)} of {len(configs)} runs are done already (summary.json): not submitted"
            + (
                f"; {stale} of them done with older code ({', '.join(older)}): --rerun-stale "
                "trains them again"
                if stale
                else ""
            )
        )
    for state in live.values():
        t = state.task
        print(
            f"{t.method}/{t.dataset}/seed {t.seed} is still {state.state} as job {t.job_id}: "
            "not submitted again"
        )
    return [c for c in unfinished if run_key(c) not in live], list(live.values())


def _summaries(configs: Sequence[RunConfig], results: Path) -> list[dict[str, Any] | None]:
    return [runstore.load_summary(runstore.run_dir(results, c)) for c in configs]


def _report_failures(states: Sequence[TaskState]) -> None:
    for st in states:
        t = st.task
        print(
            f"FAILED {t.method}/{t.dataset}/seed {t.seed} (job {t.job_id}): {st.reason}",
            file=sys.stderr,
        )
        print(f"  log: {st.log}", file=sys.stderr)
        for line in log_tail(st.log, 4):
            print(f"  | {line}", file=sys.stderr)


def follow(
    grid: str, pairs: Sequence[tuple[Submission, Task]], results: Path, max_poll_s: float = 15.0
) -> list[TaskState]:
    """Wait for the submitted runs with a progress bar (pending/running/failed counts);
    return their final states. Asks Slurm every second at first, then less and less often
    (at most every `max_poll_s`), to spare sacct on a busy cluster."""
    bar = tqdm(total=len(pairs), desc=f"grid {grid}", unit="run", dynamic_ncols=True)
    finished: set[str] = set()
    start = time.monotonic()
    while True:
        states = task_states(results, pairs)
        ended = {s.task.job_id for s in states if s.kind in ("done", "failed")}
        bar.update(len(ended - finished))
        finished |= ended
        counts = {k: sum(s.kind == k for s in states) for k in ("pending", "running", "failed")}
        bar.set_postfix(counts)
        if len(finished) == len(pairs):
            break
        time.sleep(min(max_poll_s, 1.0 + (time.monotonic() - start) / 20))
    bar.close()
    return states


def launch_slurm(
    configs: Sequence[RunConfig],
    results: Path,
    data_root: Path,
    profile_ref: str | None,
    wait: bool = False,
    restart: bool = False,
    rerun_stale: bool = False,
) -> list[dict[str, Any] | None] | None:
    """Submit the unfinished runs of the grid as ONE Slurm job array; print its id and logs."""
    if not profile_ref:
        raise UserError(
            "--launcher slurm needs --profile NAME (slurm/NAME.yaml, e.g. local for the test "
            "cluster of `make slurm-up`, or a copy of slurm/example.yaml)"
        )
    profile = load_profile(profile_ref)
    check_partition(profile)  # before anything is submitted
    configs, results, data_root = _absolute(configs, results, data_root)
    todo, live = _to_submit(configs, results, restart, rerun_stale)
    pairs = [(state.submission, state.task) for state in live]
    if todo:
        sub = new_submission(results, configs, "slurm", profile.name)
        executor = submitit.AutoExecutor(
            folder=sub.folder, cluster="slurm", slurm_max_num_timeout=profile.max_num_timeout
        )
        executor.update_parameters(name=f"bench-{sub.grid_id}", **profile.executor_parameters())
        n = len(todo)
        jobs = executor.map_array(
            TrainTask(),
            todo,
            [results] * n,
            [data_root] * n,
            [profile.cpus_per_task] * n,
            [restart] * n,
            [rerun_stale] * n,
        )
        # One run is submitted as a plain job (submitit makes no array of one).
        sub.slurm_job_id = str(jobs[0].job_id).split("_")[0]
        sub.tasks = [
            Task(run_key(c), str(j.job_id), c.method, c.dataset, c.seed)
            for c, j in zip(todo, jobs, strict=True)
        ]
        sub.save()
        pairs += [(sub, task) for task in sub.tasks]
        if n == 1:
            what, log_id = f"Slurm job {sub.slurm_job_id}", sub.slurm_job_id
        else:
            what = (
                f"Slurm job array {sub.slurm_job_id} (tasks {jobs[0].job_id}..{jobs[-1].job_id}, "
                f"at most {profile.array_parallelism} at once)"
            )
            log_id = f"{sub.slurm_job_id}_<task>"
        logs = sub.directory / log_id / f"{log_id}_0_log.{{out,err}}"
        print(
            f"submitted grid {sub.grid_id}: {n} run(s) as {what} "
            f"on partition {profile.partition or '(default)'}"
        )
        print(f"logs: {logs}")
        print(f"follow: python -m benchmark status --results {results}")
    else:
        print("nothing to submit: every run of the grid is done or queued")
    if not wait:
        return None
    if pairs:
        states = follow(grid_id(configs), pairs, results)
        _report_failures([s for s in states if s.kind == "failed"])
    return _summaries(configs, results)


def launch_local(
    configs: Sequence[RunConfig],
    results: Path,
    data_root: Path,
    profile_ref: str | None,
    poll_s: float = 1.0,
    restart: bool = False,
    rerun_stale: bool = False,
) -> list[dict[str, Any] | None]:
    """Run the unfinished runs of the grid through submitit's LocalExecutor, N at once.

    N is the profile's array_parallelism (or DEFAULT_LOCAL_PARALLELISM; its setup lines
    run too, its Slurm keys are ignored); this process starts a run whenever one ends,
    so it waits until the grid is done.
    """
    profile = load_profile(profile_ref) if profile_ref else None
    parallel = profile.array_parallelism if profile else DEFAULT_LOCAL_PARALLELISM
    configs, results, data_root = _absolute(configs, results, data_root)
    todo, live = _to_submit(configs, results, restart, rerun_stale)
    if live:
        raise UserError(
            f"{len(live)} run(s) of this grid are still queued or running in an earlier "
            "submission; wait for them (python -m benchmark status) and launch again"
        )
    if not todo:
        return _summaries(configs, results)
    threads = max(1, (os.cpu_count() or 1) // min(parallel, len(todo)))
    sub = new_submission(results, configs, "local", profile.name if profile else None)
    executor = submitit.LocalExecutor(
        folder=sub.folder, max_num_timeout=profile.max_num_timeout if profile else 3
    )
    # The profile's Slurm time limit does not apply here: a local run is never cut short.
    executor.update_parameters(
        timeout_min=LOCAL_TIMEOUT_MIN, setup=list(profile.setup) if profile else []
    )
    print(
        f"grid {sub.grid_id}: {len(todo)} run(s), {min(parallel, len(todo))} at once on this "
        f"machine; logs under {sub.directory}"
    )
    queue = list(todo)
    running: dict[str, submitit.Job] = {}
    bar = tqdm(total=len(todo), desc=f"grid {sub.grid_id}", unit="run", dynamic_ncols=True)
    try:
        while queue or running:
            while queue and len(running) < parallel:
                cfg = queue.pop(0)
                job = executor.submit(
                    TrainTask(), cfg, results, data_root, threads, restart, rerun_stale
                )
                running[str(job.job_id)] = job
                sub.tasks.append(
                    Task(run_key(cfg), str(job.job_id), cfg.method, cfg.dataset, cfg.seed)
                )
                sub.save()
            for job_id in [j for j, job in running.items() if job.done()]:
                running.pop(job_id)
                bar.update(1)
            bar.set_postfix(running=len(running), queued=len(queue))
            time.sleep(poll_s)
    except KeyboardInterrupt:
        for job in running.values():
            job.cancel()
        raise
    finally:
        bar.close()
    states = task_states(results, [(sub, t) for t in sub.tasks])
    _report_failures([s for s in states if s.kind == "failed"])
    return _summaries(configs, results)
