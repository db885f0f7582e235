"""What the DAG's tasks run through the CLI, in the lab's Python (without Airflow):
enqueue a table, say where it stands, say why a run did not make every key."""

from __future__ import annotations

import json
import math
from typing import Any

from ...jobs import JobTable, Restriction, reconcile_all
from ...pipeline import TableInfo


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
