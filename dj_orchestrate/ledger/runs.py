"""Runs and their shards: one row per run, one per shard (or pull worker)."""

from __future__ import annotations

import datetime
import getpass
import hashlib
import json
import os
import platform
import uuid
from typing import Any, Iterable

from .identity import _identity_table
from .schema import LEDGER_SCHEMA_ENV, _existing, now, tables
from .stats import make_minutes, make_stats


def run_schemas(run_id: str) -> list[str] | None:
    """The schemas the run's driver imported the pipeline against (None: not recorded)."""
    found = _existing()
    rows = (found[2] & {"run_id": run_id}).to_dicts() if found and found[2] is not None else []
    return [name for name in rows[0]["schemas"].split(",") if name] if rows else None


def pipeline_id(module_file: str, schemas: list[str]) -> str:
    return hashlib.md5("\0".join([module_file, *schemas]).encode()).hexdigest()


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
