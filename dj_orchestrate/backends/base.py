"""What every backend shares: the run request, the launch plan (which tables get fixed
shards, which get pull slots, in what order), what each worker is told, and the
interface a backend implements to launch, follow and describe workers.

A backend module is the translation of one plan into one scheduler's terms; config
loading and per-table settings live in ``dj_orchestrate.config``."""

from __future__ import annotations

import shlex
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

from ..db import Target
from ..errors import UsageError
from ..flow import waiting
from ..jobs import JobTable, Restriction, reconcile_all
from ..pipeline import TableInfo, identity, levels_of
from ..planner import TablePlan, encode_bound, plan_table
from ..work import WorkSpec
from ..worker import Settings


@dataclass
class RunRequest:
    """Everything a backend needs to launch workers for one run."""

    pipeline: str
    tables: list[TableInfo]
    restriction: Restriction
    target: Target
    worker: Settings
    run_id: str
    log_dir: Path
    workers: int = 4
    shard_size: int | None = None
    shards: int | None = None
    wait: bool = True
    progress: bool = True
    key_json: str | None = None  # the --key restriction, for workers that enqueue


SUBMITTED = 3  # run() returned without waiting: the CLI exits 0 and says "submitted"


class Backend(ABC):
    """Launches workers for a run and reports how it ended (an exit code).

    ``ended_jobs`` answers, for reconcile, which of the given backend job ids (those this
    backend made: ``<name>:…``, see ``backends.maker``) are no longer running: a hint on
    top of the jobs table, never a replacement for it."""

    name: ClassVar[str]
    options: ClassVar[tuple[str, ...]] = ()  # `run` options this backend takes (e.g. "scheduler")

    @classmethod
    def create(cls, config_path: str | None = None, **options: Any) -> "Backend":
        """The backend for ``run``: its config section and the options given for it. An
        option meant for another backend is a mistake, not something to ignore."""
        given = {k: v for k, v in options.items() if v is not None}
        stray = sorted(set(given) - set(cls.options))
        if stray:
            raise UsageError(f"--{stray[0].replace('_', '-')} is not an option of --backend {cls.name}",
                             "leave it out, or pick the backend it belongs to (see `dj-orchestrate run --help`)")
        return cls.from_config(config_path, **given)

    @classmethod
    def from_config(cls, path: str | None = None, **options: Any) -> "Backend":
        return cls()

    def default_wait(self) -> bool:
        """Whether ``run`` follows the run when neither --wait nor --no-wait is given:
        yes where the workers live only as long as this command (the local backend, a
        Dask cluster started for the run)."""
        return False

    def check(self, tables: list[TableInfo], embedded: bool = False, wait: bool = False) -> None:
        """Refuse, before anything is written, a run this backend cannot do."""

    @abstractmethod
    def run(self, request: RunRequest) -> int:
        """Launch (and, with ``request.wait``, follow) the run: 0 ok, 1 keys failed,
        130 interrupted, SUBMITTED when it returned without waiting."""

    def describe(self, run: dict) -> str:
        """What the scheduler says about a run, for ``status`` (a hint, not the truth)."""
        return ""

    def run_ended(self, run: dict) -> bool | None:
        """Whether every worker of a submitted run (its ledger row) has ended, as the
        scheduler says: what a waiter asks when keys are left and nobody holds them
        (then nobody will make them). None: no answer, ask again later."""
        return None

    def resume(self, run: dict) -> list[str] | None:
        """The ``dj-orchestrate`` arguments that take up a run whose driver is gone, where
        its workers cannot finish without one (None: they finish by themselves)."""
        return None

    @classmethod
    def ended_jobs(cls, job_ids: set[str]) -> set[str]:
        return set()


def work_spec(request: RunRequest, tables: list[TableInfo], shard_index: int | None = None,
              fixed_shard: bool = False, enqueue: bool = False) -> WorkSpec:
    """What every backend tells each of its workers (``work.WorkSpec``): a process it
    starts gets ``to_argv()`` behind its own ``dj-orchestrate`` (this Python's module, or
    the image's entry point). ``enqueue``: a pull worker started after its upstream,
    which enqueues its tables' missing keys (within ``--key``) first."""
    return WorkSpec(request.pipeline, tuple(t.name for t in tables), request.worker, key_json=request.key_json,
                    run_id=request.run_id or None,  # (none in rendered manifests)
                    shard_index=shard_index, fixed_shard=fixed_shard, enqueue=enqueue)


def render_command(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def outcome(run_id: str) -> int:
    """1 when any worker of the run recorded a failed key, else 0."""
    from .. import ledger

    return 1 if any(s["keys_failed"] for s in ledger.shards_of(run_id)) else 0


def error_count(tables: list[TableInfo]) -> int:
    """Keys in ``error``: compared before and after a run, the keys that a run gave up on
    because their workers died (no worker records those as failed)."""
    return sum(JobTable(t.instance()).status_counts()["error"] for t in tables)


def ready_keys(tables: list[TableInfo]) -> int:
    """Keys that a worker could claim right now."""
    return sum(JobTable(t.instance()).status_counts()["ready"] for t in tables)


def has_work(level: list[TableInfo], restriction: Restriction) -> bool:
    """Keys to claim now, or keys never enqueued: a downstream table whose pull workers
    ran before its upstream keys were made (they were made in a later round)."""
    if ready_keys(level):
        return True
    return any((c := JobTable(t.instance()).counts(restriction))["missing"] > c["pending"] for t in level)


class Mismatch(UsageError):
    """The run's workers imported the pipeline against other schemas than its driver."""


def check_identity(run_id: str, tables: list[TableInfo], fix: str) -> None:
    """Stop (``Mismatch``, exit 2) a run whose workers imported the pipeline against other
    schemas than this driver did: a variable that names the schema, missing from the
    workers' environment, sends them to a schema where they find nothing to make (they
    refuse to work, see ``worker.record_identity``; this says why, at once). Only the
    schemas are compared: the module's path and the database's address may differ and be
    the same (another host's mount, a service name in a pod); they are named, to help."""
    from .. import ledger

    schemas = ",".join(identity(sys.modules[tables[0].cls.__module__])[1])
    wrong = next((w for w in ledger.worker_identities(run_id) if w["schemas"] != schemas), None)
    if wrong is not None:
        mine = tables[0].cls.connection.conn_info
        raise Mismatch(f"run {run_id}: worker {wrong['worker']} imported {wrong['module_file']} against schemas "
                       f"{wrong['schemas'] or 'none'} ({wrong['db_user']}@{wrong['db_host']}:{wrong['db_port']}), "
                       f"this run against {schemas} ({mine['user']}@{mine['host']}:{mine['port']}); stopped", fix)


def keys_left(tables: list[TableInfo], restriction: Restriction) -> dict[str, int]:
    """Per table, keys still missing or pending: after every worker is gone, keys that
    no worker claimed (they saw another database or schema, or none could start)."""
    left = {t.name: JobTable(t.instance()).counts(restriction)["missing"] for t in tables}
    return {name: n for name, n in left.items() if n}


def left_message(run_id: str, left: dict[str, int], tables: list[TableInfo]) -> str:
    """Why keys are left: some wait for a retry after their backoff (``--retries``), the
    rest no worker claimed (they saw another database or schema, or none could start)."""
    later = sum(c["pending"] - c["ready"] for c in (JobTable(t.instance()).status_counts() for t in tables if t.name in left))
    why = (f"{later} wait for a retry after their --backoff; run again once it has passed" if later
           else "its workers ended and none claimed them; see the workers' logs")
    return f"run {run_id}: {sum(left.values())} keys left ({', '.join(f'{t} {n}' for t, n in left.items())}): {why}"


def reconcile_run(request: RunRequest, ended_jobs: Callable[[set[str]], set[str]]) -> None:
    """Reconcile the run's tables; ``ended_jobs`` is the backend's hint, asked only about
    the jobs that still hold keys."""
    reserved = {j for t in request.tables for j in JobTable(t.instance()).reserved_backend_ids()}
    reconcile_all([t.instance() for t in request.tables], request.worker.policy, ended_jobs(reserved) if reserved else set())


def rerun_levels(request: RunRequest, ended_jobs: Callable[[set[str]], set[str]]) -> list[list[TableInfo]]:
    """After a round of workers ended: reconcile (``reconcile_run``); then the levels to
    run again: the first that has work left and every level after it (its new rows are
    the downstream's new keys). None when nothing can make progress (``flow.waiting``)."""
    reconcile_run(request, ended_jobs)
    if waiting(request.tables, request.restriction):  # keys are left that no worker can reach: another round cannot help
        return []
    levels = levels_of(request.tables)
    first = next((i for i, level in enumerate(levels) if has_work(level, request.restriction)), None)
    return [] if first is None else levels[first:]


@dataclass
class TableLaunch:
    """One table's workers in a run: fixed shards when its keys are known at submit
    time (``plan`` is set, one worker per shard, claiming its key range), else ``slots``
    pull workers that start after ``after`` (the tables of earlier levels), enqueue the
    table and claim whatever is pending."""

    info: TableInfo
    level: int
    after: list[str]
    slots: int
    plan: TablePlan | None = None

    @property
    def fixed(self) -> bool:
        return self.plan is not None

    def spec(self, request: RunRequest, shard_index: int | None = None) -> WorkSpec:
        """What the worker of one slot is told (``shard_index`` None: the scheduler
        gives it, e.g. its array or completion index)."""
        return work_spec(request, [self.info], shard_index, fixed_shard=self.fixed, enqueue=not self.fixed)

    def argv(self, request: RunRequest, shard_index: int | None = None) -> list[str]:
        """Its ``work`` arguments, for a scheduler that starts the command itself."""
        return self.spec(request, shard_index).to_argv()


def plan_launches(request: RunRequest, pull_slots: Callable[[TableInfo], int], fixed_first: bool = True,
                  levels: list[list[TableInfo]] | None = None) -> list[TableLaunch]:
    """The backend-free plan of a run that launches short-lived workers per table (SLURM
    arrays, Kubernetes Indexed Jobs, Airflow mapped tasks): the first level gets fixed
    shards (its keys are known now; a table with nothing missing gets no launch), each
    later table ``pull_slots(table)`` pull workers after every earlier level. A table that
    can have no jobs table gets one pull worker (one makes it at a time: ``serial``).
    Writes nothing: see ``record_fixed``."""
    launches: list[TableLaunch] = []
    before: list[str] = []
    for depth, level in enumerate(levels if levels is not None else levels_of(request.tables)):
        for info in level:
            serial = not JobTable(info.instance()).supported
            if depth == 0 and fixed_first:
                plan = plan_table(info, request.restriction, request.shard_size, request.shards)
                if plan.shards:
                    launches.append(TableLaunch(info, depth, [], plan.shards, plan))
                elif serial and plan.missing:
                    launches.append(TableLaunch(info, depth, [], 1))
            else:
                launches.append(TableLaunch(info, depth, list(before), 1 if serial else pull_slots(info)))
        before += [t.name for t in level]
    return launches


def record_fixed(request: RunRequest, launches: list[TableLaunch]) -> None:
    """Enqueue the fixed-shard tables and record their shards in the ledger: done once
    the scheduler accepted every launch, so that a rejected run leaves nothing behind."""
    from .. import ledger

    for launch in launches:
        if launch.plan is not None:
            JobTable(launch.info.instance()).enqueue(request.restriction)
            ledger.add_shards(request.run_id, launch.info.name,
                              [tuple(map(encode_bound, launch.plan.shard_bounds(i))) for i in range(launch.plan.shards)])
