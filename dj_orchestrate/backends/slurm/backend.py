"""SLURM: one array job per table via submitit, no driver left running.

Tables whose keys are known at submit time (the first level) get fixed shards: array
task ``i`` claims the key range of shard ``i`` recorded in the ledger. Downstream
tables are submitted at the same time as pull workers that wait for their upstream
arrays (``afterany``), enqueue their table when they start and claim what is pending.
Arrays longer than the cluster's ``MaxArraySize`` are split (submitit does not). A run's
arrays start only once SLURM accepted all of them: a rejected one (SLURM's words, exit 2)
cancels the others, and nothing was enqueued.

No pipelining across arrays, on purpose: a downstream array waits for its upstream arrays
to end (``afterany``) rather than start beside them, because a pull worker started before
its keys exist would hold its allocation (a GPU node, say) idle while it waits. Within an
array nothing changes either: each task serves one table. The tasks run the same
``dj-orchestrate work`` as every backend; given several ``--table`` options (as the local
backend, and the Dask backend, give it) that command is a pipelined pull worker that
claims whichever key is ready (see ``flow``).

The jobs table is the truth; ``squeue`` is a hint that tells reconcile which array
tasks are gone. On USR2 (sent ``signal_delay_s`` before the time limit, or on
preemption) a worker releases its claims and submitit requeues the task.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ...config import BackendConfig
from ...errors import UsageError
from ...pipeline import TableInfo
from ...work import WorkSpec
from ..base import RunRequest, SchedulerBackend, Submission
from ..follow import Poll
from ..plan import plan_launches, record_fixed
from .commands import ACTIVE_STATES, NEVER_STARTS, SLURM_JOB_ID, Task, call, environment, require, slurm_words, squeue
from .render import scripts
from .settings import SlurmResources, load_config, slurm_minutes
from .task import WorkerTask


@dataclass
class Arrays(Submission):
    """A round's arrays per table (``{"Square": ["64"], "Total": ["65", "66"]}``)."""

    arrays: dict[str, list[str]] = field(default_factory=dict)

    @property
    def job_ids(self) -> set[str]:
        return {i for ids in self.arrays.values() for i in ids}


class SlurmBackend(SchedulerBackend):
    name = "slurm"
    scheduler, runs_on, workers_are = "squeue", "the arrays", "SLURM jobs"
    fix_identity = ("give the jobs the driver's environment (sbatch exports it unless [slurm] extra sets --export), "
                    "or set the variables that name the pipeline's schemas in [slurm] setup")

    def __init__(self, config: BackendConfig[SlurmResources] | None = None) -> None:
        self.config = config or load_config()
        self._states_at = 0.0
        self._states: dict[str, Task] = {}
        self._next_pull = 100_000  # pull workers' shard numbers, apart from fixed shards

    @classmethod
    def from_config(cls, path: str | None = None, **options: Any) -> "SlurmBackend":
        return cls(load_config(path))

    def verify(self, tables: list[TableInfo], embedded: bool, wait: bool) -> None:
        """Fail before anything is written: sbatch and srun exist, the controller answers,
        every partition exists, every table's resources are consistent, and an embedded
        database is not asked to outlive this command. (No ``sbatch`` call here: a run
        costs one sbatch per array and nothing else.)"""
        self.refuse_embedded(embedded, wait)
        for command in ("sbatch", "srun", "squeue", "scontrol"):
            require(command)
        listed = [line.split() for line in call("sinfo", "-h", "-o", "%P %l").splitlines() if line.strip()]
        limits = {p.rstrip("*"): limit for p, limit in listed}  # partition -> time limit
        default = next((p.rstrip("*") for p, _ in listed if p.endswith("*")), None)
        for t in tables:
            resources = self.config.for_table(t)
            wanted = resources.partition
            if wanted and wanted not in limits:
                raise UsageError(f"unknown SLURM partition {wanted!r} for {t.name}",
                                 f"partitions on this cluster: {', '.join(sorted(limits))}")
            limit = limits.get(wanted or default or "", "infinite")
            if limit not in ("infinite", "n/a") and resources.minutes() > slurm_minutes(limit):
                raise UsageError(f"time {resources.time!r} for {t.name} exceeds partition {wanted or default}'s limit {limit}",
                                 "SLURM would queue the array and never start it: lower time, or pick another partition")
        m = re.search(r"MaxArraySize\s*=\s*(\d+)", call("scontrol", "show", "config"))
        self.max_array = int(m.group(1)) if m else 1001


    def states(self, job_ids: set[str], max_age: float = 2.0) -> dict[str, Task]:
        """State of every task of these jobs (``123_4`` → RUNNING); one squeue call, at
        most every ``max_age`` seconds. Finished tasks are simply absent. Without an
        answer, the last one."""
        if time.monotonic() - self._states_at > max_age:
            answer = squeue(job_ids)
            if answer is not None:
                self._states, self._states_at = answer, time.monotonic()
        return self._states

    @classmethod
    def ended_jobs(cls, job_ids: set[str]) -> set[str]:
        """Which of these SLURM jobs or array tasks are no longer queued or running. No
        answer from squeue is no hint: a controller that is restarting must not make
        reconcile release the keys of tasks that are still running."""
        answer = squeue(job_ids)
        if answer is None:
            return set()
        return {j for j in job_ids if SLURM_JOB_ID.fullmatch(j) and (j not in answer or answer[j].state not in ACTIVE_STATES)}

    # -------------------------------------------------------------- submission
    def _submit(self, request: RunRequest, info: TableInfo, resources: SlurmResources, spec: WorkSpec,
                indices: Sequence[int], dependency: str | None) -> list[str]:
        """One array per table; several when the indices exceed MaxArraySize. An array
        that depends on none is gated: nothing starts before every array is accepted."""
        import submitit

        executor = submitit.SlurmExecutor(folder=request.log_dir / "%j", python=shlex.quote(sys.executable),
                                          max_num_timeout=max(3, request.worker.policy.max_attempts))
        gate = dependency is None and not any(e.startswith("--begin") for e in resources.extra)
        executor.update_parameters(**resources.submitit_parameters(f"djo-{info.name}", dependency, gate=gate))
        ids = []
        indices = list(indices)
        with environment(request.target.worker_env() if request.target.embedded else {}):
            for start in range(0, len(indices), self.max_array):
                chunk = indices[start:start + self.max_array]
                try:  # (submitit submits a chunk of one as a plain job, id "123")
                    with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's errors too
                        jobs = executor.map_array(WorkerTask(spec), chunk)
                except Exception as err:  # submitit wraps sbatch's own words
                    raise UsageError(f"SLURM rejected the {info.name} array: {slurm_words(str(err))}",
                                     "check the partition, time limit and resources in your config") from None
                ids.append(jobs[0].job_id.split("_")[0])
                self._submitted.append(ids[-1])
                if gate:
                    self._gated.append(ids[-1])
        return ids

    def submit(self, request: RunRequest, levels: list[list[TableInfo]], first: bool) -> Arrays:
        """The run's launch plan as arrays: fixed shards for the first level (keys known
        now), pull workers downstream, each after every earlier level (``afterany``).

        Arrays without a dependency are submitted gated (the others wait for them); the
        first level's keys are enqueued and its shards recorded only once SLURM accepted
        every array, and then the gated ones are released at once. When SLURM rejects
        one, those already accepted are cancelled (none of them ran) and nothing was
        written to the jobs tables."""
        arrays: dict[str, list[str]] = {}
        self._submitted: list[str] = []
        self._gated: list[str] = []
        launches = plan_launches(request, lambda info: self.config.for_table(info).pull_workers, fixed_first=first,
                                 levels=levels)
        try:
            for launch in launches:
                upstream = [j for name in launch.after for j in arrays.get(name, [])]
                dependency = "afterany:" + ":".join(upstream) if upstream else None
                if launch.fixed:
                    indices: Sequence[int] = range(launch.slots)
                else:
                    indices = range(self._next_pull, self._next_pull + launch.slots)
                    self._next_pull += launch.slots
                ids = self._submit(request, launch.info, self.config.for_table(launch.info),
                                   launch.spec(request), indices, dependency)
                arrays.setdefault(launch.info.name, []).extend(ids)
            record_fixed(request, launches)
            if self._gated:
                call("scontrol", "update", f"JobId={','.join(self._gated)}", "StartTime=now")
        except BaseException:
            if self._submitted:
                subprocess.run(["scancel", *self._submitted], capture_output=True, timeout=60)
            raise
        info = "; ".join(f"{name}: {','.join(ids)}" for name, ids in arrays.items())
        return Arrays(info, f"submitted {sum(map(len, arrays.values()))} array job(s): {info or 'nothing to do'}", arrays)

    def poll(self, submission: Arrays) -> Poll:
        """The round's tasks that squeue lists as queued or running (None: no answer)."""
        states = squeue(submission.job_ids)
        if states is None:
            return Poll(None)
        ours = {j: t for j, t in states.items() if j.split("_")[0] in submission.job_ids}
        active = [t for t in ours.values() if t.state in ACTIVE_STATES]
        return Poll(len(active), ended=not active, stuck=never_starts(submission.arrays, ours))

    def cancel(self, submission: Arrays) -> None:
        subprocess.run(["scancel", *submission.job_ids], capture_output=True, timeout=60)

    def describe(self, run: dict) -> str:
        """Per-table task states of a run, for ``status``."""
        parts = []
        for name, ids in _arrays(run).items():
            states = self.states(set(ids), max_age=0)
            counts: dict[str, int] = {}
            for job, task in states.items():
                if job.split("_")[0] in ids:
                    state = f"{task.state} ({task.reason})" if task.reason in NEVER_STARTS else task.state
                    counts[state] = counts.get(state, 0) + 1
            parts.append(f"{name} [{','.join(ids)}]: " + (", ".join(f"{s} {n}" for s, n in sorted(counts.items())) or "ended"))
        return "; ".join(parts)

    def run_ended(self, run: dict) -> bool | None:
        """No task of the run's arrays is queued or running (None: squeue did not answer)."""
        ids = {i for ids in _arrays(run).values() for i in ids}
        states = squeue(ids)
        if states is None:
            return None
        return not any(t.state in ACTIVE_STATES for job, t in states.items() if job.split("_")[0] in ids)

    def render(self, request: RunRequest, out: Path) -> list[Path]:
        """sbatch scripts for review or for a login node without Python (``render.scripts``)."""
        return scripts(self.config, request, out)


def _arrays(run: dict) -> dict[str, list[str]]:
    """A run's arrays per table, from its ledger row (``Square: 64; Total: 65,66``)."""
    items = (item.partition(": ") for item in filter(None, (run.get("backend_info") or "").split("; ")))
    return {name: ids.split(",") for name, _, ids in items}


def never_starts(arrays: dict[str, list[str]], tasks: dict[str, Task]) -> tuple[str, str] | None:
    """--wait: a task SLURM will never start (its time over the partition's limit, an
    unsatisfiable dependency, ...) ends the wait with SLURM's reason, instead of a wait
    without end. The arrays stay queued: the user decides, and their keys are pending."""
    stuck = {j: t.reason for j, t in tasks.items() if t.state == "PENDING" and t.reason in NEVER_STARTS}
    if not stuck:
        return None
    jobs = sorted({j.split("_")[0] for j in stuck}, key=int)
    names = [name for name, ids in arrays.items() if set(ids) & set(jobs)]
    return (f"SLURM will not start {len(stuck)} task(s) of {', '.join(names)} ({', '.join(jobs)}): "
            f"{', '.join(sorted(set(stuck.values())))}",
            f"their keys stay pending; fix the config, `scancel {' '.join(jobs)}` and run again")
