"""Records of grid submissions (local / Slurm) and the state of their runs, for `status`.

Every launch of a grid through submitit writes one small JSON record,
results/slurm/<grid_id>/<timestamp>/submission.json, beside the submitit folder that holds
the job's pickles and logs (`<timestamp>/<job_id>/<job_id>_0_log.{out,err}`). A grid's id
is a hash of its run ids, so relaunching the same grid adds a submission to the same
grid directory. Whether a run is done is read from its run directory (summary.json);
whether it is queued, running or failed comes from Slurm (through submitit's sacct
watcher) or, for the local launcher, from the job's process and result files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import subprocess
import sys
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from benchmark.train import runstore
from benchmark.train.config import RunConfig

SUBMISSIONS = "slurm"  # results/slurm/
RECORD = "submission.json"

# Slurm job states (sacct) grouped as `status` reports them; anything else ended badly.
RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING"})
PENDING_STATES = frozenset(
    {"PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "READY"}
)
LIVE_STATES = RUNNING_STATES | PENDING_STATES


def grid_id(configs: Sequence[RunConfig]) -> str:
    """A short hash of the grid's run ids: the same grid always gets the same id."""
    blob = "\n".join(sorted(cfg.run_id for cfg in configs))
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def run_key(cfg: RunConfig) -> str:
    """A run's directory relative to results/runs: <dataset>/<method>/<run_id>."""
    return f"{cfg.dataset}/{cfg.method}/{cfg.run_id}"


@dataclass
class Task:
    """One run submitted as one submitit job (an array task on Slurm, a process locally)."""

    run: str  # <dataset>/<method>/<run_id> under results/runs
    job_id: str  # "1234_5" (array job 1234, task 5) on Slurm; the process id locally
    method: str
    dataset: str
    seed: int


@dataclass
class Submission:
    """One launch of a grid: which runs the grid has, which were submitted, as which jobs."""

    grid_id: str
    created: str  # ISO time of the launch; also the name of the submission's directory
    launcher: str  # "slurm" | "local"
    profile: str | None
    command: str  # the command line that launched it (to relaunch the grid)
    grid: list[dict[str, Any]]  # every run of the grid: {"run", "method", "dataset", "seed"}
    tasks: list[Task] = field(default_factory=list)
    slurm_job_id: str | None = None  # the array's id (a plain job's when one run was submitted)
    directory: Path | None = None  # results/slurm/<grid_id>/<stamp> (not stored)

    @property
    def folder(self) -> Path:
        """submitit's folder pattern for this submission's jobs (logs, pickles)."""
        assert self.directory is not None
        return self.directory / "%j"

    def save(self) -> None:
        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        record = asdict(self)
        record.pop("directory")
        runstore.write_json(self.directory / RECORD, record)

    @classmethod
    def load(cls, path: Path) -> Submission:
        record = runstore.read_json(path)
        record["tasks"] = [Task(**t) for t in record.get("tasks", [])]
        return cls(**record, directory=path.parent)


def new_submission(
    results: Path, configs: Sequence[RunConfig], launcher: str, profile: str | None
) -> Submission:
    """A record for a new launch of the grid `configs` (not yet saved)."""
    gid = grid_id(configs)
    now = datetime.now()
    stamp = now.strftime("%Y%m%d-%H%M%S-%f")
    return Submission(
        grid_id=gid,
        created=now.isoformat(timespec="seconds"),
        launcher=launcher,
        profile=profile,
        command=shlex.join([Path(sys.executable).name, "-m", "benchmark", *sys.argv[1:]]),
        grid=[
            {"run": run_key(c), "method": c.method, "dataset": c.dataset, "seed": c.seed}
            for c in configs
        ],
        directory=results / SUBMISSIONS / gid / stamp,
    )


def load_submissions(results: Path) -> list[Submission]:
    """Every submission record under results/slurm, oldest first."""
    paths = (results / SUBMISSIONS).glob(f"*/*/{RECORD}")
    subs = [Submission.load(p) for p in paths]
    return sorted(subs, key=lambda s: (s.created, str(s.directory)))


# ---- the state of a submitted run -----------------------------------------------------


@dataclass
class TaskState:
    """Where one submitted run stands: done | running | pending | failed | unknown
    (Slurm could not be asked)."""

    kind: str
    state: str  # Slurm's state ("RUNNING", "CANCELLED by 0", ...) or the local equivalent
    task: Task
    submission: Submission
    log: Path | None = None  # the job's stderr log
    reason: str = ""  # for failed runs: the exception's last line, or Slurm's state


def job_paths(sub: Submission, task: Task):
    """submitit's paths (stdout, stderr, result pickle) of one task's job."""
    from submitit.core.utils import JobPaths

    return JobPaths(sub.folder, job_id=task.job_id, task_id=0)


def _job_error(paths) -> str:
    """The last line of the exception a job raised (from submitit's result pickle), or ''."""
    from submitit.core.utils import pickle_load

    if not paths.result_pickle.exists():
        return ""
    try:
        outcome, value = pickle_load(paths.result_pickle)
    except Exception:  # a half-written or foreign pickle: say nothing rather than crash
        return ""
    if outcome != "error":
        return ""
    lines = [line for line in str(value).strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _process_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, ValueError):
        return False
    return True


def queued_states() -> dict[str, str] | str:
    """This user's jobs as squeue lists them, {"1234_5": "PENDING", ...}: the fallback for
    jobs that sacct does not know (yet, or on clusters without accounting). A string (the
    error) when Slurm cannot be asked."""
    try:
        out = subprocess.run(
            ["squeue", "--me", "-h", "-r", "-o", "%i|%T"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"squeue: {exc}"
    if out.returncode != 0:
        return (out.stderr.strip().splitlines() or [f"squeue exit {out.returncode}"])[-1]
    pairs = (line.split("|", 1) for line in out.stdout.splitlines() if "|" in line)
    return {job.strip(): state.strip() for job, state in pairs}


def task_states(results: Path, pairs: Iterable[tuple[Submission, Task]]) -> list[TaskState]:
    """The state of each (submission, task): summary.json first, then Slurm / the process.

    Slurm states come from one `sacct` call for all the jobs (submitit's watcher).
    """
    from submitit import SlurmJob

    pairs = list(pairs)
    slurm_jobs = {
        task.job_id: SlurmJob(sub.folder, task.job_id)
        for sub, task in pairs
        if sub.launcher == "slurm"
    }
    queued: dict[str, str] | str = {}
    if slurm_jobs:
        quiet = logging.getLogger("submitit")
        level = quiet.level
        quiet.setLevel(logging.ERROR)  # sacct errors are reported below, once
        try:
            SlurmJob.watcher.update()
        finally:
            quiet.setLevel(level)
        sacct = {j: SlurmJob.watcher.get_state(j, mode="cache") for j in slurm_jobs}
        if "UNKNOWN" in sacct.values():
            queued = queued_states()
    states = []
    for sub, task in pairs:
        paths = job_paths(sub, task)
        log = paths.stderr
        if (results / "runs" / task.run / runstore.SUMMARY).is_file():
            states.append(TaskState("done", "COMPLETED", task, sub, log))
            continue
        if sub.launcher == "slurm":
            state = sacct[task.job_id]
            if state == "UNKNOWN" and isinstance(queued, str):
                why = f"Slurm did not answer ({queued}); is SLURM_CONF set?"
                states.append(TaskState("unknown", "UNKNOWN", task, sub, log, why))
                continue
            if state == "UNKNOWN":
                state = queued.get(task.job_id, state)
        elif paths.result_pickle.exists():
            state = "FINISHED"
        else:
            state = "RUNNING" if _process_alive(task.job_id) else "VANISHED"
        word = state.split()[0].upper() if state else "UNKNOWN"
        if word in RUNNING_STATES:
            states.append(TaskState("running", state, task, sub, log))
        elif word in PENDING_STATES:
            states.append(TaskState("pending", state, task, sub, log))
        else:
            if word == "UNKNOWN":
                state = "UNKNOWN (Slurm has no record of this job)"
            reason = _job_error(paths) or state
            states.append(TaskState("failed", state, task, sub, log, reason))
    return states


def live_runs(results: Path, keys: Iterable[str]) -> dict[str, TaskState]:
    """Runs among `keys` that a submission still has queued or running (not to resubmit)."""
    wanted = set(keys)
    latest: dict[str, tuple[Submission, Task]] = {}
    for sub in load_submissions(results):
        for task in sub.tasks:
            if task.run in wanted:
                latest[task.run] = (sub, task)
    return {
        s.task.run: s
        for s in task_states(results, latest.values())
        if s.kind in ("running", "pending")
    }


def log_tail(path: Path | None, lines: int = 6) -> list[str]:
    """The last non-empty lines of a log file ([] when it does not exist)."""
    if path is None or not path.is_file():
        return []
    text = path.read_text(errors="replace").splitlines()
    return [line for line in text if line.strip()][-lines:]


# ---- `python -m benchmark status` -----------------------------------------------------


@dataclass
class GridStatus:
    """Counts for one grid over all its submissions (latest job of each run wins)."""

    grid_id: str
    latest: Submission
    submissions: int
    runs: int
    done: int = 0
    running: int = 0
    pending: int = 0
    failed: list[TaskState] = field(default_factory=list)
    unknown: list[TaskState] = field(default_factory=list)
    missing: list[dict[str, Any]] = field(default_factory=list)


def grid_statuses(results: Path) -> list[GridStatus]:
    """Per grid: how many runs are done, running, pending, failed (with logs) and missing."""
    by_grid: dict[str, list[Submission]] = {}
    for sub in load_submissions(results):
        by_grid.setdefault(sub.grid_id, []).append(sub)
    out = []
    for gid, subs in by_grid.items():
        grid = subs[-1].grid
        latest: dict[str, tuple[Submission, Task]] = {}
        for sub in subs:
            for task in sub.tasks:
                latest[task.run] = (sub, task)
        status = GridStatus(gid, subs[-1], len(subs), len(grid))
        states = {s.task.run: s for s in task_states(results, latest.values())}
        for run in grid:
            key = run["run"]
            state = states.get(key)
            if (results / "runs" / key / runstore.SUMMARY).is_file():
                status.done += 1
            elif state is None:
                status.missing.append(run)
            elif state.kind == "running":
                status.running += 1
            elif state.kind == "pending":
                status.pending += 1
            elif state.kind == "failed":
                status.failed.append(state)
            elif state.kind == "unknown":
                status.unknown.append(state)
            else:  # "done" by summary.json, counted above
                status.done += 1
        out.append(status)
    return out


def _rel(path: Path | None) -> str:
    if path is None:
        return "-"
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def format_status(statuses: Sequence[GridStatus], log_lines: int = 6) -> str:
    """The text `status` prints: one block per grid, failed runs with their log's tail."""
    blocks = []
    for st in statuses:
        sub = st.latest
        methods = sorted({r["method"] for r in sub.grid})
        datasets = sorted({r["dataset"] for r in sub.grid})
        seeds = sorted({r["seed"] for r in sub.grid})
        job = f"Slurm job {sub.slurm_job_id}" if sub.slurm_job_id else f"{sub.launcher} processes"
        lines = [
            f"grid {st.grid_id}: {st.runs} runs ({' '.join(methods)} x {' '.join(datasets)} "
            f"x seeds {' '.join(map(str, seeds))}); {st.submissions} submission(s), "
            f"last {sub.created} as {job}" + (f" (profile {sub.profile})" if sub.profile else ""),
            f"  done {st.done}  running {st.running}  pending {st.pending}  "
            f"failed {len(st.failed)}  missing {len(st.missing)}"
            + (f"  unknown {len(st.unknown)}: {st.unknown[0].reason}" if st.unknown else ""),
        ]
        for f in st.failed:
            t = f.task
            lines.append(
                f"  FAILED {t.method}/{t.dataset}/seed {t.seed} (job {t.job_id}): {f.reason}"
            )
            lines.append(f"    log: {_rel(f.log)}")
            lines.extend(f"    | {line}" for line in log_tail(f.log, log_lines))
        for run in st.missing:
            lines.append(f"  MISSING {run['method']}/{run['dataset']}/seed {run['seed']}")
        if st.failed or st.missing:
            lines.append(f"  relaunch (submits only unfinished runs): {sub.command}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def dump_json(statuses: Sequence[GridStatus]) -> str:
    """The same status as JSON (for scripts)."""
    rows = []
    for st in statuses:
        rows.append(
            {
                "grid_id": st.grid_id,
                "runs": st.runs,
                "done": st.done,
                "running": st.running,
                "pending": st.pending,
                "failed": [
                    {**asdict(f.task), "state": f.state, "reason": f.reason, "log": str(f.log)}
                    for f in st.failed
                ],
                "missing": st.missing,
                "unknown": [asdict(u.task) for u in st.unknown],
                "last_submission": str(st.latest.directory),
            }
        )
    return json.dumps(rows, indent=1)
