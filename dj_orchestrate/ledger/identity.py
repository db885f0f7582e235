"""What each worker of a run connected to and imported (``WorkerIdentity``), compared by
the driver with what it imported itself."""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import datajoint as dj

from .schema import LEDGER_SCHEMA_ENV, _existing, _racing, now, tables


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
