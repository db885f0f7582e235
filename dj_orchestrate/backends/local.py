"""Local processes: one pool of N ``dj-orchestrate work`` processes over all the selected
tables for the whole run. Workers are forked from the driver, which has imported
DataJoint and the pipeline already: a worker starts in milliseconds, not the second a
new Python takes (each child opens its own database connection and runs what the
``work`` command runs, ``work.main``; see ``fork_worker``). Each worker claims whichever
key is ready (``flow``: a key's downstream work starts as soon as that key is made), so
there is no level barrier and no pool per level. The driver only launches, watches and reports:

* it enqueues every selected table once at the start (later keys are enqueued by the
  workers, key by key), and starts no worker when nothing is ready;
* a worker that dies is reconciled at once (its keys go back to ``pending``, the key in
  flight charged an attempt) and replaced, and every few seconds a reconcile releases
  what other dead owners hold (workers wait for upstream keys in flight); the pool grows back to N while keys are
  ready; at most N × (max_attempts + 1) workers are started in all, so a worker that
  cannot start, or a key that kills every worker, cannot loop for ever;
* when no worker is left it reconciles, enqueues again (keys whose upstream was marked
  done by a reconcile, not by their worker) and starts a new pool if anything is ready;
* progress: one bar per table, live, while the tables run side by side.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import traceback
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, TypeVar

from ..config import BackendConfig, Settings
from ..db import reconnect, retrying
from ..flow import waiting
from ..jobs import JobTable, jobs_of, reconcile_all, status_counts_of
from ..pipeline import TableInfo
from ..entry import reported
from ..work import WorkSpec, main
from .base import Backend, RunRequest, work_spec
from .follow import outcome, ready_keys

T = TypeVar("T")
TICK = 0.05  # seconds between looks at the worker processes
PROGRESS_EVERY = 0.5  # seconds between looks at the jobs tables
RECONCILE_EVERY = 5.0  # seconds between reconciles while workers run


@dataclass(frozen=True)
class LocalSettings(Settings, section="local"):
    """``[local]`` of dj_orchestrate.toml, per table ``[local.tables.<Table>]`` or a class's
    ``local = {...}``: only what the pool's workers do per key."""

    label: ClassVar[str] = "local setting"

    timeout: float | None = None  # seconds a make may take, per key (see dj_orchestrate.watchdog)


class LocalBackend(Backend):
    name = "local"

    def __init__(self, config: BackendConfig[LocalSettings] | None = None) -> None:
        self.config = config or BackendConfig("local", LocalSettings())
        self.procs: list[Forked] = []
        self.alive: list[Forked] = []
        self.job_ids: dict[Forked, str] = {}  # the backend job id each worker records
        self.stopping = False
        self.stop_signal = signal.SIGTERM

    @classmethod
    def from_config(cls, path: str | None = None, **options: Any) -> "LocalBackend":
        return cls(BackendConfig.load(LocalSettings, path))

    def default_wait(self) -> bool:
        return True  # the workers are this command's children

    def _stop(self, signum: int, frame: Any) -> None:
        """Forward the signal as it came (the workers charge the key they roll back for a
        scheduler's SIGTERM, not for Ctrl-C): they release their claims and exit within seconds."""
        self.stopping = True
        self.stop_signal = signum
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signum)

    def _db(self, request: RunRequest, action: Callable[[], T]) -> T:
        """The driver's bookkeeping survives a database restart: its workers back off and
        carry on, so the driver reconnects too instead of leaving them unattended."""
        return retrying(request.tables[0].cls.connection, action, "run", request.worker.reconnect_seconds)

    def run(self, request: RunRequest) -> int:
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
        self.budget = request.workers * (request.worker.policy.max_attempts + 1)
        progress: Progress | None = None
        stuck = False
        try:
            while not self.stopping and self.budget > 0:
                for t in request.tables:  # upstream first: each sees the keys made so far
                    self._db(request, lambda t=t: JobTable(t.instance()).enqueue(request.restriction))
                ready = self._db(request, lambda: ready_keys(request.tables))
                # keys ready, yet no claim can reach them: not done, and no worker can help
                stuck = bool(ready and self._db(request, lambda: waiting(request.tables, request.restriction)))
                if not ready or stuck:
                    break
                progress = progress or Progress(request, self._db)
                self._launch(request, request.tables, self._indices(min(request.workers, ready)))
                self._follow(request, progress)
                # every worker has exited: what they still hold is released now, not once
                # the server has noticed that their sessions are gone
                ended = set(self.job_ids.values())
                self._db(request, lambda: reconcile_all([t.instance() for t in request.tables],
                                                        request.worker.policy, ended))
        finally:
            if progress is not None:
                progress.close()
            for s, handler in previous.items():
                signal.signal(s, handler)
        if self.stopping:
            return 130
        if stuck:  # keys are pending that no worker can reach: not done (``runs.launch`` says why)
            return 1
        if not self.procs:  # nothing was ready: no worker, nothing failed
            return 0
        crashed = any(p.returncode not in (0, None) for p in self.procs)
        return 1 if crashed else outcome(request.run_id)

    def _indices(self, n: int) -> range:
        """The next ``n`` worker numbers, within what is left of the launch budget."""
        n = max(0, min(n, self.budget))
        self.budget -= n
        return range(len(self.procs), len(self.procs) + n)

    def _launch(self, request: RunRequest, tables: list[TableInfo], indices: range) -> None:
        request.log_dir.mkdir(parents=True, exist_ok=True)
        env = {**request.target.worker_env(),  # what the worker's own subprocesses inherit, as from any backend
               "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
        connections = _connections(request.tables)
        for conn in connections:  # no child may share the driver's session: it opens its own
            conn.close()
        try:
            for i in indices:
                if self.stopping:  # stopped while launching: start no more
                    break
                log_path = request.log_dir / f"worker-{i}.log"
                job_id = f"local-{request.run_id.rsplit('-', 1)[-1]}-{i}"
                spec = work_spec(request, tables, shard_index=i).replace(log_path=str(log_path), backend_job_id=job_id)
                proc = fork_worker(spec, env, log_path, connections, request.worker.reconnect_seconds)
                self.procs.append(proc)
                self.alive.append(proc)
                self.job_ids[proc] = job_id
                if self.stopping:  # the signal came before this worker was in self.procs
                    proc.send_signal(self.stop_signal)
        finally:
            for conn in connections:
                reconnect(conn, request.worker.reconnect_seconds, "run")

    def _follow(self, request: RunRequest, progress: "Progress") -> None:
        """Until every worker has exited: reconcile and replace the ones that die, grow
        the pool back to N while keys are ready, show progress. Reconciles now and then
        too: a worker waits while upstream keys are reserved, also by an owner that died
        before this run (a stock worker, a run killed with SIGKILL), which only a
        reconcile releases."""
        tables = [t.instance() for t in request.tables]
        next_look, next_reconcile = 0.0, time.monotonic() + RECONCILE_EVERY
        while self.alive:
            time.sleep(TICK)
            died = [p for p in self.alive if p.poll() is not None and p.returncode != 0 and not self.stopping]
            self.alive = [p for p in self.alive if p.poll() is None]
            if (died or time.monotonic() >= next_reconcile) and not self.stopping:  # release what the dead hold
                ended = {self.job_ids[p] for p in self.procs if p.poll() is not None}
                self._db(request, lambda: reconcile_all(tables, request.worker.policy, ended))
                next_reconcile = time.monotonic() + RECONCILE_EVERY
                next_look = 0.0 if died else next_look
            full = len(self.alive) >= request.workers and not progress.shown  # nothing to draw, no room: read nothing
            if (time.monotonic() >= next_look and not full) or not self.alive:
                ready = progress.update()
                next_look = time.monotonic() + PROGRESS_EVERY
                if not self.stopping and self.alive and len(self.alive) < min(request.workers, len(self.alive) + ready):
                    self._launch(request, request.tables,
                                 self._indices(min(request.workers, len(self.alive) + ready) - len(self.alive)))
        progress.update()


class Forked:
    """A worker forked from the driver, with the part of ``subprocess.Popen`` the driver uses."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)  # -N: killed by signal N, as Popen says
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None:  # (a reaped pid may belong to another process by now)
            os.kill(self.pid, signum)


def _connections(tables: list[TableInfo]) -> list[Any]:
    """The driver's database connections: the pipeline's and the ledger's (DataJoint's own)."""
    import datajoint as dj

    found = {id(c): c for c in [*(t.cls.connection for t in tables), dj.conn()]}
    return list(found.values())


def fork_worker(spec: WorkSpec, env: dict[str, str], log_path: Path, connections: list[Any],
                reconnect_seconds: float) -> Forked:
    """Start a worker (``work.main(spec)``) as a forked child: its own session (the
    driver forwards signals itself), ``env`` added to its environment, its
    output appended to ``log_path``, its own database connections (the driver's are
    closed while it forks). It never returns into the driver's code: it leaves with
    ``os._exit``, so that none of the driver's exit handlers (an embedded database's
    shutdown) run in it."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return Forked(pid)
    code = 1
    try:
        os.setsid()
        os.environ.update(env)
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_DFL)
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        sys.stdout.reconfigure(line_buffering=True)
        for conn in connections:
            reconnect(conn, reconnect_seconds, "worker")
        with reported():
            code = main(spec)
    except SystemExit as exc:
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
        code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


class Progress:
    """One bar per table: keys made (or failed) in this run of those enqueued so far.
    The totals grow as upstream keys are made and their downstream keys enqueued."""

    def __init__(self, request: RunRequest, db: Callable) -> None:
        from tqdm import tqdm  # only a run that starts workers shows progress

        tqdm.monitor_interval = 0  # no monitor thread: the driver forks its workers, best with no thread running
        self.request, self.db = request, lambda action: db(request, action)
        self.tables = jobs_of(request.tables)
        width = max(len(t.name) for t in request.tables)
        self.bars = [tqdm(total=0, desc=t.name.ljust(width), unit="key", position=i, leave=True,
                          disable=not request.progress or None)
                     for i, t in enumerate(request.tables)]
        self.shown = not all(bar.disable for bar in self.bars)  # else only the ready keys are read
        self.start = self._counts()

    def _counts(self) -> list[tuple[int, dict[str, int]]]:
        def read() -> list[tuple[int, dict[str, int]]]:
            made = [jt.made() if self.shown else 0 for jt in self.tables]
            return list(zip(made, status_counts_of(self.tables)))

        return self.db(read)

    def update(self) -> int:
        """Redraw; returns the keys ready to claim now, over all tables."""
        counts = self._counts()
        if not self.shown:
            return sum(c["ready"] for _, c in counts)
        for bar, (made0, c0), (made, c) in zip(self.bars, self.start, counts):
            errors0 = c0["error"]
            finished = max(0, made - made0) + max(0, c["error"] - errors0)
            bar.total = finished + c["pending"] + c["reserved"]
            bar.n = finished
            bar.set_postfix_str(f"running {c['reserved']}" + (f", failed {c['error'] - errors0}" if c["error"] > errors0 else ""),
                                refresh=False)
            bar.refresh()
        return sum(c["ready"] for _, c in counts)

    def close(self) -> None:
        for bar in self.bars:
            bar.close()
