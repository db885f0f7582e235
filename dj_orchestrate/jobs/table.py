"""``JobTable``, every operation on one table's jobs table, and reconcile over several."""

from __future__ import annotations

from typing import Any, Sequence

from .claims import Queue
from .model import RECONCILED, Policy, Restriction
from .reconcile import LiveConnections, Reconciling
from .reports import Reporting


class JobTable(Reporting, Reconciling, Queue):
    """Set-based, owner-checked operations on one table's ``~~table`` jobs table."""


def reconcile_all(tables: Sequence[Any], policy: Policy = Policy(), ended_jobs: set[str] = frozenset(),
                  restriction: Restriction = Restriction()) -> dict[str, int]:
    """Reconcile the jobs tables of these table instances (the keys within
    ``restriction``); totals over all of them."""
    total = dict.fromkeys(RECONCILED, 0)
    if not tables:
        return total
    live = LiveConnections(tables[0].connection)
    for table in tables:
        for k, v in JobTable(table).reconcile(live, ended_jobs, policy, restriction).items():
            total[k] += v
    return total
