"""The lists ``status --json``, ``errors --json`` and ``plan --json`` print, built in one
place so that the dashboard's ``/api/...`` answers are the same lists."""

from __future__ import annotations

from typing import Any

from .jobs import JobTable, Restriction
from .pipeline import TableInfo


def status_rows(infos: list[TableInfo], restriction: Restriction,
                counts: dict[str, dict[str, int]] | None = None) -> list[dict[str, Any]]:
    """Per table: total, done, pending (to make), reserved, error, ignore, and the ETA:
    keys left × mean recorded make duration ÷ live workers ("?" before any is recorded).
    ``counts``: each table's ``JobTable.counts`` where the caller has read them (the
    dashboard's snapshot)."""
    from . import durations, queries

    jts = {t.name: JobTable(t.instance()) for t in infos}
    rows = []
    for name, jt in jts.items():
        c = counts[name] if counts is not None else jt.counts(restriction)
        rows.append({"table": name, "total": c["total"], "done": c["done"], "pending": c["missing"],
                     "reserved": c["reserved"], "error": c["error"], "ignore": c["ignore"]})
    busy = {r["table"]: jts[r["table"]] for r in rows if r["reserved"]}  # only these can have workers now
    eta = durations.etas(infos, rows, queries.live_workers(busy))
    for r in rows:
        r["eta"] = eta[r["table"]]
    return rows


def error_rows(infos: list[TableInfo], restriction: Restriction, match: str | None = None,
               stack: bool = False) -> list[dict[str, Any]]:
    """Every failed key of these tables, with what is needed to find out why."""
    return [{"table": t.name, **e} for t in infos for e in JobTable(t.instance()).errors(restriction, match, stack)]


def plan_rows(infos: list[TableInfo], restriction: Restriction, shard_size: int | None = None,
              shards: int | None = None) -> list[Any]:
    """Each table's plan (``planner.TablePlan``); ``as_json`` of each is what ``plan --json`` prints."""
    from .planner import plan_table

    return [plan_table(t, restriction, shard_size, shards) for t in infos]
