"""A Dask run's plan: its tables in stages (a change of resources starts one), and per
stage the pull slots that tables asking for the same resources share."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import distributed

from ...config import BackendConfig
from ...pipeline import TableInfo
from ..base import RunRequest
from ..plan import TableLaunch, plan_launches
from .settings import DaskSettings


@dataclass
class Group:
    """Pull slots that serve some tables of one stage (same resources)."""

    tables: list[TableInfo]
    level: int
    resources: dict[str, Any]
    slots: int
    futures: list[distributed.Future] = field(default_factory=list)

    @property
    def label(self) -> str:
        return "+".join(t.name for t in self.tables)


def stages(config: BackendConfig[DaskSettings], tables: list[TableInfo]) -> list[list[TableInfo]]:
    """Tables (upstream first) in stages: a table joins the latest stage of its upstream
    tables when it asks for the same resources as each of them there, else the stage
    after. Within a stage the workers pipeline; between stages Dask orders the tasks."""
    resources = {t.full_name: repr(sorted(config.for_table(t).resources.items())) for t in tables}
    stage: dict[str, int] = {}
    for t in tables:
        stage[t.full_name] = max((stage[u] + (resources[u] != resources[t.full_name])
                                  for u in t.upstream if u in stage), default=0)
    out: dict[int, list[TableInfo]] = {}
    for t in tables:
        out.setdefault(stage[t.full_name], []).append(t)
    return [out[k] for k in sorted(out)]


def groups(request: RunRequest, config: BackendConfig[DaskSettings], levels: list[list[TableInfo]],
           offers: list[tuple[dict[str, float], int]]) -> list[Group]:
    """The launch plan (pull slots per table, after every earlier stage), with the
    tables of one stage that ask for the same resources sharing their slots."""
    by_key: dict[tuple[int, str], Group] = {}
    launches: list[TableLaunch] = plan_launches(request, lambda info: slots(config, info, offers), fixed_first=False,
                                                levels=levels)
    for launch in launches:
        resources = config.for_table(launch.info).resources
        key = (launch.level, repr(sorted(resources.items())))
        if key in by_key:
            by_key[key].tables.append(launch.info)
            by_key[key].slots = max(by_key[key].slots, launch.slots)
        else:
            by_key[key] = Group([launch.info], launch.level, resources, launch.slots)
    return list(by_key.values())


def slots(config: BackendConfig[DaskSettings], info: TableInfo, offers: list[tuple[dict[str, float], int]]) -> int:
    """Pull slots for a table: ``pull_workers``, else as many as the workers can run at once."""
    settings = config.for_table(info)
    if settings.pull_workers:
        return settings.pull_workers
    need = settings.resources
    # a worker runs as many of these at once as it has threads and resources for
    fitting = sum(min([threads] + [int(offer.get(r, 0) // v) for r, v in need.items()]) for offer, threads in offers)
    return max(1, fitting)
