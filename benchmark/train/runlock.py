"""One writer per run: a lock file in the run directory, safe on a shared filesystem.

`<run_dir>/.lock` is created with O_CREAT|O_EXCL (atomic on local filesystems and on
NFSv3+, unlike flock) and holds its holder as JSON: host, pid (and, on Linux, the
process's start time, so that a recycled pid is not taken for the holder), Slurm job id,
start time and a random token. The holder removes it when the run ends, however it ends
short of SIGKILL or a lost node.

A lock whose holder is gone is stale and taken over: on the same host, its process is
dead (or is another process with the same pid); anywhere, its Slurm job is no longer
running (`squeue`, then `sacct`), or it is this very Slurm job's earlier attempt (a
requeue). A holder on another host without a Slurm job cannot be checked and counts as
live: the message names the lock file to delete when it is not. Taking over is itself
guarded by a second O_EXCL file (`.lock.takeover`, held for milliseconds), so two
processes that find the same stale lock do not both take it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

LOCK = ".lock"
TAKEOVER = ".lock.takeover"
TAKEOVER_STALE_S = 30.0  # a takeover file older than this was left by a crashed process
UNREADABLE_STALE_S = 10.0  # an empty lock file older than this lost its writer
LIVE_SLURM_STATES = frozenset(
    {
        "RUNNING", "PENDING", "COMPLETING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD",
        "REQUEUE_FED", "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Holder:
    """Who holds a run's lock."""

    host: str
    pid: int
    started: str  # ISO time the holder took the lock
    token: str
    slurm_job_id: str | None = None
    pid_start: str | None = None  # /proc/<pid>/stat start time (Linux), to spot pid reuse

    def describe(self) -> str:
        job = f", Slurm job {self.slurm_job_id}" if self.slurm_job_id else ""
        return f"pid {self.pid} on {self.host}{job}"


class RunLocked(Exception):
    """The run is being trained by a live holder (`holder`); `note` says how we know."""

    def __init__(self, holder: Holder, note: str = "") -> None:
        super().__init__(holder.describe())
        self.holder, self.note = holder, note


def _proc_start(pid: int) -> str | None:
    """The start time of process `pid` (clock ticks since boot), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _slurm_job() -> str | None:
    env = os.environ
    if "SLURM_ARRAY_JOB_ID" in env and "SLURM_ARRAY_TASK_ID" in env:
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def me() -> Holder:
    """This process as a lock holder."""
    pid = os.getpid()
    return Holder(
        host=socket.gethostname(),
        pid=pid,
        started=datetime.now().astimezone().isoformat(timespec="seconds"),
        token=secrets.token_hex(8),
        slurm_job_id=_slurm_job(),
        pid_start=_proc_start(pid),
    )


def read_holder(path: Path) -> Holder | None:
    """The holder recorded in a lock file; None when it is gone or unreadable."""
    try:
        record = json.loads(path.read_text())
        return Holder(**record)
    except (OSError, ValueError, TypeError):
        return None


def slurm_job_state(job_id: str) -> str | None:
    """The job's state ("RUNNING", "COMPLETED", ...; "GONE" when Slurm no longer knows
    it), or None when Slurm cannot be asked."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    states = out.stdout.split()
    if out.returncode == 0 and states:
        return states[0].upper()
    if out.returncode != 0 and "invalid job id" not in out.stderr.lower():
        return None  # no controller to ask: the job may well be running
    # squeue forgets ended jobs: their final state is in sacct, where there is accounting.
    try:
        out = subprocess.run(
            ["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return "GONE"
    states = out.stdout.split()
    return states[0].upper() if out.returncode == 0 and states else "GONE"


def stale_reason(holder: Holder) -> str | None:
    """Why `holder` no longer holds the run (None: it may still be running)."""
    mine = _slurm_job()
    if holder.slurm_job_id and mine and holder.slurm_job_id == mine:
        return f"it was an earlier attempt of this Slurm job {mine}"
    if holder.host == socket.gethostname():
        try:
            os.kill(holder.pid, 0)
        except ProcessLookupError:
            return f"process {holder.pid} on {holder.host} is dead"
        except PermissionError:
            pass  # alive, another user's
        start = _proc_start(holder.pid)
        if holder.pid_start and start and start != holder.pid_start:
            return f"process {holder.pid} on {holder.host} is dead (its pid was reused)"
        return None
    if holder.slurm_job_id:
        state = slurm_job_state(holder.slurm_job_id)
        if state is not None and state not in LIVE_SLURM_STATES:
            return f"Slurm job {holder.slurm_job_id} is no longer running ({state})"
    return None


def _create(path: Path, holder: Holder) -> bool:
    """Create the lock file holding `holder`; False when it exists already."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(asdict(holder)) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    return True


@contextlib.contextmanager
def _takeover_guard(directory: Path) -> Iterator[bool]:
    """Hold `.lock.takeover` (True) or learn that another process holds it (False)."""
    path = directory / TAKEOVER
    with contextlib.suppress(FileNotFoundError):
        if time.time() - path.stat().st_mtime > TAKEOVER_STALE_S:
            path.unlink()
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        yield False
        return
    os.close(fd)
    try:
        yield True
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def acquire(directory: Path, note: Callable[[str], None] | None = None) -> Holder:
    """Take the run's lock; return this process's Holder record.

    Raises RunLocked when a live process holds it. A stale lock is taken over and
    `note` (if given) gets one line saying whose and why."""
    path = directory / LOCK
    mine = me()
    for _ in range(10):
        if _create(path, mine):
            return mine
        holder = read_holder(path)
        if holder is None:  # gone meanwhile, or just created and not yet written
            try:
                age = time.time() - path.stat().st_mtime
            except FileNotFoundError:
                continue
            if age < UNREADABLE_STALE_S:
                time.sleep(0.2)
                continue
            why, who = "its lock file is empty or unreadable", "an unknown holder"
        else:
            reason = stale_reason(holder)
            if reason is None:
                raise RunLocked(holder)
            why, who = reason, f"{holder.describe()} since {holder.started}"
        with _takeover_guard(directory) as guarded:
            if not guarded:
                time.sleep(0.1)
                continue
            if read_holder(path) != holder:
                continue  # changed hands meanwhile: look again
            path.unlink(missing_ok=True)
            if _create(path, mine):
                if note is not None:
                    note(f"took over the lock of {who}: {why}")
                return mine
    holder = read_holder(path)
    raise RunLocked(holder or Holder("?", -1, "?", "?"), "the lock file is being written")


def release(directory: Path, holder: Holder) -> None:
    """Remove the lock if `holder` still holds it (never another process's lock)."""
    path = directory / LOCK
    current = read_holder(path)
    if current is not None and current.token == holder.token:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def hold(directory: Path, note: Callable[[str], None] | None = None) -> Iterator[Holder]:
    """`acquire` ... `release` around a block (raises RunLocked when held elsewhere). A run
    directory this call created and the block left empty (the run failed before writing
    anything, e.g. a method option that does not fit the dataset) is removed with the
    lock, so that a failed start leaves no run directory behind. (Its parents stay: other
    runs of the grid may be creating theirs in them at this moment.)"""
    created = not directory.exists()
    directory.mkdir(parents=True, exist_ok=True)
    holder = acquire(directory, note)
    try:
        yield holder
    finally:
        release(directory, holder)
        if created:
            with contextlib.suppress(OSError):  # not empty: another process took it over
                directory.rmdir()
