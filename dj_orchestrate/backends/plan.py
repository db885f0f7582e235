"""The backend-free launch plan of a run that launches short-lived workers per table
(SLURM arrays, Kubernetes Indexed Jobs, Airflow mapped tasks, Dask stages): which tables
get fixed shards, which get pull slots, after which tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..jobs import JobTable
from ..pipeline import TableInfo, levels_of
from ..planner import TablePlan, encode_bound, plan_table
from ..work import WorkSpec
from .base import RunRequest, work_spec


@dataclass
class TableLaunch:
    """One table's workers in a run: fixed shards when its keys are known at submit
    time (``plan`` is set, one worker per shard, claiming its key range), else ``slots``
    pull workers that start after ``after`` (the tables of earlier levels), enqueue the
    table and claim whatever is pending."""

    info: TableInfo
    level: int
    after: list[str]
    slots: int
    plan: TablePlan | None = None

    @property
    def fixed(self) -> bool:
        return self.plan is not None

    def spec(self, request: RunRequest, shard_index: int | None = None) -> WorkSpec:
        """What the worker of one slot is told (``shard_index`` None: the scheduler
        gives it, e.g. its array or completion index)."""
        return work_spec(request, [self.info], shard_index, fixed_shard=self.fixed, enqueue=not self.fixed)

    def argv(self, request: RunRequest, shard_index: int | None = None) -> list[str]:
        """Its ``work`` arguments, for a scheduler that starts the command itself."""
        return self.spec(request, shard_index).to_argv()


def plan_launches(request: RunRequest, pull_slots: Callable[[TableInfo], int], fixed_first: bool = True,
                  levels: list[list[TableInfo]] | None = None) -> list[TableLaunch]:
    """The backend-free plan of a run that launches short-lived workers per table (SLURM
    arrays, Kubernetes Indexed Jobs, Airflow mapped tasks): the first level gets fixed
    shards (its keys are known now; a table with nothing missing gets no launch), each
    later table ``pull_slots(table)`` pull workers after every earlier level. A table that
    can have no jobs table gets one pull worker (one makes it at a time: ``serial``).
    Writes nothing: see ``record_fixed``."""
    launches: list[TableLaunch] = []
    before: list[str] = []
    for depth, level in enumerate(levels if levels is not None else levels_of(request.tables)):
        for info in level:
            serial = not JobTable(info.instance()).supported
            if depth == 0 and fixed_first:
                plan = plan_table(info, request.restriction, request.shard_size, request.shards)
                if plan.shards:
                    launches.append(TableLaunch(info, depth, [], plan.shards, plan))
                elif serial and plan.missing:
                    launches.append(TableLaunch(info, depth, [], 1))
            else:
                launches.append(TableLaunch(info, depth, list(before), 1 if serial else pull_slots(info)))
        before += [t.name for t in level]
    return launches


def record_fixed(request: RunRequest, launches: list[TableLaunch]) -> None:
    """Enqueue the fixed-shard tables and record their shards in the ledger: done once
    the scheduler accepted every launch, so that a rejected run leaves nothing behind."""
    from .. import ledger

    for launch in launches:
        if launch.plan is not None:
            JobTable(launch.info.instance()).enqueue(request.restriction)
            ledger.add_shards(request.run_id, launch.info.name,
                              [tuple(map(encode_bound, launch.plan.shard_bounds(i))) for i in range(launch.plan.shards)])
