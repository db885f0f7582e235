"""Make durations, recorded per table, run and worker as sums and a small fixed
histogram (``ledger.MakeStat``), and the ETA per table computed from them.

Workers note each made key's duration in memory and write their row at most every few
seconds and when their run loop ends (``Worker.run``): the ledger grows by one row per worker and table, not one
per key (DataJoint deletes done jobs rows, so the jobs tables cannot say it)."""

from __future__ import annotations

import json
import os
import platform
import time
from typing import Any

from . import ledger

BOUNDS = (0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, float("inf"))  # seconds: the histogram's upper bounds
EVERY = 5.0  # seconds between a worker's writes

_pending: dict[tuple[str, str], dict[str, Any]] = {}
_written = [0.0]


def note(run_id: str | None, table: str, seconds: float) -> None:
    """(The worker's hook.) One key of ``table`` made in ``seconds``. Never fails the worker."""
    s = _pending.setdefault((run_id or "", table), {"n": 0, "total": 0.0, "longest": 0.0, "buckets": [0] * len(BOUNDS)})
    s["n"] += 1
    s["total"] += seconds
    s["longest"] = max(s["longest"], seconds)
    s["buckets"][next(i for i, b in enumerate(BOUNDS) if seconds <= b)] += 1
    if time.monotonic() - _written[0] >= EVERY:
        flush()


def flush() -> None:
    """Add what this worker noted since its last flush to its own rows (no other process
    writes them), then forget it: nothing noted carries over into another run or ledger."""
    _written[0] = time.monotonic()
    noted = dict(_pending)
    _pending.clear()
    if not noted:
        return
    try:
        # a worker of a run declares the table; one started without a run writes only into a ledger that exists
        table = ledger.make_stats(create=any(run_id for run_id, _ in noted))
        if table is None:
            return
        worker = f"{platform.node()}:{os.getpid()}"[:255]
        for (run_id, name), s in noted.items():
            key = {"run_id": run_id, "table_name": name, "worker": worker}
            old = (table & key).to_dicts()
            if old:
                o = old[0]
                s = {"n": s["n"] + o["n"], "total": s["total"] + o["total"], "longest": max(s["longest"], o["longest"]),
                     "buckets": [a + b for a, b in zip(s["buckets"], json.loads(o["buckets"]))]}
            row = {**key, "n": s["n"], "total": s["total"], "longest": s["longest"],
                   "buckets": json.dumps(s["buckets"]), "updated": ledger.now()}
            (table.update1 if old else table.insert1)(row)
    except Exception:  # the statistics are a courtesy: a worker never fails for them
        pass


def totals(tables: list[str]) -> dict[str, dict[str, Any]]:
    """Per table, over every run: count, sum, max and the histogram, summed by the database
    in one grouped statement (a row per worker, run and table: thousands on a long history,
    which DataJoint's fetch took a tenth of a second to decode)."""
    table = ledger.make_stats()
    if table is None or not tables:
        return {}
    conn = table.connection
    q = conn.adapter.quote_identifier
    if conn.adapter.backend == "mysql":
        buckets = [f"JSON_VALUE({q('buckets')}, '$[{i}]')" for i in range(len(BOUNDS))]
    else:
        buckets = [f"CAST(CAST({q('buckets')} AS JSON) ->> {i} AS BIGINT)" for i in range(len(BOUNDS))]
    rows = conn.query(
        f"SELECT {q('table_name')}, SUM({q('n')}), SUM({q('total')}), MAX({q('longest')}), "
        f"{', '.join(f'SUM({b})' for b in buckets)} FROM {table.full_table_name} "
        f"WHERE {q('table_name')} IN ({', '.join(['%s'] * len(tables))}) GROUP BY {q('table_name')}",
        args=tuple(tables)).fetchall()
    return {name: {"n": int(n), "sum": float(total), "max": float(longest), "buckets": [int(b or 0) for b in counts]}
            for name, n, total, longest, *counts in rows}


def etas(infos: list[Any], rows: list[dict], workers: dict[str, int]) -> dict[str, str]:
    """Per table: remaining keys × mean make duration ÷ live workers (at least one)."""
    stats = totals([t.name for t in infos])
    out: dict[str, str] = {}
    for r in rows:
        s, left = stats.get(r["table"]), r["pending"] + r["reserved"]
        if not left:
            out[r["table"]] = "done" if r["total"] else "-"
        elif s and s["n"]:
            out[r["table"]] = human(left * s["sum"] / s["n"] / max(1, workers.get(r["table"], 0)))
        else:
            out[r["table"]] = "?"
    return out


def human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"
