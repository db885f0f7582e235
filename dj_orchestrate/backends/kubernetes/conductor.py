"""Releasing a run's suspended Jobs as their upstream Jobs finish (``k8s conduct``, in
the cluster, or ``run --wait``), and cancelling a run."""

from __future__ import annotations

import sys
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


class Conductor:
    """A run's Jobs as the API last said, released as the Jobs they wait for finish."""

    def __init__(self, api: Api, run: str, expected: int) -> None:
        self.api, self.run, self.expected = api, run, expected
        self.jobs, self.version = api.jobs(run)

    def release_ready(self) -> None:
        for name in ready_to_release(self.jobs, self.expected):
            self.api.release(name)
            self.jobs[name].setdefault("spec", {})["suspend"] = False
            print(f"released {name}", file=sys.stderr, flush=True)

    def done(self, until_finished: bool) -> bool:
        """Every Job released, or with ``until_finished`` every Job finished."""
        return len(self.jobs) >= self.expected and (all(map(finished, self.jobs.values())) if until_finished
                                                    else not any(j.get("spec", {}).get("suspend") for j in self.jobs.values()))

    def wait(self, seconds: float, until_finished: bool) -> None:
        """Follow the watch until a Job can be released (or, ``until_finished``, all
        finished), or ``seconds`` pass without an event; list again after 410 Gone."""
        try:
            for event in self.api.watch_jobs(self.run, self.version, seconds):
                obj = event.get("object", {})
                self.version = obj.get("metadata", {}).get("resourceVersion") or self.version
                if event.get("type") == "BOOKMARK" or obj.get("metadata", {}).get("labels", {}).get(RUN_LABEL) != self.run:
                    continue
                if event.get("type") == "DELETED":
                    self.jobs.pop(obj["metadata"]["name"], None)
                else:
                    self.jobs[obj["metadata"]["name"]] = obj
                if ready_to_release(self.jobs, self.expected) or (until_finished and all(map(finished, self.jobs.values()))):
                    break
        except Gone:
            self.jobs, self.version = self.api.jobs(self.run)


def conduct(api: Api, run: str, expected: int, watch_seconds: float = 5.0) -> dict[str, dict]:
    """``k8s conduct``: release the run's suspended Jobs as their upstream Jobs finish,
    until every Job is released. Returns the last state of the Jobs."""
    conductor = Conductor(api, run, expected)
    while True:
        conductor.release_ready()
        if conductor.done(until_finished=False):
            return conductor.jobs
        conductor.wait(watch_seconds, until_finished=False)


def cancel(api: Api, run: str) -> list[str]:
    """Delete the run's Jobs (and its conductor): their pods get SIGTERM, and their
    workers release every claim within the grace period."""
    jobs, _ = api.jobs(run)
    for name in [conductor_name(run), *sorted(jobs)]:
        api.delete("Job", name)
    return sorted(jobs)
