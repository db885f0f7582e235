"""Make durations, recorded per table, run and worker as sums and a small fixed
histogram (``ledger.MakeStat``), and the ETA per table computed from them; and keys made
per table, worker and minute (``ledger.MakeMinute``, kept for ``KEEP``), the throughput
over the last hour.

Workers note each made key's duration in memory and write their rows at most every few
seconds and when their run loop ends (``Worker.run``): the ledger grows by one row per worker and table, not one
per key (DataJoint deletes done jobs rows, so the jobs tables cannot say it), and by one
per worker, table and minute it made keys in, for two hours."""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from collections.abc import Callable
from typing import Any

from . import ledger

BOUNDS = (0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, float("inf"))  # seconds: the histogram's upper bounds
EVERY = 5.0  # seconds between a worker's writes
KEEP = datetime.timedelta(hours=2)  # how long a minute's row is kept (the last hour is read)
PRUNE_EVERY = 600.0  # seconds between a worker's deletions of older rows

_pending: dict[tuple[str, str], dict[str, Any]] = {}
_minutes: dict[tuple[datetime.datetime, str], int] = {}  # (minute, table): keys made in it
_written = [0.0]
_pruned = [float("-inf")]


def note(run_id: str | None, table: str, seconds: float) -> None:
    """(The worker's hook.) One key of ``table`` made in ``seconds``. Never fails the worker."""
    s = _pending.setdefault((run_id or "", table), {"n": 0, "total": 0.0, "longest": 0.0, "buckets": [0] * len(BOUNDS)})
    s["n"] += 1
    s["total"] += seconds
    s["longest"] = max(s["longest"], seconds)
    s["buckets"][next(i for i, b in enumerate(BOUNDS) if seconds <= b)] += 1
    minute = (ledger.now().replace(second=0, microsecond=0), table)  # when it was made, not when it is written
    _minutes[minute] = _minutes.get(minute, 0) + 1
    if time.monotonic() - _written[0] >= EVERY:
        flush()


def flush() -> None:
    """Add what this worker noted since its last flush to its own rows (no other process
    writes them), then forget it: nothing noted carries over into another run or ledger."""
    _written[0] = time.monotonic()
    noted, minutes = dict(_pending), dict(_minutes)
    _pending.clear()
    _minutes.clear()
    if not noted:
        return
    try:
        # a worker of a run declares the tables; one started without a run writes only into a ledger that has them
        create = any(run_id for run_id, _ in noted)
        stats, per_minute = ledger.make_stats(create=create), ledger.make_minutes(create=create)
        worker = f"{platform.node()}:{os.getpid()}"[:255]
        if stats is not None:
            _add(stats, [({"run_id": run_id, "table_name": name, "worker": worker},
                          {"n": s["n"], "total": s["total"], "longest": s["longest"], "buckets": json.dumps(s["buckets"]),
                           "updated": ledger.now()}) for (run_id, name), s in noted.items()], _merge_stats)
        if per_minute is not None:
            _add(per_minute, [({"minute": minute, "table_name": name, "worker": worker}, {"n": n})
                              for (minute, name), n in minutes.items()], lambda new, old: {"n": new["n"] + old["n"]})
            _prune(per_minute)
    except Exception:  # the statistics are a courtesy: a worker never fails for them
        pass


def _add(table: Any, rows: list[tuple[dict, dict]], merge: Callable[[dict, dict], dict]) -> None:
    """This worker's rows of ``table``, (key, values) each: merged into what it wrote
    before, read in one statement; the new ones inserted in one (a worker of N tables
    sent two statements per table and flush)."""
    if not rows:
        return
    pk = table.primary_key
    old = {tuple(r[a] for a in pk): r for r in (table & [key for key, _ in rows]).to_dicts()}
    new = []
    for key, values in rows:
        before = old.get(tuple(key[a] for a in pk))
        if before is None:
            new.append({**key, **values})
        else:
            table.update1({**key, **merge(values, before)})
    if new:
        table.insert(new)


def _merge_stats(new: dict, old: dict) -> dict:
    buckets = [a + b for a, b in zip(json.loads(new["buckets"]), json.loads(old["buckets"]))]
    return {**new, "n": new["n"] + old["n"], "total": new["total"] + old["total"],
            "longest": max(new["longest"], old["longest"]), "buckets": json.dumps(buckets)}


def _prune(per_minute: Any) -> None:
    """Every worker's minutes older than ``KEEP`` deleted, by any worker now and then: the
    table holds two hours whoever wrote them."""
    if time.monotonic() - _pruned[0] < PRUNE_EVERY:
        return
    _pruned[0] = time.monotonic()
    cutoff = (ledger.now() - KEEP).isoformat(sep=" ", timespec="seconds")
    (per_minute & f"minute < '{cutoff}'").delete_quick()


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


def means(tables: list[str]) -> dict[str, float]:
    """Per table with durations recorded: the mean make duration over every run. A worker
    sizes its first claim of a table by it: a table's keys take about as long run after
    run, and a first claim of one key (nothing known yet) costs each table a claim, an
    enqueue of every table it feeds and a completion more. Empty where nothing can be read
    (no ledger yet, a read-only account without it): the worker then learns from one key."""
    try:
        return {name: s["sum"] / s["n"] for name, s in totals(tables).items() if s["n"]}
    except Exception:  # (a courtesy, as the statistics themselves: never fails a worker)
        return {}


def made_lately(tables: list[str], minutes: int = 60) -> dict[str, int]:
    """Per table: keys workers made in this minute and the ``minutes - 1`` before it (on
    the workers' clocks), summed by the database over a range of the primary key: at most
    ``KEEP`` of rows."""
    table = ledger.make_minutes()
    if table is None or not tables:
        return {}
    since = ledger.now().replace(second=0, microsecond=0) - datetime.timedelta(minutes=minutes - 1)
    q = table.connection.adapter.quote_identifier
    rows = table.connection.query(
        f"SELECT {q('table_name')}, SUM({q('n')}) FROM {table.full_table_name} WHERE {q('minute')} >= %s "
        f"AND {q('table_name')} IN ({', '.join(['%s'] * len(tables))}) GROUP BY {q('table_name')}",
        args=(since, *tables)).fetchall()
    return {name: int(n) for name, n in rows}


def etas(progress: dict[str, tuple[int, int]], workers: dict[str, int]) -> dict[str, str]:
    """Per table, from (keys left, keys in all): keys left × mean make duration ÷ live
    workers (at least one); "done", "-" (no keys) or "?" (no duration recorded yet)."""
    stats = totals(list(progress))
    out: dict[str, str] = {}
    for name, (left, total) in progress.items():
        s = stats.get(name)
        if not left:
            out[name] = "done" if total else "-"
        elif s and s["n"]:
            out[name] = human(left * s["sum"] / s["n"] / max(1, workers.get(name, 0)))
        else:
            out[name] = "?"
    return out


def human(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f}s"
    if seconds < 5400:
        return f"{seconds / 60:.0f}min"
    return f"{seconds / 3600:.1f}h"
