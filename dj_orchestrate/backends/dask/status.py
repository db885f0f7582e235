"""What a Dask scheduler says of a run later, without its driver: reconcile's hint
(which workers' tasks ended), ``status`` and ``run_ended``; the scheduler's address and
the run's task keys come from the ledger's backend info."""

from __future__ import annotations

import contextlib
import re

import distributed

from ... import ledger
from .clusters import quiet


def ended_jobs(job_ids: set[str]) -> set[str]:
    """Which ``dask:<worker>/<task key>`` ids no longer run: their task key is not
    processing on that worker, as the run's scheduler (from the ledger) says. A
    scheduler that does not answer gives no hint."""
    by_run: dict[str, set[str]] = {}
    for job_id in job_ids:
        if run_id := _run_of(job_id):
            by_run.setdefault(run_id, set()).add(job_id)
    by_scheduler: dict[str, set[str]] = {}
    for run_id, ids in by_run.items():  # one ledger read per run, not per slot
        if address := _scheduler_of(run_id):
            by_scheduler.setdefault(address, set()).update(ids)
    ended: set[str] = set()
    for address, ids in by_scheduler.items():
        with contextlib.suppress(Exception), quiet():
            with distributed.Client(address, timeout=3, set_as_default=False) as client:
                ended |= ended_by(client, ids)
    return ended

def run_ended(run: dict) -> bool | None:
    """No task of the run is waiting, queued or running on its scheduler (with
    ``fire_and_forget`` a finished task is forgotten). None: the scheduler does not
    answer, or the run's tasks were not recorded."""
    info = run.get("backend_info") or ""
    address, keys = _field(info, "scheduler"), _task_keys(run["run_id"], info)
    if not address or keys is None:
        return None
    try:
        with quiet(), distributed.Client(address, timeout=3, set_as_default=False) as client:
            states = client.sync(client.scheduler.get_task_status, keys=keys)
    except Exception:
        return None
    return not any(state in LIVE_TASK_STATES for state in states.values())

def describe(run: dict) -> str:
    """For ``status``: the scheduler, its dashboard and the run's running tasks."""
    info = run.get("backend_info") or ""
    address = _field(info, "scheduler")
    if not address:
        return info
    try:
        with quiet(), distributed.Client(address, timeout=3, set_as_default=False) as client:
            prefix = f"djo-{run['run_id']}-"
            running = sum(str(k).startswith(prefix) for keys in client.processing().values() for k in keys)
    except Exception:
        return f"{info} (scheduler not answering)"
    return f"{info} running={running} worker task(s)"


def ended_by(client: distributed.Client, job_ids: set[str]) -> set[str]:
    processing = {(w, str(k)) for w, keys in client.processing().items() for k in keys}
    ended = set()
    for job_id in job_ids:
        worker, _, key = job_id.removeprefix("dask:").rpartition("/")
        if (worker, key) not in processing:
            ended.add(job_id)
    return ended


LIVE_TASK_STATES = {"released", "waiting", "no-worker", "queued", "processing"}  # (not memory, erred, forgotten)
RUN_IN_KEY = re.compile(r"dask:.+/djo-(\d{8}-\d{6}-[0-9a-f]+)-")


def _run_of(job_id: str) -> str | None:
    m = RUN_IN_KEY.match(job_id)
    return m.group(1) if m else None


def _scheduler_of(run_id: str) -> str | None:
    """The scheduler a run's tasks went to, from its ledger row (None: not known)."""
    info = ledger.backend_info(run_id)
    return _field(info, "scheduler") if info else None


def _task_keys(run_id: str, info: str) -> list[str] | None:
    """The run's task keys from ``tasks=Square:0-1,Total:2-3`` in its backend info."""
    ranges = _field(info, "tasks")
    if ranges is None:
        return None
    pairs = (part.rpartition(":")[::2] for part in ranges.split(",") if part != "none")
    return [f"djo-{run_id}-{label}-{slot}" for label, span in pairs
            for slot in range(int(span.split("-")[0]), int(span.split("-")[1]) + 1)]


def _field(info: str, name: str) -> str | None:
    m = re.search(rf"(?:^| ){name}=(\S+)", info)
    return m.group(1) if m else None
