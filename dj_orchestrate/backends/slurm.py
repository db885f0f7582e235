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
import dataclasses
import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator, NamedTuple, Sequence

from tqdm import tqdm

from .. import db, ledger
from ..config import BackendConfig, Settings
from ..entry import reported
from ..errors import UsageError
from ..jobs import JobTable
from ..pipeline import TableInfo, levels_of
from ..work import WorkSpec, main
from .base import (SUBMITTED, Backend, Mismatch, RunRequest, check_identity, error_count, outcome, plan_launches,
                   record_fixed, rerun_levels)

EXTRA_DIRECTIVE = re.compile(r"--[A-Za-z][A-Za-z0-9-]*(=.*)?")
SLURM_JOB_ID = re.compile(r"\d+(_\d+)?")  # 123 (a job) or 123_4 (an array task)
ACTIVE_STATES = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED"}
# Pending reasons (squeue's JOB REASON CODES) after which SLURM starts a task only if
# someone changes the job or the cluster: --wait stops and says so instead of waiting forever
NEVER_STARTS = {"BadConstraints", "DependencyNeverSatisfied", "InvalidAccount", "InvalidQOS",
                "PartitionConfig", "PartitionNodeLimit", "PartitionTimeLimit"}
# Arrays of a run are submitted with a begin time this far ahead (--begin) and released
# together once SLURM accepted them all. Not --hold: SLURM accepts a held job that no node
# can ever run (its feasibility is checked only on release), while --begin keeps the check.
GATE = "now+600"
WHO = "slurm --wait"
DB_PATIENCE = 300.0  # seconds --wait waits for a database that restarts
FIX = ("give the jobs the driver's environment (sbatch exports it unless [slurm] extra sets --export), "
       "or set the variables that name the pipeline's schemas in [slurm] setup")
RENDER_LOGS = "/djo-render-logs"  # submitit makes log folders absolute; rendered scripts use logs/


@dataclass(frozen=True)
class SlurmResources(Settings):
    """Per-table SLURM resources: ``[slurm]`` in dj_orchestrate.toml, overridden by a
    table class's ``slurm`` dict, overridden by ``[slurm.tables.<Table>]``."""

    label: ClassVar[str] = "SLURM resource"

    partition: str | None = None
    time: str | int = "01:00:00"  # minutes, MM:SS, HH:MM:SS or D-HH:MM:SS
    mem: str | None = None  # e.g. "4G"
    cpus_per_task: int = 1
    gpus: int | None = None  # GPUs per node (--gpus-per-node)
    gres: str | None = None  # e.g. "gpu:a100:1"
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = 32  # the %N throttle of each array
    pull_workers: int = 4  # array tasks for tables whose keys appear only upstream
    signal_delay_s: int = 90  # USR2 this long before the time limit
    extra: tuple[str, ...] = ()  # more #SBATCH directives, e.g. "--exclusive", "--mail-type=END"
    setup: tuple[str, ...] = ()  # shell lines before the worker: module load, venv activation
    timeout: float | None = None  # seconds a make may take, per key (see dj_orchestrate.watchdog)

    def parsed(self, where: str) -> "SlurmResources":
        bad = [v for v in self.extra if not EXTRA_DIRECTIVE.fullmatch(v)]
        if bad:
            raise UsageError(f"extra in {where}: {bad[0]!r} is not a long sbatch option",
                             'write each as "--name" or "--name=value", e.g. "--mail-type=END"')
        negative = [f.name for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), int) and getattr(self, f.name) < 0]
        if negative:
            raise UsageError(f"{negative[0]} in {where} must be a non-negative integer, got {getattr(self, negative[0])!r}",
                             f"e.g. {negative[0]} = 2")
        self.minutes()  # the time format
        return self

    def validated(self, where: str) -> "SlurmResources":
        """Checks across keys: a time SLURM reads, and a USR2 notice that comes after the
        task started (else every task would be stopped and requeued as soon as it runs)."""
        if self.signal_delay_s >= self.minutes() * 60:
            raise UsageError(f"signal_delay_s = {self.signal_delay_s} in {where} is not shorter than time = {self.time!r}",
                             "the time-limit notice must come after the task starts: lower signal_delay_s or raise time")
        if self.array_parallelism < 1 or self.pull_workers < 1:
            raise UsageError(f"array_parallelism and pull_workers in {where} must be at least 1", "e.g. pull_workers = 4")
        return self

    def minutes(self) -> int:
        return slurm_minutes(self.time)

    def submitit_parameters(self, job_name: str, dependency: str | None = None, gate: bool = False) -> dict[str, Any]:
        """The one translation to sbatch parameters (submitit's SlurmExecutor names).
        ``gate``: start no earlier than GATE from now (``--begin``), until released."""
        extra: dict[str, Any] = {"begin": GATE} if gate else {}
        for directive in self.extra:
            key, _, value = directive.lstrip("-").partition("=")
            extra[key] = value if value else True
        params = dict(job_name=job_name, time=self.minutes(), cpus_per_task=self.cpus_per_task,
                      array_parallelism=self.array_parallelism, signal_delay_s=self.signal_delay_s,
                      stderr_to_stdout=True, wckey="dj-orchestrate", setup=list(self.setup) or None, additional_parameters=extra or None,
                      partition=self.partition, mem=self.mem, gpus_per_node=self.gpus, gres=self.gres,
                      account=self.account, qos=self.qos, constraint=self.constraint, dependency=dependency)
        return {k: v for k, v in params.items() if v is not None}


def slurm_minutes(time_: str | int) -> int:
    """SLURM's time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in whole minutes."""
    days, _, rest = str(time_).strip().rpartition("-")
    parts = rest.split(":")
    if not re.fullmatch(r"\d*", days) or not all(p.isdigit() for p in parts) or len(parts) > 3:
        raise UsageError(f"time {time_!r} is not a SLURM time", 'use minutes, "HH:MM:SS" or "D-HH:MM:SS"')
    values = [int(p) for p in parts]
    if days:  # D-H, D-H:M, D-H:M:S
        h, m, sec = (values + [0, 0])[:3]
        seconds = int(days) * 86400 + h * 3600 + m * 60 + sec
    else:  # M, M:S, H:M:S
        seconds = [lambda m: m * 60, lambda m, s_: m * 60 + s_, lambda h, m, s_: h * 3600 + m * 60 + s_][len(values) - 1](*values)
    return max(1, -(-seconds // 60))


class Task(NamedTuple):
    """What squeue says of one job or array task."""

    state: str  # PENDING, RUNNING, ...
    reason: str  # why it is pending (Priority, Dependency, PartitionTimeLimit, ...)


def load_config(path: str | None = None) -> BackendConfig[SlurmResources]:
    """``[slurm]`` of the config file (see ``dj_orchestrate.config``)."""
    return BackendConfig.load("slurm", SlurmResources, path)


class WorkerTask:
    """What each array task runs, in the task's own Python process: a worker
    (``work.main``), its shard the array index.

    Checkpointable: after USR2 the worker has released its claims and returns; the
    task then hands the signal back to submitit, which requeues it. Any other non-zero
    exit (the database unreachable, a bad pipeline) fails the task, so that SLURM and
    ``sacct`` show it as FAILED instead of COMPLETED."""

    def __init__(self, spec: WorkSpec) -> None:
        self.spec = spec

    def __call__(self, shard_index: int) -> int:
        import submitit

        env = submitit.JobEnvironment()
        try:
            with reported():
                code = main(self.spec.replace(shard_index=shard_index, log_path=str(env.paths.stdout)))
        except SystemExit as stop:
            if isinstance(stop.code, str):  # SystemExit("message"): the message is the reason
                print(stop.code, file=sys.stderr, flush=True)
                code = 1
            else:
                code = int(stop.code or 0)
        if code == 128 + signal.SIGUSR2:
            os.kill(os.getpid(), signal.SIGUSR2)  # submitit: checkpoint and requeue (exits)
            time.sleep(5)
        if code:
            raise RuntimeError(f"dj-orchestrate work exited with status {code}; see the lines above")
        return code

    def checkpoint(self, shard_index: int) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, shard_index)


class SlurmBackend(Backend):
    name = "slurm"

    def __init__(self, config: BackendConfig[SlurmResources] | None = None) -> None:
        self.config = config or load_config()
        self._states_at = 0.0
        self._states: dict[str, Task] = {}
        self._next_pull = 100_000  # pull workers' shard numbers, apart from fixed shards

    @classmethod
    def from_config(cls, path: str | None = None, **options: Any) -> "SlurmBackend":
        return cls(load_config(path))


    # ------------------------------------------------------------- the cluster
    @staticmethod
    def _require(command: str) -> None:
        if shutil.which(command) is None:
            raise UsageError(f"no {command} on PATH: this machine cannot reach a SLURM cluster",
                             "run from a login node, or use --backend local (`slurm render` writes sbatch scripts)")

    @classmethod
    def _slurm(cls, *cmd: str) -> str:
        cls._require(cmd[0])
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired:
            raise UsageError(f"{cmd[0]} did not answer within 60 s", "check the cluster with sinfo") from None
        if out.returncode:
            raise UsageError(f"{cmd[0]} failed: {_slurm_words(out.stderr or out.stdout)}", "check the cluster with sinfo")
        return out.stdout

    def check(self, tables: list[TableInfo], embedded: bool = False, wait: bool = False) -> None:
        """Fail before anything is written: sbatch and srun exist, the controller answers,
        every partition exists, every table's resources are consistent, and an embedded
        database is not asked to outlive this command. (No ``sbatch`` call here: a run
        costs one sbatch per array and nothing else.)"""
        if embedded and not wait:
            raise UsageError("the embedded database stops when this command exits, so SLURM jobs could not reach it",
                             "use --wait, or configure a database server (DJ_HOST/DJ_USER/DJ_PASS)")
        for command in ("sbatch", "srun", "squeue", "scontrol"):
            self._require(command)
        listed = [line.split() for line in self._slurm("sinfo", "-h", "-o", "%P %l").splitlines() if line.strip()]
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
        m = re.search(r"MaxArraySize\s*=\s*(\d+)", self._slurm("scontrol", "show", "config"))
        self.max_array = int(m.group(1)) if m else 1001

    @staticmethod
    def _squeue(job_ids: set[str]) -> dict[str, Task] | None:
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

    def states(self, job_ids: set[str], max_age: float = 2.0) -> dict[str, Task]:
        """State of every task of these jobs (``123_4`` → RUNNING); one squeue call, at
        most every ``max_age`` seconds. Finished tasks are simply absent. Without an
        answer, the last one."""
        if time.monotonic() - self._states_at > max_age:
            answer = self._squeue(job_ids)
            if answer is not None:
                self._states, self._states_at = answer, time.monotonic()
        return self._states

    @classmethod
    def ended_jobs(cls, job_ids: set[str]) -> set[str]:
        """Which of these SLURM jobs or array tasks are no longer queued or running. No
        answer from squeue is no hint: a controller that is restarting must not make
        reconcile release the keys of tasks that are still running."""
        answer = cls._squeue(job_ids)
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
        with _environment(request.target.worker_env() if request.target.embedded else {}):
            for start in range(0, len(indices), self.max_array):
                chunk = indices[start:start + self.max_array]
                try:  # (submitit submits a chunk of one as a plain job, id "123")
                    with contextlib.redirect_stderr(io.StringIO()):  # submitit prints sbatch's errors too
                        jobs = executor.map_array(WorkerTask(spec), chunk)
                except Exception as err:  # submitit wraps sbatch's own words
                    raise UsageError(f"SLURM rejected the {info.name} array: {_slurm_words(str(err))}",
                                     "check the partition, time limit and resources in your config") from None
                ids.append(jobs[0].job_id.split("_")[0])
                self._submitted.append(ids[-1])
                if gate:
                    self._gated.append(ids[-1])
        return ids

    def run(self, request: RunRequest) -> int:
        if not hasattr(self, "max_array"):
            self.check(request.tables, bool(request.target.embedded), request.wait)
        errors_before = error_count(request.tables) if request.wait else 0
        try:
            arrays = self._submit_levels(request, levels_of(request.tables), first=True)
        except BaseException:
            with contextlib.suppress(Exception):  # the reason to report is the one above
                ledger.finish_run(request.run_id, "rejected")
            raise
        info = "; ".join(f"{name}: {','.join(ids)}" for name, ids in arrays.items())
        ledger.set_backend_info(request.run_id, info)
        print(f"submitted {sum(map(len, arrays.values()))} array job(s): {info or 'nothing to do'}", file=sys.stderr)
        if not request.wait:
            return SUBMITTED
        self._follow(request, arrays)
        gave_up = error_count(request.tables) > errors_before  # keys whose tasks died until max_attempts
        return 1 if gave_up else outcome(request.run_id)

    def _submit_levels(self, request: RunRequest, levels: list[list[TableInfo]], first: bool) -> dict[str, list[str]]:
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
                self._slurm("scontrol", "update", f"JobId={','.join(self._gated)}", "StartTime=now")
        except BaseException:
            if self._submitted:
                subprocess.run(["scancel", *self._submitted], capture_output=True, timeout=60)
            raise
        return arrays

    def _follow(self, request: RunRequest, arrays: dict[str, list[str]]) -> None:
        """--wait: progress from the jobs tables until no task of the run is active;
        then reconcile and resubmit pull workers for keys released on the way.

        The arrays do not need this process, and a database restart must not end it:
        progress and reconcile are retried on a new connection for DB_PATIENCE seconds."""
        conn = request.tables[0].cls.connection
        for round_ in range(request.worker.policy.max_attempts + 1):
            job_ids = {i for ids in arrays.values() for i in ids}
            tables = [JobTable(t.instance()) for t in request.tables]
            silent_since = None
            with tqdm(desc="slurm", unit="key", disable=not request.progress or None) as bar:
                while True:
                    states = self._squeue(job_ids)
                    if states is None:  # no answer is not "all ended": ask again, for a while
                        silent_since = silent_since or time.monotonic()
                        if time.monotonic() - silent_since > 600:
                            raise UsageError("squeue has not answered for 10 minutes; the arrays may still run",
                                             "check the cluster; `dj-orchestrate status` shows the keys")
                        time.sleep(5)
                        continue
                    silent_since = None
                    ours = {j: t for j, t in states.items() if j.split("_")[0] in job_ids}
                    active = [t for t in ours.values() if t.state in ACTIVE_STATES]
                    _stop_if_never_starts(arrays, ours)
                    counts = db.retrying(conn, lambda: [jt.status_counts() for jt in tables], WHO, DB_PATIENCE)
                    self._check_identity(request, job_ids)
                    bar.set_postfix_str(f"pending={sum(c['pending'] for c in counts)} "
                                        f"reserved={sum(c['reserved'] for c in counts)} tasks={len(active)}")
                    bar.refresh()
                    if not active:
                        break
                    time.sleep(2)
            todo = db.retrying(conn, lambda: rerun_levels(request, self.ended_jobs), WHO, DB_PATIENCE)
            if not todo or round_ == request.worker.policy.max_attempts:
                break
            arrays = self._submit_levels(request, todo, first=False)

    def _check_identity(self, request: RunRequest, job_ids: set[str]) -> None:
        """Workers against other schemas stop the run: its arrays are cancelled."""
        try:
            db.retrying(request.tables[0].cls.connection, lambda: check_identity(request.run_id, request.tables, FIX),
                        WHO, DB_PATIENCE)
        except Mismatch:
            subprocess.run(["scancel", *job_ids], capture_output=True, timeout=60)
            raise

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
        states = self._squeue(ids)
        if states is None:
            return None
        return not any(t.state in ACTIVE_STATES for job, t in states.items() if job.split("_")[0] in ids)

    # ----------------------------------------------------------------- render
    def render(self, request: RunRequest, out: Path) -> list[Path]:
        """sbatch scripts for review or for a login node without Python: every table as
        a pull array (``--enqueue``), chained by ``submit.sh`` with afterany.

        The scripts are what ``run --backend slurm`` submits, less submitit: the worker
        runs as a job step (``srun``, so that the USR2 time-limit notice reaches it), logs
        go to ``logs/`` beside the scripts, and a task stopped by USR2 requeues itself.
        Nothing machine-specific and no credential is written."""
        from submitit.slurm.slurm import _make_sbatch_string

        out.mkdir(parents=True, exist_ok=True)
        written = []
        submit = ["#!/bin/bash", "# Submit the pipeline: one array per table, downstream after upstream.",
                  "# The database credentials come from the environment (DJ_HOST, DJ_USER, DJ_PASS) or",
                  "# datajoint.json on the compute nodes; they are never written into these scripts.",
                  "set -euo pipefail", 'cd "$(dirname "$0")"', "mkdir -p logs", "deps="]
        requeue = ["code=$?",
                   f"if [ \"$code\" -eq {128 + signal.SIGUSR2} ]; then  # USR2: the worker released its keys",
                   '  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"',
                   "fi",
                   'exit "$code"']
        levels = levels_of(request.tables)
        for n, level in enumerate(levels):
            level_vars = []
            for info in level:
                resources = self.config.for_table(info)
                command = ["dj-orchestrate", "work", request.pipeline, "--table", info.name, "--enqueue",
                           "--shard-index", "$SLURM_ARRAY_TASK_ID"]
                if request.key_json:
                    command += ["--key", request.key_json]
                text = _make_sbatch_string(
                    command=" ".join(c if c.startswith("$") else shlex.quote(c) for c in command),
                    folder=RENDER_LOGS, map_count=resources.pull_workers, teardown=requeue,
                    **resources.submitit_parameters(f"djo-{info.name}"))
                path = out / f"{n:02d}-{info.name}.sbatch"
                path.write_text(text.replace(RENDER_LOGS, "logs").rstrip("\n") + "\n")
                written.append(path)
                var = f"j_{info.name}"
                submit.append(f'{var}=$(sbatch --parsable ${{deps:+--dependency=afterany${{deps}}}} {path.name})')
                submit.append(f'echo "{info.name}: ${var}"')
                level_vars.append(var)
            if n + 1 < len(levels):
                submit.append("deps=" + '"${deps}' + "".join(f":${{{v}}}" for v in level_vars) + '"')
        script = out / "submit.sh"
        script.write_text("\n".join(submit) + "\n")
        script.chmod(0o755)
        return [*written, script]


def _arrays(run: dict) -> dict[str, list[str]]:
    """A run's arrays per table, from its ledger row (``Square: 64; Total: 65,66``)."""
    items = (item.partition(": ") for item in filter(None, (run.get("backend_info") or "").split("; ")))
    return {name: ids.split(",") for name, _, ids in items}


def _stop_if_never_starts(arrays: dict[str, list[str]], tasks: dict[str, Task]) -> None:
    """--wait: a task SLURM will never start (its time over the partition's limit, an
    unsatisfiable dependency, ...) ends the wait with SLURM's reason, instead of a wait
    without end. The arrays stay queued: the user decides, and their keys are pending."""
    stuck = {j: t.reason for j, t in tasks.items() if t.state == "PENDING" and t.reason in NEVER_STARTS}
    if not stuck:
        return
    jobs = sorted({j.split("_")[0] for j in stuck}, key=int)
    names = [name for name, ids in arrays.items() if set(ids) & set(jobs)]
    raise UsageError(f"SLURM will not start {len(stuck)} task(s) of {', '.join(names)} ({', '.join(jobs)}): "
                     f"{', '.join(sorted(set(stuck.values())))}",
                     f"their keys stay pending; fix the config, `scancel {' '.join(jobs)}` and run again")


def _slurm_words(text: str) -> str:
    """SLURM's own reason from a command's output: its ``error:`` lines, without the
    tool's prefix (``sbatch: error: Batch job submission failed: ...``)."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    errors = [re.sub(r"^\w+: error: ", "", line) for line in lines if re.match(r"^\w+: error: ", line)]
    return "; ".join(dict.fromkeys(errors)) if errors else (lines[-1] if lines else "no output")


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
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
