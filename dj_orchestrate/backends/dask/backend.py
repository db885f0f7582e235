"""The Dask backend: checks the scheduler or the cluster to start, submits one task per
pull slot, stage after stage, and follows the run (``--wait``)."""

from __future__ import annotations

import contextlib
import fnmatch
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import distributed

from ...config import BackendConfig
from ...errors import UsageError
from ...pipeline import TableInfo
from ..base import RunRequest, SchedulerBackend, Submission, work_spec
from ..follow import Poll
from . import clusters, plan, status
from .plan import Group
from .clusters import quiet
from .settings import CLUSTERS, DaskSettings, load_config
from .task import stop_run, work_task



@dataclass
class Tasks(Submission):
    """A round's pull slots, by group, and the request they serve (for ``interrupt``)."""

    groups: list[Group] = field(default_factory=list)
    request: RunRequest | None = None

    @property
    def futures(self) -> dict[str, distributed.Future]:
        return {f.key: f for g in self.groups for f in g.futures}


class DaskBackend(SchedulerBackend):
    name = "dask"
    poll_every, look_every, reconcile_every = 0.1, 1.0, 5.0  # a round ends as soon as its last task does
    workers_are = "Dask workers"
    fix_identity = ("add the variables that name the pipeline's schemas to forward_env in [dask] (e.g. forward_env = [\"LAB_*\"]), "
                    "or set them in the Dask workers' environment")

    def __init__(self, config: BackendConfig[DaskSettings] | None = None, scheduler: str | None = None,
                 cluster: str | None = None) -> None:
        self.config = config or load_config()
        if cluster is not None and cluster not in CLUSTERS:
            raise UsageError(f"unknown --cluster {cluster!r}", f"valid: {', '.join(CLUSTERS)}")
        if cluster and scheduler:
            raise UsageError("--scheduler and --cluster exclude each other",
                             "--scheduler joins a running cluster; --cluster starts one for this run")
        self.kind = cluster
        self.address = scheduler or self.config.defaults.scheduler or os.environ.get("DASK_SCHEDULER_ADDRESS")
        self.client: distributed.Client | None = None
        self.cluster: Any = None
        self.stopping = False
        self._slot = 0

    @classmethod
    def from_config(cls, path: str | None = None, **options: Any) -> "DaskBackend":
        return cls(load_config(path), **options)

    def default_wait(self) -> bool:
        return self.kind is not None  # a cluster started for the run lives as long as this command

    # --------------------------------------------------------------- checks
    def verify(self, tables: list[TableInfo], embedded: bool, wait: bool) -> None:
        """Before anything is written: a scheduler that answers (or a cluster to start
        that can be waited for), and for every table a worker that offers the resources
        it asks for (Dask itself would wait for one forever)."""
        if self.kind and not wait:
            raise UsageError(f"the {self.kind} cluster started for this run would stop when this command exits",
                             "use --wait, or start a scheduler (`dask scheduler`) and pass --scheduler")
        self.refuse_embedded(embedded, wait)
        if self.kind is None:
            if not self.address:
                raise UsageError("no Dask scheduler configured",
                                 "pass --scheduler tcp://host:8786, set [dask] scheduler or DASK_SCHEDULER_ADDRESS, "
                                 "or use --cluster local")
            self.client = self._connect(self.address)
            where = f"the scheduler {self.address}"
        else:
            clusters.cluster_class(self.kind)  # its package is installed
            where = f"the {self.kind} cluster ([dask] worker_resources)"
        offers = self._offers()
        if not offers:  # (was a bare StopIteration below for a table that needs no resource)
            raise UsageError(f"no Dask worker is connected to {where}",
                             f"start one (`dask worker {self.address}`) and run again, or use --cluster local")
        for t in tables:
            need = self.config.for_table(t).resources
            if not any(_fits(need, offer) for offer in offers):
                missing = next(f"{r}={v}" for r, v in need.items() if not any(o.get(r, 0) >= v for o in offers))
                offered = sorted({f"{r}={v}" for o in offers for r, v in o.items()}) or ["none"]
                raise UsageError(f"{t.name} needs the Dask resource {missing}, which no worker of {where} offers "
                                 f"(offered: {', '.join(offered)})",
                                 f"start a worker with --resources {missing}, or change [dask.tables.{t.name}] resources")

    def _connect(self, address: str) -> distributed.Client:
        timeout = self.config.defaults.connect_timeout
        try:
            with quiet():
                return distributed.Client(address, timeout=timeout, set_as_default=False)
        except (OSError, TimeoutError, ValueError) as err:
            raise UsageError(f"the Dask scheduler {address} did not answer within {timeout:g} s ({type(err).__name__})",
                             "check the address (tcp://host:8786) and that `dask scheduler` runs there") from None

    def _offers(self) -> list[dict[str, float]]:
        """Resources each worker offers: the scheduler's word, or what the cluster this
        run starts will give its workers (one GPU each for cuda)."""
        if self.kind is None:
            return [dict(w.get("resources") or {}) for w in self._workers().values()]
        offer = dict(self.config.defaults.worker_resources)
        if self.kind == "cuda":
            offer.setdefault("GPU", 1)
        return [offer]

    def _workers(self) -> dict[str, dict]:
        assert self.client is not None
        return self.client.scheduler_info(n_workers=-1)["workers"]

    # ------------------------------------------------------------ clusters
    def _start(self, request: RunRequest) -> None:
        """The client, and with --cluster the cluster this run starts."""
        if self.client is not None:
            return
        with quiet():
            self.cluster = clusters.start(self.kind, self.config.defaults, request)
            self.client = distributed.Client(self.cluster, set_as_default=False)

    def _thread_offers(self, request: RunRequest) -> list[tuple[dict[str, float], int]]:
        """(resources, threads) per worker, for sizing pull slots: the workers the
        scheduler has (a local cluster's are up once it started), else those that the
        SLURM jobs will bring."""
        if self.kind != "slurm":
            workers = self._workers()
            if workers:
                return [(dict(w.get("resources") or {}), int(w.get("nthreads", 1))) for w in workers.values()]
            return [(offer, 1) for offer in self._offers()]
        s = self.config.defaults.slurm_settings()
        return [(offer, s.max_jobs * s.cores) for offer in self._offers()]

    # ------------------------------------------------------------- the run
    def submit(self, request: RunRequest, levels: list[list[TableInfo]], first: bool) -> Tasks:
        """Every slot of these levels' tables, stage after stage (``_stages``); the first
        round starts the client (and with --cluster the cluster)."""
        self._start(request)
        groups = self._submit(request, plan.stages(self.config, [t for level in levels for t in level]))
        info = self._info(request, groups)
        return Tasks(info, f"submitted {sum(len(g.futures) for g in groups)} Dask task(s) to {info}", groups, request)

    def poll(self, submission: Tasks) -> Poll:
        futures = submission.futures.values()
        running = sum(not f.done() for f in futures)
        return Poll(running, ended=not running)

    def cancel(self, submission: Tasks) -> None:
        assert self.client is not None
        with contextlib.suppress(Exception):
            self.client.cancel(list(submission.futures.values()))

    def detach(self, submission: Tasks) -> None:
        distributed.fire_and_forget(list(submission.futures.values()))

    @contextlib.contextmanager
    def following(self) -> Iterator[None]:
        """SIGTERM and Ctrl-C stop the run's workers (``interrupt``), not this process."""
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _stop(self, signum: int, frame: Any) -> None:
        self.stopping = True

    def close(self) -> None:
        for thing in (self.client, self.cluster):
            if thing is not None:
                with contextlib.suppress(Exception), quiet():
                    thing.close()
        self.client = self.cluster = None

    def _info(self, request: RunRequest, groups: list[Group]) -> str:
        """What ``status``, reconcile and ``run_ended`` need later: where the scheduler
        and dashboard are, and the run's task keys (per group, its range of slots)."""
        assert self.client is not None
        parts = [f"scheduler={self.client.scheduler.address}"]
        ranges = [(g.label, [int(str(f.key).rsplit("-", 1)[1]) for f in g.futures]) for g in groups if g.futures]
        parts.append("tasks=" + (",".join(f"{label}:{min(s)}-{max(s)}" for label, s in ranges) or "none"))
        with contextlib.suppress(Exception):
            if self.client.dashboard_link:
                parts.append(f"dashboard={self.client.dashboard_link}")
        if self.kind:
            parts.append(f"cluster={self.kind}")
        return " ".join(parts)

    def _submit(self, request: RunRequest, levels: list[list[TableInfo]]) -> list[Group]:
        """One task per pull slot; each stage's tasks after every earlier stage's. All
        of them go in one ``submit`` per task before any can matter: each task enqueues
        its own tables when it starts."""
        assert self.client is not None
        groups = plan.groups(request, self.config, levels, self._thread_offers(request))
        env = self._env(request)
        before: list[distributed.Future] = []
        for level in sorted({g.level for g in groups}):
            this_level = []
            for group in (g for g in groups if g.level == level):
                for _ in range(group.slots):
                    slot = self._next_slot()
                    spec = work_spec(request, group.tables, shard_index=slot, enqueue=True)
                    group.futures.append(self.client.submit(
                        work_task, spec, env, str(request.log_dir), *before,
                        key=f"djo-{request.run_id}-{group.label}-{slot}", pure=False,
                        resources=group.resources or None))  # no retries: attempts live in the jobs table
                this_level += group.futures
            before = this_level
        if self.cluster is not None and self.kind == "slurm":
            s = self.config.defaults.slurm_settings()
            self.cluster.scale(jobs=min(s.max_jobs, -(-max(g.slots for g in groups) // s.cores)) if groups else 0)
        return groups

    def _next_slot(self) -> int:
        self._slot += 1
        return self._slot - 1

    def _env(self, request: RunRequest) -> dict[str, str]:
        """What the worker processes need from this environment: the database (never a
        password: DJ_PASS comes from the worker's own environment, or datajoint.json),
        dj-orchestrate's DJO_* settings and the pipeline's own, and ``forward_env``."""
        patterns = ("DJ_*", "DJO_*", *self.config.defaults.forward_env)
        chosen = {k: v for k, v in os.environ.items() if k != "DJ_PASS" and any(fnmatch.fnmatchcase(k, p) for p in patterns)}
        return {**chosen, **{k: v for k, v in request.target.worker_env().items() if v}}

    def interrupt(self, submission: Tasks) -> int:
        """Ctrl-C / SIGTERM: the workers of the run are told to stop (they release their
        claims, charging nothing); tasks not started are cancelled; wait for the others a
        little longer than the grace period."""
        assert self.client is not None and submission.request is not None
        request, futures = submission.request, submission.futures
        with contextlib.suppress(Exception):
            self.client.cancel([f for f in futures.values() if f.status == "pending"])
            self.client.run(stop_run, request.run_id)
            deadline = time.monotonic() + request.worker.grace + 10
            while time.monotonic() < deadline and not all(f.done() for f in futures.values()):
                time.sleep(0.2)
        return 130

    def failed(self, submission: Tasks) -> bool:
        """Tasks that did not end with status 0 (worker exit codes; Dask's KilledWorker)."""
        bad = False
        for key, f in submission.futures.items():
            if f.status != "finished":  # its worker died too often (KilledWorker), or it was cancelled
                print(f"dask: task {key} {f.status}; its keys are reconciled and run again", file=sys.stderr)
                continue
            code, log = f.result()
            if code:
                print(f"dask: task {key}: dj-orchestrate work exited with status {code}; see {log}", file=sys.stderr)
                bad = True
        return bad

    def ended_now(self, job_ids: set[str]) -> set[str]:
        assert self.client is not None
        return status.ended_by(self.client, job_ids)

    # --------------------------------------------------------- hints, status
    @classmethod
    def ended_jobs(cls, job_ids: set[str]) -> set[str]:
        return status.ended_jobs(job_ids)

    def run_ended(self, run: dict) -> bool | None:
        return status.run_ended(run)

    def describe(self, run: dict) -> str:
        return status.describe(run)


def _fits(need: dict[str, float], offer: dict[str, float]) -> bool:
    return all(offer.get(r, 0) >= v for r, v in need.items())
