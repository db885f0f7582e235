"""The ledger's schema and its first three tables (``Run``, ``Shard``, ``RunPipeline``);
how every later table is declared (a table of its own, so that a ledger an earlier
version declared stays valid), and the clock the ledger writes."""

from __future__ import annotations

import datetime
import os
import time
from functools import lru_cache
from typing import Any, Callable, TypeVar

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


def now() -> datetime.datetime:
    return datetime.datetime.now()
