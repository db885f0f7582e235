"""dj-orchestrate's own records: one row per run, one per shard (or pull worker).

A small DataJoint schema (``DJO_LEDGER_SCHEMA``, default ``dj_orchestrate``) beside the
pipeline's: which backend ran what, where its logs are, what each shard did. The
jobs tables stay the truth about keys; the ledger is the history of launches.
"""

from __future__ import annotations

import datetime
import getpass
import hashlib
import json
import os
import platform
import time
import uuid
from functools import lru_cache
from typing import Any, Callable, Iterable, TypeVar

import datajoint as dj

LEDGER_SCHEMA_ENV = "DJO_LEDGER_SCHEMA"
T = TypeVar("T")


@lru_cache(maxsize=None)
def tables() -> tuple[Any, Any, Any]:
    """Declare (once per process) and return the ``Run``, ``Shard`` and ``RunPipeline`` tables."""
    return _racing(lambda: _define(dj.Schema(os.environ.get(LEDGER_SCHEMA_ENV, "dj_orchestrate"))))


def _racing(declare: Callable[[], T]) -> T:
    """``declare()``, where another process may declare the same schema or table at this
    very moment (two runs started together on a new ledger): the loser of that race is
    told it exists already, and finds it declared on a second try."""
    for attempt in range(3):
        try:
            return declare()
        except Exception as err:
            if attempt == 2 or not any(word in str(err) for word in ("already exists", "uplicate")):
                raise
            time.sleep(0.2)
    raise AssertionError("unreachable")


def _define(schema: Any) -> tuple[Any, Any, Any]:
    """The ledger's tables in ``schema``: declared unless the schema says not to."""

    @schema
    class Run(dj.Manual):
        definition = """
        # one dj-orchestrate run of a pipeline
        run_id          : varchar(32)
        ---
        pipeline        : varchar(1023)
        backend         : varchar(32)
        tables          : varchar(4000)       # comma-separated class names
        state           : varchar(16)         # running, submitted, done, failed, interrupted
        host            : varchar(255)
        user            : varchar(255)
        started         : datetime(3)
        ended=null      : datetime(3)
        backend_info="" : varchar(4000)       # e.g. the SLURM array job ids
        """

    @schema
    class Shard(dj.Manual):
        definition = """
        # one launched worker: a fixed key range, or a pull worker (lo/hi empty)
        -> Run
        table_name      : varchar(255)
        shard           : int32
        ---
        lo=""           : varchar(4000)       # JSON first key, inclusive
        hi=""           : varchar(4000)       # JSON end key, exclusive
        state="planned" : varchar(16)         # planned, running, done, interrupted
        backend_job_id="" : varchar(255)
        host=""         : varchar(255)
        pid=0           : int32
        log_path=""     : varchar(1023)
        started=null    : datetime(3)
        ended=null      : datetime(3)
        keys_done=0     : int32
        keys_failed=0   : int32
        """

    @schema
    class RunPipeline(dj.Manual):
        definition = """
        # what identifies the pipeline of a run (runs recorded by versions before it have none)
        -> Run
        ---
        pipeline_id     : char(32)            # md5 of module_file and schemas
        module_file     : varchar(1023)       # the pipeline module's file, resolved
        schemas         : varchar(4000)       # comma-separated schemas of its tables
        """

    return Run, Shard, RunPipeline


def _define_identity(schema: Any, Run: Any) -> Any:
    """``WorkerIdentity``, a table of its own so that a ledger declared before it stays
    valid: declared with the next new run, absent for readers until then."""

    @schema
    class WorkerIdentity(dj.Manual):
        definition = """
        # what a run's worker connected to and imported, when it started (compared by the driver)
        -> Run
        worker          : varchar(255)        # host:pid
        ---
        db_host         : varchar(255)
        db_port         : int32
        db_user         : varchar(255)
        module_file     : varchar(1023)       # the pipeline module's file, as the worker resolved it
        schemas         : varchar(4000)       # comma-separated schemas of its tables, as the worker imported them
        started         : datetime(3)
        """

    return WorkerIdentity


@lru_cache(maxsize=None)
def _identity_table(name: str) -> Any:
    return _racing(lambda: _define_identity(dj.Schema(name), tables()[0]))


def record_identity(run_id: str, worker: str, conn_info: dict, module_file: str, schemas: list[str]) -> None:
    """A worker's word on what it connected to (never the password)."""
    _identity_table(os.environ.get(LEDGER_SCHEMA_ENV, "dj_orchestrate")).insert1(
        dict(run_id=run_id, worker=worker[:255], db_host=str(conn_info.get("host", ""))[:255],
             db_port=int(conn_info.get("port") or 0), db_user=str(conn_info.get("user", ""))[:255],
             module_file=module_file[:1023], schemas=",".join(schemas)[:4000], started=now()),
        skip_duplicates=True)


def worker_identities(run_id: str) -> list[dict]:
    """What the run's workers recorded, read only ([]: none yet, or no such table)."""
    found = _existing()
    if found is None:
        return []
    table = _define_identity(dj.Schema(os.environ.get(LEDGER_SCHEMA_ENV, "dj_orchestrate"), create_schema=False,
                                       create_tables=False), found[0])
    return (table & {"run_id": run_id}).to_dicts() if table().is_declared else []


def run_schemas(run_id: str) -> list[str] | None:
    """The schemas the run's driver imported the pipeline against (None: not recorded)."""
    found = _existing()
    rows = (found[2] & {"run_id": run_id}).to_dicts() if found and found[2] is not None else []
    return [name for name in rows[0]["schemas"].split(",") if name] if rows else None


def _existing() -> tuple[Any, Any, Any | None] | None:
    """The ledger's tables for reading only: None when there is no ledger, and no
    ``RunPipeline`` in a ledger from an earlier version. Creates nothing (``status``
    works for a user who may only SELECT)."""
    name = os.environ.get(LEDGER_SCHEMA_ENV, "dj_orchestrate")
    try:
        schema = dj.Schema(name, create_schema=False, create_tables=False)
    except dj.DataJointError:
        return None
    run, shard, run_pipeline = _define(schema)
    if not run().is_declared:
        return None
    return run, shard, run_pipeline if run_pipeline().is_declared else None


def pipeline_id(module_file: str, schemas: list[str]) -> str:
    return hashlib.md5("\0".join([module_file, *schemas]).encode()).hexdigest()


def pipeline_key(schemas: list[str]) -> str:
    """What a pipeline's servers share (``Server.pipeline_key``, the name of their leader
    lock): its schemas, wherever its module is."""
    return hashlib.md5(",".join(schemas).encode()).hexdigest()


def now() -> datetime.datetime:
    return datetime.datetime.now()


def new_run(pipeline: str, backend: str, table_names: list[str], state: str = "running",
            identity: tuple[str, list[str]] | None = None) -> str:
    """Record a run; ``identity`` (module file, schemas) is what ``status`` filters by."""
    run_id = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]
    Run = tables()[0]
    # declared here, not by workers at once: workers that declared them together lost a first
    # flush (PostgreSQL: one key's duration of 21, in tests/test_dashboard.py)
    _identity_table(os.environ.get(LEDGER_SCHEMA_ENV, "dj_orchestrate"))
    make_stats(create=True)
    make_minutes(create=True)
    Run.insert1(
        dict(
            run_id=run_id,
            pipeline=pipeline,
            backend=backend,
            tables=",".join(table_names),
            state=state,
            host=platform.node(),
            user=getpass.getuser(),
            started=now(),
        )
    )
    if identity is not None:
        module_file, schemas = identity
        tables()[2].insert1(
            dict(run_id=run_id, pipeline_id=pipeline_id(module_file, schemas), module_file=module_file[:1023],
                 schemas=",".join(schemas)[:4000]))
    return run_id


def finish_run(run_id: str, state: str, backend_info: str | None = None) -> None:
    Run = tables()[0]
    row = {"run_id": run_id, "state": state, "ended": now()}
    if backend_info is not None:
        row["backend_info"] = backend_info[:4000]
    Run.update1(row)


def set_backend_info(run_id: str, info: str) -> None:
    Run = tables()[0]
    Run.update1({"run_id": run_id, "backend_info": info[:4000]})


def run_row(run_id: str) -> dict | None:
    """A run's row, read only (None: no ledger, or no such run)."""
    found = _existing()
    rows = (found[0] & {"run_id": run_id}).to_dicts() if found else []
    return rows[0] if rows else None


def backend_info(run_id: str) -> str | None:
    """A run's ``backend_info``, read only (None: no ledger, or no such run)."""
    row = run_row(run_id)
    return row["backend_info"] if row else None


def add_shards(run_id: str, table_name: str, bounds: list[tuple[str, str]], **fields: Any) -> None:
    """Record the planned shards of one table: ``bounds`` are JSON (lo, hi) pairs."""
    Shard = tables()[1]
    Shard.insert(
        [dict(run_id=run_id, table_name=table_name, shard=i, lo=lo, hi=hi, **fields) for i, (lo, hi) in enumerate(bounds)]
    )


def shard(run_id: str, table_name: str, index: int) -> dict | None:
    Shard = tables()[1]
    rows = (Shard & {"run_id": run_id, "table_name": table_name, "shard": index}).to_dicts()
    return rows[0] if rows else None


def record_shard(run_id: str, table_name: str, index: int, **fields: Any) -> None:
    """Insert or update one shard's row (pull workers add their own)."""
    Shard = tables()[1]
    key = {"run_id": run_id, "table_name": table_name, "shard": index}
    if Shard & key:
        Shard.update1({**key, **fields})
    else:
        Shard.insert1({**key, **fields})


def recent_runs(identity: tuple[str, list[str]] | None = None, aliases: Iterable[str] = (), limit: int = 5) -> list[dict]:
    """The latest runs (of the pipeline with this identity), read only. Runs recorded
    before runs had an identity are matched by the spec they were started with (one of
    ``aliases``)."""
    found = _existing()
    if found is None:
        return []
    Run, Shard, RunPipeline = found
    old = [{"pipeline": a} for a in sorted(aliases)]
    if identity is None:
        runs = Run.to_dicts(order_by="started DESC", limit=limit)
    elif RunPipeline is None:
        runs = (Run & old).to_dicts(order_by="started DESC", limit=limit)
    else:
        mine = Run & (RunPipeline & {"pipeline_id": pipeline_id(*identity)})
        runs = mine.to_dicts(order_by="started DESC", limit=limit)
        runs += ((Run - RunPipeline) & old).to_dicts(order_by="started DESC", limit=limit)
        runs = sorted(runs, key=lambda r: r["started"], reverse=True)[:limit]
    shards: dict[str, list[dict]] = {}  # of all these runs in one query
    for s in (Shard & [{"run_id": r["run_id"]} for r in runs]).proj("keys_done", "keys_failed").to_dicts():
        shards.setdefault(s["run_id"], []).append(s)
    for run in runs:
        mine = shards.get(run["run_id"], [])
        run["shards"] = len(mine)
        run["keys_done"] = sum(s["keys_done"] for s in mine)
        run["keys_failed"] = sum(s["keys_failed"] for s in mine)
    return runs


def open_runs(pipeline: str, backend: str, table_names: list[str]) -> list[dict]:
    """Runs of ``pipeline`` on ``backend`` not recorded as ended that made any of these
    tables (whether their workers still run is the scheduler's to say)."""
    found = _existing()
    if found is None:
        return []
    rows = (found[0] & {"pipeline": pipeline, "backend": backend} & "ended IS NULL").to_dicts(order_by="started DESC", limit=20)
    return [r for r in rows if set(r["tables"].split(",")) & set(table_names)]


def shards_of(run_id: str) -> list[dict]:
    Shard = tables()[1]
    return (Shard & {"run_id": run_id}).to_dicts(order_by="table_name, shard")


def as_json(row: dict) -> dict:
    return json.loads(json.dumps(row, default=str))


def _define_key_failures(schema: Any) -> Any:
    @schema
    class KeyFailure(dj.Manual):
        definition = """
        # a key of a table that can have no jobs table (dj_orchestrate.serial): failed, to retry, or ignored
        table_name        : varchar(255)      # the table's full name
        key_hash          : char(32)          # md5 of the key as sorted JSON
        ---
        key               : varchar(4000)     # the key, JSON
        status            : varchar(16)       # error; pending: tried again after scheduled_time; ignore
        attempts=0        : int32
        error_message=""  : varchar(2047)
        error_stack=null  : <blob>
        host=""           : varchar(255)
        pid=0             : int32
        backend_job_id="" : varchar(255)
        log_path=""       : varchar(1023)
        completed_time    : datetime(3)
        scheduled_time    : datetime(3)
        """

    return KeyFailure


def key_failures(create: bool = False) -> Any | None:
    """The ``KeyFailure`` table (see ``_optional``)."""
    return _optional(_define_key_failures, create)


@lru_cache(maxsize=None)
def _declared(define: Callable[[Any], Any], name: str) -> Any:
    return _racing(lambda: define(dj.Schema(name)))


def _optional(define: Callable[[Any], Any], create: bool) -> Any | None:
    """A ledger table added after the first three, a table of its own so that a ledger
    an earlier version declared stays valid. ``create`` (a writer): declared if missing.
    Else None where it does not exist: readers create nothing (a SELECT-only account)."""
    name = os.environ.get(LEDGER_SCHEMA_ENV, "dj_orchestrate")
    if create:
        return _declared(define, name)
    try:
        schema = dj.Schema(name, create_schema=False, create_tables=False)
    except dj.DataJointError:
        return None
    table = define(schema)
    return table if table().is_declared else None


def _define_make_stats(schema: Any) -> Any:
    @schema
    class MakeStat(dj.Manual):
        definition = """
        # make durations of a table's keys in one run by one worker: sums, not a row per key
        run_id            : varchar(32)       # "" for a worker started without a run
        table_name        : varchar(255)      # the table's class name
        worker            : varchar(255)      # host:pid (each worker writes its own row)
        ---
        n                 : int32             # keys made
        total             : float64           # seconds, summed
        longest           : float64           # seconds
        buckets           : varchar(255)      # JSON counts per bound of dashboard.durations.BOUNDS
        updated           : datetime(3)
        """

    return MakeStat


def make_stats(create: bool = False) -> Any | None:
    """The ``MakeStat`` table (see ``_optional``)."""
    return _optional(_define_make_stats, create)


def _define_make_minutes(schema: Any) -> Any:
    @schema
    class MakeMinute(dj.Manual):
        definition = """
        # keys of a table made in one minute by one worker: throughput (rows older than durations.KEEP are deleted)
        minute            : datetime          # the minute's start (the worker's clock)
        table_name        : varchar(255)      # the table's class name
        worker            : varchar(255)      # host:pid (each worker writes its own rows)
        ---
        n                 : int32             # keys made
        """

    return MakeMinute


def make_minutes(create: bool = False) -> Any | None:
    """The ``MakeMinute`` table (see ``_optional``)."""
    return _optional(_define_make_minutes, create)


def _define_servers(schema: Any) -> Any:
    @schema
    class Server(dj.Manual):
        definition = """
        # a `dj-orchestrate serve` process: its role and its heartbeat
        server            : varchar(64)       # host:pid:start (unique per process)
        ---
        pipeline_key      : char(32)          # md5 of the pipeline's schemas: what its leader lock is named after
        pipeline          : varchar(1023)
        host              : varchar(255)
        pid               : int32
        role              : varchar(16)       # leader, standby, lost (a leader found replaced)
        interval_s        : float64
        started           : datetime(3)
        last_beat         : datetime(3)
        """

    return Server


def beat(server: str, **fields: Any) -> None:
    """Insert or refresh a serve process's row."""
    Server = _optional(_define_servers, True)
    row = {"server": server, **fields, "last_beat": now()}
    if Server & {"server": server}:  # (only this process writes its row; DataJoint's replace is MySQL's alone)
        Server.update1(row)
    else:
        Server.insert1(row)


def demote_leaders(pipeline_key: str, me: str) -> None:
    """A new leader holds the lock: any other row that says leader is a leader that lost it."""
    Server = _optional(_define_servers, True)
    for row in ((Server & {"pipeline_key": pipeline_key, "role": "leader"}) - {"server": me}).to_dicts():
        Server.update1({"server": row["server"], "role": "lost"})


def forget_server(server: str) -> None:
    (_optional(_define_servers, True) & {"server": server}).delete_quick()


def servers(key: str, within: datetime.timedelta = datetime.timedelta(days=1)) -> list[dict]:
    """The serve processes of the pipeline with this ``pipeline_key`` that beat within
    ``within``, read only ([]: no such table)."""
    Server = _optional(_define_servers, False)
    if Server is None:
        return []
    since = now() - within
    return (Server & {"pipeline_key": key} & f"last_beat > '{since.isoformat(sep=' ')}'").to_dicts(
        order_by="started")
