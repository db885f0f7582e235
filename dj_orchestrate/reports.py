"""The lists ``status --json``, ``errors --json`` and ``plan --json`` print, built in one
place so that the dashboard's ``/api/...`` answers are the same lists."""

from __future__ import annotations

from typing import Any

from . import ledger
from .jobs import JobTable, Restriction, counts_of, jobs_of
from .pipeline import TableInfo

LOST_AFTER = 3  # intervals without a beat after which a leader is shown as lost


def status_rows(infos: list[TableInfo], restriction: Restriction,
                counts: dict[str, dict[str, int]] | None = None) -> list[dict[str, Any]]:
    """Per table: total, done, pending (to make), reserved, error, ignore, the ETA (see
    ``etas``) and ``made_last_hour``: keys dj-orchestrate's workers made in this minute and
    the 59 before it (``durations.made_lately``). ``counts``: each table's
    ``JobTable.counts`` where the caller has read them (the dashboard's snapshot)."""
    from . import durations

    if counts is None:
        counts = dict(zip((t.name for t in infos), counts_of(jobs_of(infos), restriction)))
    rows = []
    for t in infos:
        c = counts[t.name]
        rows.append({"table": t.name, "total": c["total"], "done": c["done"], "pending": c["missing"],
                     "reserved": c["reserved"], "error": c["error"], "ignore": c["ignore"]})
    eta = etas(infos, {r["table"]: (r["pending"], r["reserved"], r["total"]) for r in rows})
    made = durations.made_lately([t.name for t in infos])
    for r in rows:
        r["eta"] = eta[r["table"]]
        r["made_last_hour"] = made.get(r["table"], 0)
    return rows


def etas(infos: list[TableInfo], progress: dict[str, tuple[int, int, int]]) -> dict[str, str]:
    """Per table, from (keys to make, keys reserved now, keys in all): the ETA that
    ``status`` and ``plan`` show: keys left (to make and reserved) × mean recorded make
    duration ÷ live workers holding its keys, at least one ("?" before a duration is
    recorded)."""
    from . import durations, queries

    busy = {t.name: JobTable(t.instance()) for t in infos if progress[t.name][1]}  # only these can have workers now
    return durations.etas({name: (todo + reserved, total) for name, (todo, reserved, total) in progress.items()},
                          queries.live_workers(busy))


def error_rows(infos: list[TableInfo], restriction: Restriction, match: str | None = None,
               stack: bool = False) -> list[dict[str, Any]]:
    """Every failed key of these tables, with what is needed to find out why."""
    return [{"table": t.name, **e} for t in infos for e in JobTable(t.instance()).errors(restriction, match, stack)]


def plan_rows(infos: list[TableInfo], restriction: Restriction, shard_size: int | None = None,
              shards: int | None = None) -> list[Any]:
    """Each table's plan (``planner.TablePlan``); ``plan_json`` is what ``plan --json`` prints."""
    from .planner import plan_table

    jts = jobs_of(infos)
    return [plan_table(t, restriction, shard_size, shards, jt, c) for t, jt, c in zip(infos, jts, counts_of(jts, restriction))]


def plan_json(infos: list[TableInfo], plans: list[Any]) -> list[dict[str, Any]]:
    """``plan --json``: each plan's ``as_json`` with its table's ETA, as ``status`` computes it."""
    eta = etas(infos, {p.table: (p.missing, p.reserved, p.total) for p in plans})
    return [{**p.as_json(), "eta": eta[p.table]} for p in plans]


def server_rows(schemas: list[str]) -> list[dict]:
    """``status --json``'s servers: the pipeline's ``serve`` processes that beat within a
    day, read only; a leader whose beat is older than ``LOST_AFTER`` intervals is shown as
    lost."""
    now = ledger.now()
    rows = []
    for r in ledger.servers(ledger.pipeline_key(schemas)):
        age = (now - r["last_beat"]).total_seconds()
        role = "lost" if r["role"] == "leader" and age > LOST_AFTER * r["interval_s"] else r["role"]
        rows.append({"server": r["server"], "host": r["host"], "pid": r["pid"], "role": role,
                     "interval_s": r["interval_s"], "started": str(r["started"]), "last_beat": str(r["last_beat"]),
                     "beat_age_s": round(age, 1)})
    return rows
