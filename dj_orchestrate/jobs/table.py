"""``JobTable``, every operation on one table's jobs table, and reconcile over several."""

from __future__ import annotations

from typing import Any, Sequence

from .claims import Queue, activity_of
from .model import RECONCILED, Policy, Restriction
from .reconcile import LiveConnections, Reconciling
from .reports import Reporting


class JobTable(Reporting, Reconciling, Queue):
    """Set-based, owner-checked operations on one table's ``~~table`` jobs table."""


def jobs_of(tables: Sequence[Any]) -> list[JobTable]:
    """The jobs table of each of these selected tables (``pipeline.TableInfo``), in order."""
    return [JobTable(t.instance()) for t in tables]


def reconcile_all(tables: Sequence[Any], policy: Policy = Policy(), ended_jobs: set[str] = frozenset(),
                  restriction: Restriction = Restriction()) -> dict[str, int]:
    """Reconcile the jobs tables of these table instances (the keys within
    ``restriction``); totals over all of them. Only those holding reservations: one
    statement finds them (``activity_of``), so that a run of a wide pipeline with
    nothing to rescue does not read every jobs table, nor the server's sessions."""
    total = dict.fromkeys(RECONCILED, 0)
    jts = [jt for jt in map(JobTable, tables) if jt.declared]
    held = [jt for jt, (_, reserved) in zip(jts, activity_of(jts)) if reserved]
    if not held:
        return total
    live = LiveConnections(held[0].conn)
    for jt in held:
        for k, v in jt.reconcile(live, ended_jobs, policy, restriction).items():
            total[k] += v
    return total
