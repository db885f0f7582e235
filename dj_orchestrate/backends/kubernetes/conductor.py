"""Releasing a run's suspended Jobs as their upstream Jobs finish (``k8s conduct``, in
the cluster, or ``run --wait``), and cancelling a run."""

from __future__ import annotations

import sys
from typing import Callable

from .api import Api, Gone
from .manifests import conductor_name
from .settings import AFTER, RUN_LABEL


def finished(job: dict) -> bool:
    return any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
               for c in job.get("status", {}).get("conditions") or [])


def ready_to_release(jobs: dict[str, dict], expected: int) -> list[str]:
    """Suspended Jobs whose upstream Jobs have all finished (or are gone, deleted by
    their TTL after finishing): once every expected Job of the run exists."""
    if len(jobs) < expected:
        return []
    return sorted(name for name, job in jobs.items() if job.get("spec", {}).get("suspend")
                  and all(a not in jobs or finished(jobs[a])
                          for a in filter(None, job["metadata"].get("annotations", {}).get(AFTER, "").split(","))))


def conduct(api: Api, run: str, expected: int, until_finished: bool = False, tick: Callable[[dict], None] = lambda jobs: None,
            watch_seconds: float = 5.0) -> dict[str, dict]:
    """Release the run's suspended Jobs as their upstream Jobs finish, following a
    watch (listed again after 410 Gone). Ends once every Job is released, or with
    ``until_finished`` once every Job finished. Returns the last state of the Jobs."""
    jobs, version = api.jobs(run)
    while True:
        for name in ready_to_release(jobs, expected):
            api.release(name)
            jobs[name].setdefault("spec", {})["suspend"] = False
            print(f"released {name}", file=sys.stderr, flush=True)
        tick(jobs)
        if len(jobs) >= expected and (all(map(finished, jobs.values())) if until_finished
                                      else not any(j.get("spec", {}).get("suspend") for j in jobs.values())):
            return jobs
        try:
            for event in api.watch_jobs(run, version, watch_seconds):
                obj = event.get("object", {})
                version = obj.get("metadata", {}).get("resourceVersion") or version
                if event.get("type") == "BOOKMARK" or obj.get("metadata", {}).get("labels", {}).get(RUN_LABEL) != run:
                    continue
                if event.get("type") == "DELETED":
                    jobs.pop(obj["metadata"]["name"], None)
                else:
                    jobs[obj["metadata"]["name"]] = obj
                if ready_to_release(jobs, expected) or (until_finished and all(map(finished, jobs.values()))):
                    break
        except Gone:
            jobs, version = api.jobs(run)



def cancel(api: Api, run: str) -> list[str]:
    """Delete the run's Jobs (and its conductor): their pods get SIGTERM, and their
    workers release every claim within the grace period."""
    jobs, _ = api.jobs(run)
    for name in [conductor_name(run), *sorted(jobs)]:
        api.delete("Job", name)
    return sorted(jobs)
