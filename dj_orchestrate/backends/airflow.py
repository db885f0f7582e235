"""Airflow: a DAG file that users drop into their dags folder.

``dj-orchestrate airflow render`` writes one DAG per pipeline: a task group per
auto-populated table, upstream first, each an ``enqueue`` task (the table's missing
keys into its jobs table; returns the shard slots), then a ``check`` task that fails
the run when keys ended in error. Where a table's work runs is its mode: ``worker``
maps a ``work`` task over the slots (one ``dj-orchestrate work`` each, in the Airflow
worker); ``slurm``, ``dask`` and ``kubernetes`` have a ``submit`` task (``run --backend
B --no-wait``) and a ``wait`` task that defers to a trigger, which asks ``airflow
progress`` until the table's keys are made or the run's workers are gone, holding no
worker slot meanwhile. The tasks run ``dj_orchestrate.airflow_tasks`` in the Airflow
worker (and triggerer), which runs ``dj-orchestrate`` in the lab's Python.

The file is data and wiring only: it imports ``airflow.sdk`` and that small runtime,
never DataJoint or the pipeline, makes no database call at parse time, and holds no
credential (it names an Airflow connection, resolved on the worker at run time). The
jobs tables stay the truth; Airflow retries only relaunch workers.

Here: the ``[airflow]`` settings, the rendering, and the ``enqueue``/``progress``/
``check`` steps that the DAG's tasks run through the CLI (in the lab's Python, without
Airflow).
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from .. import __version__
from ..config import BackendConfig, Settings
from ..errors import UsageError
from ..jobs import JobTable, Restriction, reconcile_all
from ..pipeline import TableInfo
from . import BACKENDS, get
from .base import RunRequest

EXTRA = "pip install 'dj-orchestrate[airflow]'"
MAX_MAP_LENGTH = 1024  # Airflow's default [core] max_map_length; the runtime also reads the worker's own
MODES = ("worker", *(name for name in BACKENDS if name != "local"))  # worker, or a backend a table is handed to
DAG_ID = re.compile(r"[A-Za-z0-9_.-]{1,250}")
CRON_PRESETS = ("@once", "@continuous", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly")


@dataclass(frozen=True)
class AirflowSettings(Settings):
    """Per-table Airflow settings: ``[airflow]`` in dj_orchestrate.toml, overridden by a
    table class's ``airflow`` dict, overridden by ``[airflow.tables.<Table>]``."""

    label: ClassVar[str] = "Airflow setting"

    pool: str | None = None  # the Airflow pool the table's work tasks draw from, e.g. "gpu"
    pool_slots: int = 1  # slots of that pool one work task takes
    max_active_tis_per_dag: int | None = None  # most work tasks of the table running at once
    retries: int = 2  # Airflow relaunches of a worker that died (key retries stay in the jobs table)
    retry_delay_s: int = 30
    shard_size: int = 1000  # keys per mapped work task
    max_shards: int = MAX_MAP_LENGTH  # most mapped work tasks per table: beyond it, shards grow
    python: str | None = None  # the lab's Python on the workers (default: the Airflow worker's own)
    mode: str = "worker"  # where work runs: worker (the Airflow worker itself), slurm, dask or kubernetes
    poll_s: int = 30  # seconds between the wait task's looks at the jobs table (modes other than worker)
    wait_timeout_s: int | None = None  # backend modes: fail the wait after this long (a scheduler that never answers)
    timeout: float | None = None  # seconds a make may take, per key (see dj_orchestrate.watchdog)

    def parsed(self, where: str) -> "AirflowSettings":
        if self.mode not in MODES:
            raise UsageError(f"mode {self.mode!r} in {where} is not a mode", f"valid modes: {', '.join(MODES)}")
        for name, low in (("pool_slots", 1), ("retries", 0), ("retry_delay_s", 0), ("shard_size", 1), ("max_shards", 1),
                          ("poll_s", 1)):
            if getattr(self, name) < low:
                raise UsageError(f"{name} in {where} must be at least {low}, got {getattr(self, name)}", f"e.g. {name} = {max(low, 2)}")
        if self.max_shards > MAX_MAP_LENGTH:
            raise UsageError(f"max_shards = {self.max_shards} in {where} exceeds Airflow's max_map_length ({MAX_MAP_LENGTH})",
                             f"use at most {MAX_MAP_LENGTH}: shards grow instead")
        if self.wait_timeout_s is not None and self.wait_timeout_s < 1:
            raise UsageError(f"wait_timeout_s in {where} must be at least 1", "e.g. wait_timeout_s = 86400 (a day)")
        if self.max_active_tis_per_dag is not None and self.max_active_tis_per_dag < 1:
            raise UsageError(f"max_active_tis_per_dag in {where} must be at least 1", "e.g. max_active_tis_per_dag = 4")
        return self


def load_config(path: str | None = None) -> BackendConfig[AirflowSettings]:
    """``[airflow]`` of the config file (see ``dj_orchestrate.config``)."""
    return BackendConfig.load("airflow", AirflowSettings, path)


# ------------------------------------------------------------ render-time checks
def require_airflow() -> None:
    """The DAG is for Airflow 3 (``airflow.sdk``): refuse to render one for nothing."""
    try:
        version = importlib.metadata.version("apache-airflow")
    except importlib.metadata.PackageNotFoundError:
        raise UsageError("apache-airflow is not installed, so the DAG could not be checked or run here", EXTRA) from None
    if int(version.split(".")[0]) < 3:
        raise UsageError(f"apache-airflow {version} is too old: the DAG uses airflow.sdk (Airflow 3)", EXTRA)


def check_schedule(schedule: str | None) -> None:
    """A cron expression or preset as Airflow reads it (croniter, Airflow's own parser)."""
    if schedule is None or schedule in CRON_PRESETS:
        return
    from croniter import croniter

    if not croniter.is_valid(schedule):
        raise UsageError(f"--schedule {schedule!r} is not a cron expression",
                         f'e.g. --schedule "0 2 * * *" (02:00 daily) or one of {", ".join(CRON_PRESETS)}')


def check_mode(mode: str) -> None:
    """``worker`` runs in the Airflow worker; the other modes hand work to a backend,
    which must be installed here: the error names its extra."""
    if mode != "worker":
        get(mode)


def default_dag_id(pipeline: str) -> str:
    """``my_lab.pipeline`` → ``my_lab_pipeline``; a file's stem for a path."""
    name = pipeline.rsplit("/", 1)[-1].removesuffix(".py") if pipeline.endswith(".py") else pipeline
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def check_dag_id(dag_id: str) -> str:
    if not DAG_ID.fullmatch(dag_id):
        raise UsageError(f"--dag-id {dag_id!r} is not an Airflow DAG id",
                         "use letters, digits, '_', '.' and '-' (at most 250), e.g. --dag-id nightly_ephys")
    return dag_id


# ---------------------------------------------------------------------- render
@dataclass(frozen=True)
class DagOptions:
    """What ``airflow render`` was told, beyond the pipeline and its tables."""

    dag_id: str
    schedule: str | None = None
    conn_id: str = "datajoint_default"
    command: str = ""  # the render command line, for the file's header


def direct_upstream(infos: list[TableInfo]) -> dict[str, list[str]]:
    """Per table, the selected tables it waits for directly (``TableInfo.upstream``:
    foreign keys, custom key_source fan-ins and make's reads alike), without those
    already implied through another one."""
    by_full = {t.full_name: t.name for t in infos}
    ancestors = {t.full_name: set(t.upstream) & set(by_full) for t in infos}
    return {t.name: [by_full[u] for u in sorted(ancestors[t.full_name], key=list(by_full).index)
                     if not any(u in ancestors[v] for v in ancestors[t.full_name])]
            for t in infos}


def table_spec(settings: AirflowSettings, after: list[str]) -> dict[str, Any]:
    """One table's entry in the DAG file: its upstream groups, where its work runs (and
    how often a backend mode's wait looks), sharding, the Python its workers run in, and
    the work task's Airflow arguments (only those set)."""
    task = {"retries": settings.retries, "retry_delay": float(settings.retry_delay_s), "pool": settings.pool,
            "pool_slots": settings.pool_slots if settings.pool else None,
            "max_active_tis_per_dag": settings.max_active_tis_per_dag}
    waits = settings.mode != "worker"
    spec = {"after": after, "mode": settings.mode, "poll_s": settings.poll_s if waits else None,
            "wait_timeout_s": settings.wait_timeout_s if waits else None,
            "shard_size": settings.shard_size, "max_shards": settings.max_shards,
            "python": settings.python, "timeout": settings.timeout,
            "task": {k: v for k, v in task.items() if v is not None}}
    return {k: v for k, v in spec.items() if v is not None}


def render(request: RunRequest, config: BackendConfig[AirflowSettings], options: DagOptions) -> str:
    """The DAG file's text: the same pipeline, options and config give the same text."""
    after = direct_upstream(request.tables)
    tables = {t.name: table_spec(config.for_table(t), after[t.name]) for t in request.tables}
    pools = sorted({spec["task"]["pool"] for spec in tables.values() if "pool" in spec["task"]})
    pipeline = {"pipeline": request.pipeline, "conn_id": options.conn_id, "python": config.defaults.python}
    if any(spec["mode"] != "worker" for spec in tables.values()) and config.source != "defaults":
        pipeline["config"] = str(Path(config.source).resolve())  # the backend's settings, for submit and progress
    key = request.restriction.keys or None
    return TEMPLATE.format(
        dag_id=options.dag_id, dag_id_literal=_literal(options.dag_id), pipeline=request.pipeline, version=__version__, command=options.command,
        conn_id=options.conn_id,
        pools="".join(f"\n    airflow pools set {p} <slots> 'dj-orchestrate: {p} work'" for p in pools) or " none",
        pipeline_spec=_literal(pipeline), schedule=_literal(options.schedule),
        tables="{\n" + "".join(f"    {_literal(name)}: {_literal(spec)},\n" for name, spec in tables.items()) + "}",
        key=_literal(key[0] if key and len(key) == 1 else key),
    )


def _literal(value: Any) -> str:
    """A Python literal in the style of the rest of the file (double quotes)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_literal, value)) + "]"
    if isinstance(value, str):
        return json.dumps(value)  # also a valid Python string literal
    return repr(value)


TEMPLATE = '''"""Airflow DAG {dag_id!r} for the DataJoint pipeline {pipeline}.

Generated by dj-orchestrate {version}:
    {command}
Do not edit: render again (add --check to find out whether this file is stale).

One task group per auto-populated table, upstream first. In each, ``enqueue`` puts the
table's missing keys into its jobs table and returns the shard slots; then, by the
table's mode, ``work`` runs one ``dj-orchestrate work`` per slot in the Airflow worker
(worker), or ``submit`` hands the keys to that backend (slurm, dask, kubernetes) and
``wait`` defers until they are made or its workers are gone, holding no worker slot.
``check`` fails the run when keys ended in error, naming them. The jobs tables are the
truth: a colleague's populate() and the other backends never make a key twice, and
Airflow retries only relaunch workers (per-key attempts and errors stay in the jobs
tables: ``dj-orchestrate errors``, ``retry``).

Database: the Airflow connection {conn_id!r} (mysql or postgres), resolved on the worker
(and triggerer) at run time; without it, their own DataJoint configuration (DJ_*,
datajoint.json).
This file holds no credential, makes no database call, and imports neither DataJoint
nor the pipeline. Pools the tasks use:{pools}
"""

from __future__ import annotations

import datetime

from airflow.sdk import DAG, Param, TaskGroup, task

from dj_orchestrate.airflow_tasks import WaitForTable, check, enqueue, submit, work

PIPELINE = {pipeline_spec}

TABLES = {tables}

with DAG(
    dag_id={dag_id_literal},
    schedule={schedule},
    start_date=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["dj-orchestrate"],
    doc_md=__doc__,
    params={{
        "key": Param(
            {key},
            type=["null", "object", "array"],
            title="Keys",
            description='Make only these keys: an object such as {{"session_id": 3}}, or a list of them. Empty: every key.',
        ),
        "tables": Param(
            [],
            type="array",
            items={{"type": "string", "enum": list(TABLES)}},
            uniqueItems=True,
            title="Tables",
            description="Make only these tables (their upstream tables are not implied). Empty: every table.",
        ),
    }},
) as dag:
    groups: dict[str, TaskGroup] = {{}}
    for name, table in TABLES.items():
        with TaskGroup(name) as group:
            slots = task(task_id="enqueue", trigger_rule="none_failed", retries=table["task"]["retries"])(enqueue)(
                PIPELINE, name, table
            )
            if table["mode"] == "worker":
                task(task_id="work", map_index_template="{{{{ task.op_kwargs['slot']['label'] }}}}", **table["task"])(
                    work
                ).partial(pipeline=PIPELINE, table=name, settings=table).expand(slot=slots)
            else:
                run = task(task_id="submit", retries=table["task"]["retries"])(submit)(PIPELINE, name, table, slots)
                WaitForTable(task_id="wait", pipeline=PIPELINE, table=name, settings=table, run=run, retries=0)
        for upstream in table["after"]:
            groups[upstream] >> group
        groups[name] = group
    last = [groups[name] for name in TABLES if not any(name in table["after"] for table in TABLES.values())]
    last >> task(task_id="check", trigger_rule="all_done", retries=0)(check)(PIPELINE, list(TABLES))
'''


# ------------------------------------------------ what the DAG's tasks run (CLI)
def shard_count(pending: int, shard_size: int, max_shards: int) -> int:
    """Mapped work tasks for ``pending`` keys: one per ``shard_size`` keys, at most
    ``max_shards`` (then each shard's workers simply make more keys)."""
    return min(max_shards, math.ceil(pending / shard_size)) if pending else 0


def enqueue(info: TableInfo, restriction: Restriction, shard_size: int, max_shards: int) -> dict[str, int]:
    """Enqueue the table's missing keys; the shards its pending keys make (one for a
    table that can have no jobs table: one worker makes it at a time, ``serial``)."""
    jt = JobTable(info.instance())
    added = jt.enqueue(restriction)
    pending = jt.status_counts()["pending"]
    return {"enqueued": added, "pending": pending,
            "shards": shard_count(pending, shard_size, max_shards if jt.supported else 1)}


def progress(info: TableInfo, restriction: Restriction, run_id: str, workers_ended: bool | None) -> dict[str, Any]:
    """Where a table stands in a backend mode's run, for the DAG's wait step: finished
    when no key within the restriction is left to make (made, failed or ignored), or
    when keys are left and the run's workers have ended (nobody will make them).
    ``workers_ended`` is the backend's answer, asked before the keys were counted: a
    worker that makes the last key and exits in between is no key left behind."""
    counts = JobTable(info.instance()).counts(restriction)
    left = counts["missing"] + counts["reserved"]
    return {"table": info.name, "run_id": run_id, **counts, "left": left, "workers_ended": workers_ended,
            "finished": left == 0 or workers_ended is True}


def unfinished(infos: list[TableInfo], restriction: Restriction) -> list[str]:
    """Why the run did not make every key, one line each (none: it did). Workers that
    died holding keys are reconciled first, so that nothing stays reserved; keys still
    reserved then are held by live workers (a wait that timed out leaves them making
    keys): not made yet, so named too."""
    reconcile_all([t.instance() for t in infos])
    lines = []
    for t in infos:
        jt = JobTable(t.instance())
        for e in jt.errors(restriction):
            lines.append(f"{t.name} {_key(e['key'])} failed: {e['error_message']}")
        counts = jt.counts(restriction)
        if counts["missing"]:
            lines.append(f"{t.name}: {counts['missing']} keys not made (a worker failed; see the work or wait task's log)")
        if counts["reserved"]:
            lines.append(f"{t.name}: {counts['reserved']} keys still being made by workers still running "
                         "(`dj-orchestrate status` shows them; a later run takes up any they leave)")
    return lines


def _key(key: dict) -> str:
    return json.dumps(key, default=str)

