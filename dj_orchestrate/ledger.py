"""dj-orchestrate's own records: one row per run, one per shard (or pull worker).

A small DataJoint schema (``DJO_LEDGER_SCHEMA``, default ``dj_orchestrate``) beside the
pipeline's: which backend ran what, where its logs are, what each shard did. The
jobs tables stay the truth about keys; the ledger is the history of launches.
"""

from __future__ import annotations

import datetime
import getpass
import json
import os
import platform
import uuid
from functools import lru_cache
from typing import Any

import datajoint as dj

LEDGER_SCHEMA_ENV = "DJO_LEDGER_SCHEMA"


@lru_cache(maxsize=None)
def tables() -> tuple[Any, Any]:
    """Declare (once per process) and return the ``Run`` and ``Shard`` tables."""
    schema = dj.Schema(os.environ.get(LEDGER_SCHEMA_ENV, "dj_orchestrate"))

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

    return Run, Shard


def now() -> datetime.datetime:
    return datetime.datetime.now()


def new_run(pipeline: str, backend: str, table_names: list[str], state: str = "running") -> str:
    run_id = datetime.datetime.now().strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]
    Run, _ = tables()
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
    return run_id


def finish_run(run_id: str, state: str, backend_info: str | None = None) -> None:
    Run, _ = tables()
    row = {"run_id": run_id, "state": state, "ended": now()}
    if backend_info is not None:
        row["backend_info"] = backend_info[:4000]
    Run.update1(row)


def set_backend_info(run_id: str, info: str) -> None:
    Run, _ = tables()
    Run.update1({"run_id": run_id, "backend_info": info[:4000]})


def add_shards(run_id: str, table_name: str, bounds: list[tuple[str, str]], **fields: Any) -> None:
    """Record the planned shards of one table: ``bounds`` are JSON (lo, hi) pairs."""
    _, Shard = tables()
    Shard.insert(
        [dict(run_id=run_id, table_name=table_name, shard=i, lo=lo, hi=hi, **fields) for i, (lo, hi) in enumerate(bounds)]
    )


def shard(run_id: str, table_name: str, index: int) -> dict | None:
    _, Shard = tables()
    rows = (Shard & {"run_id": run_id, "table_name": table_name, "shard": index}).to_dicts()
    return rows[0] if rows else None


def record_shard(run_id: str, table_name: str, index: int, **fields: Any) -> None:
    """Insert or update one shard's row (pull workers add their own)."""
    _, Shard = tables()
    key = {"run_id": run_id, "table_name": table_name, "shard": index}
    if Shard & key:
        Shard.update1({**key, **fields})
    else:
        Shard.insert1({**key, **fields})


def recent_runs(limit: int = 5) -> list[dict]:
    Run, Shard = tables()
    runs = Run.to_dicts(order_by="started DESC", limit=limit)
    for run in runs:
        shards = (Shard & {"run_id": run["run_id"]}).to_dicts()
        run["shards"] = len(shards)
        run["keys_done"] = sum(s["keys_done"] for s in shards)
        run["keys_failed"] = sum(s["keys_failed"] for s in shards)
    return runs


def shards_of(run_id: str) -> list[dict]:
    _, Shard = tables()
    return (Shard & {"run_id": run_id}).to_dicts(order_by="table_name, shard")


def as_json(row: dict) -> dict:
    return json.loads(json.dumps(row, default=str))
