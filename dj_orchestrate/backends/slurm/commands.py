"""The SLURM commands a run calls (sinfo, squeue, scontrol, sbatch through submitit)
and what their answers mean."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
from typing import Iterator, NamedTuple

from ...errors import UsageError

SLURM_JOB_ID = re.compile(r"\d+(_\d+)?")  # 123 (a job) or 123_4 (an array task)
ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED"}
# Pending reasons (squeue's JOB REASON CODES) after which SLURM starts a task only if
# someone changes the job or the cluster: --wait stops and says so instead of waiting forever
NEVER_STARTS = {"BadConstraints", "DependencyNeverSatisfied", "InvalidAccount", "InvalidQOS",
                "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit"}


class Task(NamedTuple):
    """What squeue says of one job or array task."""

    state: str  # PENDING, RUNNING, ...
    reason: str  # why it is pending (Priority, Dependency, PartitionTimeLimit, ...)



def require(command: str) -> None:
    if shutil.which(command) is None:
        raise UsageError(f"no {command} on PATH: this machine cannot reach a SLURM cluster",
                         "run from a login node, or use --backend local (`slurm render` writes sbatch scripts)")

def call(*cmd: str) -> str:
    require(cmd[0])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        raise UsageError(f"{cmd[0]} did not answer within 60 s", "check the cluster with sinfo") from None
    if out.returncode:
        raise UsageError(f"{cmd[0]} failed: {slurm_words(out.stderr or out.stdout)}", "check the cluster with sinfo")
    return out.stdout


def squeue(job_ids: set[str]) -> dict[str, Task] | None:
    """``{"123_4": Task("RUNNING", "None"), ...}`` for the jobs and arrays of these ids;
    None when squeue gave no answer (missing, timed out, controller down)."""
    jobs = sorted({j.split("_")[0] for j in job_ids if SLURM_JOB_ID.fullmatch(j)})
    if not jobs:
        return {}
    if shutil.which("squeue") is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T %r", "-j", ",".join(jobs)],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode:
        # one unknown id (purged after MinJobAge) is an answer: nothing of it runs
        return {} if "Invalid job id" in out.stderr else None
    return {job: Task(state, reason) for job, state, reason in
            ((line.split(None, 2) + [""])[:3] for line in out.stdout.splitlines() if line.strip())}


def slurm_words(text: str) -> str:
    """SLURM's own reason from a command's output: its ``error:`` lines, without the
    tool's prefix (``sbatch: error: Batch job submission failed: ...``)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [re.sub(r"^\w+: error: ", "", line) for line in lines if re.match(r"^\w+: error: ", line)]
    return "; ".join(dict.fromkeys(errors)) if errors else (lines[-1] if lines else "no output")


@contextlib.contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    """sbatch hands its environment to the job: set what the workers need, for the call."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
