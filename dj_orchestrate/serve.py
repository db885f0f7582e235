"""Always-on population (``dj-orchestrate serve``), and runs whose tables go to more than
one backend.

A server notices new work every ``interval``: it reconciles the selected tables, enqueues
their new keys (one statement per table) and, for each *route* (the tables one backend
makes, ``[run.tables.X] backend``), starts a ``dj-orchestrate run --backend B --wait`` of
those tables when keys are ready and no run of that route is live. Each run is a process
of its own: it owns its connection, its follow loop and its end (the same code as a
``run`` typed by hand); the server only decides when to start one. An idle server starts
nothing and costs a few queries per table per interval.

One server per pipeline leads. The lock is the database's own (``GET_LOCK`` on
MySQL/MariaDB, a session advisory lock on PostgreSQL), named after the pipeline's schemas
and held by the server's connection: a server that dies (even by SIGKILL) lets it go with
its connection, and a standby, trying every few seconds, leads next. Every server records
its role and heartbeat in the ledger (``ledger.beat``) for ``status``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import backends, db, ledger
from .config import BackendConfig, Settings
from .errors import UsageError
from .flow import waiting
from .jobs import JobTable, Policy, Restriction, reconcile_all
from .pipeline import TableInfo

log = logging.getLogger("dj_orchestrate.serve")

STANDBY_POLL_S = 5.0  # how often a standby tries the lock: a dead leader is replaced within this (plus a beat)
MAX_BACKOFF_S = 600.0  # the longest wait before a route whose runs could not run is tried again


@dataclass(frozen=True)
class RouteSettings(Settings):
    """``[run]``: which backend makes a table (``[run.tables.X] backend = "slurm"``)."""

    label = "[run] setting"
    backend: str = "local"

    def parsed(self, where: str) -> "RouteSettings":
        if self.backend not in backends.BACKENDS:
            raise UsageError(f"backend {self.backend!r} in {where} is not a backend",
                             f"valid backends: {', '.join(backends.BACKENDS)}")
        return self


@dataclass(frozen=True)
class ServeSettings(Settings):
    """``[serve]``: the defaults of ``serve``'s own options."""

    label = "[serve] setting"
    interval: float = 60.0
    max_idle: float | None = None


@dataclass
class Route:
    """The selected tables one backend makes."""

    backend: str
    tables: list[TableInfo]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tables]

    def __str__(self) -> str:
        return f"{self.backend} ({', '.join(self.names)})"


def routes(infos: list[TableInfo], default: str | None, config_path: str | None) -> list[Route]:
    """Each table to its backend: ``[run.tables.X] backend`` (or the class's ``run =
    {"backend": ...}``), else ``default`` (``--backend``), else ``[run] backend``, else
    local. In the tables' order, one route per backend."""
    config = BackendConfig.load("run", RouteSettings, config_path)
    if default is not None:
        backends.get(default)  # an unknown name or a missing extra, said before anything runs
        config = dataclasses.replace(config, defaults=RouteSettings(backend=default))
    by_backend: dict[str, list[TableInfo]] = {}
    for info in infos:
        by_backend.setdefault(config.for_table(info).backend, []).append(info)
    for name in by_backend:
        backends.get(name)
    return [Route(name, tables) for name, tables in by_backend.items()]


def serve_settings(config_path: str | None) -> ServeSettings:
    return BackendConfig.load("serve", ServeSettings, config_path).defaults


# ------------------------------------------------------------------ the leader lock
class Leadership:
    """The pipeline's leader lock on this process's connection (see the module's doc)."""

    def __init__(self, conn: Any, schemas: list[str]) -> None:
        self.conn = conn
        self.key = ledger.pipeline_key(schemas)
        self.mysql = conn.adapter.backend == "mysql"
        digest = bytes.fromhex(self.key)
        # MySQL: a name of at most 64 characters; PostgreSQL: two non-negative int4 (as pg_locks shows them)
        self.ids: tuple = (f"djo-serve-{self.key}",) if self.mysql else (
            int.from_bytes(digest[:4], "big") >> 1, int.from_bytes(digest[4:8], "big") >> 1)

    def _one(self, sql: str) -> Any:
        return self.conn.query(sql, args=self.ids, reconnect=False).fetchone()[0]

    def held(self) -> bool:
        """Whether this connection holds the lock now (a server restart took it away)."""
        if self.mysql:
            return bool(self._one("SELECT IS_USED_LOCK(%s) = CONNECTION_ID()"))
        return bool(self._one("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                              "pid = pg_backend_pid() AND classid = %s::bigint::oid AND objid = %s::bigint::oid "
                              "AND objsubid = 2)"))

    def try_acquire(self) -> bool:
        return bool(self._one("SELECT GET_LOCK(%s, 0)" if self.mysql else "SELECT pg_try_advisory_lock(%s, %s)"))

    def release(self) -> None:
        self._one("SELECT RELEASE_LOCK(%s)" if self.mysql else "SELECT pg_advisory_unlock(%s, %s)")


# ------------------------------------------------------------------------ runs
@dataclass
class Child:
    """A ``dj-orchestrate run`` this server started for a route."""

    route: Route
    proc: subprocess.Popen
    out: Path
    started: float = field(default_factory=time.monotonic)


@dataclass
class Options:
    """What every run a server starts is given, as ``run``'s own arguments."""

    pipeline: str
    key_json: str | None = None
    config_path: str | None = None
    workers: int = 4
    worker_args: list[str] = field(default_factory=list)  # --retries, --backoff, ... as given to serve
    log_dir: Path = Path(".dj_orchestrate/logs")

    def argv(self, route: Route) -> list[str]:
        cmd = [sys.executable, "-m", "dj_orchestrate", "run", self.pipeline, "--backend", route.backend, "--wait",
               "--no-progress", "--json", "--workers", str(self.workers), *self.worker_args]
        for name in route.names:
            cmd += ["--table", name]
        if self.key_json:
            cmd += ["--key", self.key_json]
        if self.config_path:
            cmd += ["--config", self.config_path]
        return cmd


class Supervisor:
    """Starts and watches the runs of each route (``tick``), for ``serve`` and for a
    ``run`` whose tables go to several backends. It claims nothing itself: the runs'
    workers do, through the jobs tables."""

    def __init__(self, routes: list[Route], restriction: Restriction, options: Options, policy: Policy,
                 interval: float = 1.0) -> None:
        self.routes, self.restriction, self.options, self.policy = routes, restriction, options, policy
        self.interval = interval
        self.children: dict[str, Child] = {}
        self.failures: dict[str, int] = {}  # per route: runs in a row that could not run
        self.resumed: set[str] = set()  # runs of gone drivers taken up
        self.schedulers: dict[str, Any] = {}  # per remote route, the backend asked about earlier runs
        self.stopping = False
        self.not_before: dict[str, float] = {}
        self.results: list[dict] = []
        self.said: dict[str, Any] = {}
        self.options.log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def infos(self) -> list[TableInfo]:
        return [t for r in self.routes for t in r.tables]

    def live(self) -> bool:
        return bool(self.children)

    def reap(self) -> None:
        """Note each run that ended: one line, with how it ended."""
        for name, child in list(self.children.items()):
            code = child.proc.poll()
            if code is None:
                continue
            del self.children[name]
            summary = _json_tail(child.out.read_text() if child.out.is_file() else "")
            run_id, state = summary.get("run_id", "?"), summary.get("state", f"exit {code}")
            shards = ledger.shards_of(run_id) if "run_id" in summary else []
            made, failed = sum(s["keys_done"] for s in shards), sum(s["keys_failed"] for s in shards)
            self.results.append({"route": name, "run_id": run_id, "state": state, "exit": code})
            line = f"run {run_id} {child.route}: {state} ({made} made, {failed} failed, {time.monotonic() - child.started:.0f}s)"
            if code in (0, 1) or self.stopping:
                self.failures.pop(name, None)
                say(line)
                continue
            # it could not run (bad config, a scheduler that refused): not again at once, backing off
            self.failures[name] = self.failures.get(name, 0) + 1
            wait = min(self.interval * 2 ** self.failures[name], MAX_BACKOFF_S)
            self.not_before[name] = time.monotonic() + wait
            err = child.out.with_suffix(".err")
            say(f"{line}: {_last_line(err) or f'see {err}'}; next try in {wait:.0f}s")

    def enqueue(self) -> dict[str, int]:
        """Every selected table's new keys, one line per table that got some."""
        added = {}
        for info in self.infos:
            jt = JobTable(info.instance())
            added[info.name] = n = jt.enqueue(self.restriction) if jt.supported else 0
            if n:
                say(f"+{n} keys {info.name}")
        return added

    def survey(self, tables: list[TableInfo]) -> dict[str, dict[str, int]]:
        """Each table's jobs rows per status, ``ready`` within the restriction: one or two
        statements per table, what an idle server costs."""
        counts = {}
        for info in tables:
            jt = JobTable(info.instance())
            counts[info.name] = c = jt.status_counts()
            if jt.supported and self.restriction.keys is not None and c["ready"]:
                c["ready"] = jt.ready(restriction=self.restriction)
        return counts

    def reconcile(self, tables: list[TableInfo]) -> None:
        """Keys of workers that are gone back to pending (the backends' hints asked)."""
        if tables:
            instances = [t.instance() for t in tables]
            reconcile_all(instances, self.policy, backends.hint(instances), self.restriction)

    def ready(self, route: Route, counts: dict[str, dict[str, int]], added: dict[str, int]) -> bool:
        """Keys of the route a worker could claim now (or, a table with no jobs table,
        keys missing), not every one of them behind a table that is not made yet."""
        due = any(counts[t.name]["ready"] or added.get(t.name) if JobTable(t.instance()).supported
                  else JobTable(t.instance()).counts(self.restriction)["missing"] for t in route.tables)
        if not due:
            return False
        lines = waiting(route.tables, self.restriction)
        self._once(f"wait:{route.backend}", lines, "; ".join(lines))
        return not lines

    def tick(self, launch: bool = True) -> bool:
        """One round: reap; reconcile the tables with keys reserved; enqueue; start the
        runs that have work. Whether anything is going on (a live run, or one just started)."""
        self.reap()
        if not launch:
            return self.live()
        counts = self.survey(self.infos)
        held = [t for t in self.infos if counts[t.name]["reserved"]]
        self.reconcile(held)
        counts.update(self.survey(held))  # (keys released just now are ready now)
        added = self.enqueue()
        for route in self.routes:
            if self.not_before.get(route.backend, 0) > time.monotonic() or route.backend in self.children:
                continue
            if not self._remote_live(route) and self.ready(route, counts, added):
                self.start(route)
        return self.live()

    def start(self, route: Route, argv: list[str] | None = None, what: str = "") -> None:
        """A run of the route (or ``argv``, which takes up an earlier one) in its own process."""
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = self.options.log_dir / f"{route.backend}-{stamp}.json"
        with open(out, "w") as stdout, open(out.with_suffix(".err"), "w") as stderr:
            proc = subprocess.Popen(argv or self.options.argv(route), stdout=stdout, stderr=stderr,
                                    stdin=subprocess.DEVNULL, start_new_session=True)  # (the server stops its runs)
        self.children[route.backend] = Child(route, proc, out)
        say(f"{what or f'started a {route} run'} (pid {proc.pid}; log {out.with_suffix('.err')})")

    def _remote_live(self, route: Route) -> bool:
        """A run of these tables that a driver before this one started (a server that
        died, a user's ``run --wait``) and whose workers still run (its scheduler says
        so): no second array or Job for the same keys. One whose workers cannot finish
        without its gone driver is taken up (``Backend.resume``); one whose workers all
        ended is recorded as interrupted."""
        if route.backend == "local":
            return False
        if route.backend not in self.schedulers:  # (its config read once, not every interval)
            self.schedulers[route.backend] = backends.get(route.backend).from_config(self.options.config_path)
        backend = self.schedulers[route.backend]
        for run in ledger.open_runs(self.options.pipeline, route.backend, route.names):
            ended = backend.run_ended(run)
            if ended:
                ledger.finish_run(run["run_id"], "interrupted")
                continue
            argv = backend.resume(run) if run["run_id"] not in self.resumed else None
            if argv:
                self.resumed.add(run["run_id"])
                self.start(route, [sys.executable, "-m", "dj_orchestrate", *argv], f"taking up run {run['run_id']}")
            else:
                self._once(f"remote:{route.backend}", run["run_id"], f"run {run['run_id']} {route} is still live; waiting for it")
            return True
        return False

    def stop(self, grace: float) -> None:
        """SIGINT to every run, as a Ctrl-C (local and Dask workers release or finish their
        keys within ``grace``; a Kubernetes run deletes its Jobs, whose pods do the same;
        SLURM arrays go on and are followed by the next server), then wait for them; a run
        still there after that is killed."""
        self.stopping = True
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):  # (already gone)
                os.killpg(child.proc.pid, signal.SIGINT)
        deadline = time.monotonic() + grace + 3
        while self.children and time.monotonic() < deadline:
            time.sleep(0.2)
            self.reap()
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):  # (already gone)
                os.killpg(child.proc.pid, signal.SIGKILL)
        self.reap()

    def _once(self, what: str, value: Any, line: str) -> None:
        """``line`` when ``value`` changed since it was last said (one line per change, not per poll)."""
        if value and self.said.get(what) != value:
            say(line)
        self.said[what] = value


def _last_line(path: Path) -> str:
    """The last line a run wrote on stderr (its error, when it could not run)."""
    lines = path.read_text(errors="replace").strip().splitlines() if path.is_file() else []
    return lines[-1].strip() if lines else ""


def _json_tail(text: str) -> dict:
    """The JSON summary a ``run --json`` printed last ({} when there is none)."""
    start = text.find("{")
    try:
        return json.loads(text[start:]) if start >= 0 else {}
    except ValueError:
        return {}


def say(line: str) -> None:
    """One line of a server's log, with its time (stderr: a ``run --json``'s stdout stays JSON)."""
    print(f"{datetime.datetime.now().isoformat(sep=' ', timespec='seconds')} {line}", file=sys.stderr, flush=True)


@dataclass
class Sidecar:
    """The dashboard beside a server (``serve --http``): a process of its own (DataJoint's
    connection is not shared between threads), its output the server's (it prints the
    URL with its token, as ``dashboard`` does), started again when it dies, at most every
    ``RESTART_S`` seconds (a port in use fails at once)."""

    argv: list[str]
    proc: subprocess.Popen | None = None
    last_start: float = float("-inf")

    RESTART_S = 30.0

    def keep(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        if self.proc is not None:
            say(f"the dashboard exited ({self.proc.returncode}); starting it again")
            self.proc = None
        if time.monotonic() - self.last_start >= self.RESTART_S:
            self.last_start = time.monotonic()
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def parse_http(text: str) -> tuple[str, int]:
    """``--http``: PORT (on 127.0.0.1) or HOST:PORT."""
    host, _, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--http {text!r} is not a port or HOST:PORT", "e.g. --http 8050 or --http 0.0.0.0:8050")
    return host or "127.0.0.1", int(port)


# ------------------------------------------------------------------------ serve
@dataclass
class Server:
    """One ``serve`` process: leads or stands by, beats, supervises (see the module's doc)."""

    supervisor: Supervisor
    conn: Any
    schemas: list[str]
    interval: float = 60.0
    grace: float = 5.0
    max_idle: float | None = None
    until: datetime.datetime | None = None
    stopping: str = ""
    leader: bool = False
    dashboard: Sidecar | None = None

    def __post_init__(self) -> None:
        self.lock = Leadership(self.conn, self.schemas)
        self.name = f"{platform.node()}:{os.getpid()}:{int(time.time())}"[:64]
        self.started = ledger.now()

    def _stop(self, signum: int, _: Any) -> None:
        self.stopping = signal.Signals(signum).name

    def run(self) -> int:
        """Until SIGTERM/SIGINT, ``--until`` or ``--max-idle``: exit 0."""
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, self._stop)
        say(f"serving {self.supervisor.options.pipeline} as {self.name}: "
            f"{'; '.join(map(str, self.supervisor.routes))}, every {self.interval:g}s")
        idle_since = time.monotonic()
        outage: float | None = None
        while not self.stopping:
            if self.until and datetime.datetime.now() >= self.until:
                self.stopping = f"--until {self.until.isoformat(sep=' ', timespec='minutes')}"
                break
            if self.dashboard is not None:
                self.dashboard.keep()
            try:
                busy = self.tick()
                if outage is not None:
                    say(f"database back after {time.monotonic() - outage:.0f}s")
                    outage = None
            except Exception as err:
                if not db.is_lost(err, self.conn):
                    raise
                if outage is None:
                    outage = time.monotonic()
                    say(f"database unreachable ({str(err).splitlines()[0] if str(err) else type(err).__name__}); "
                        "retrying with backoff")
                self.leader = False
                self._reconnect()
                continue
            idle_since = time.monotonic() if busy else idle_since
            if self.max_idle is not None and time.monotonic() - idle_since >= self.max_idle:
                self.stopping = f"--max-idle {self.max_idle:g}s with nothing to do"
                break
            self._sleep(self.interval if self.leader else min(self.interval, STANDBY_POLL_S))
        say(f"stopping ({self.stopping}): letting runs finish or release their keys (--grace {self.grace:g}s)")
        self.supervisor.stop(self.grace)
        if self.dashboard is not None:
            self.dashboard.stop()
        with contextlib.suppress(Exception):  # (a database that is gone took the lock with it)
            if self.leader:
                self.lock.release()
            ledger.forget_server(self.name)
        say("stopped")
        return 0

    def tick(self) -> bool:
        was = self.leader
        self.leader = self.lock.held() or self.lock.try_acquire()
        if self.leader and not was:
            ledger.demote_leaders(self.lock.key, self.name)
            say("leading: this server starts the runs")
        elif was and not self.leader:
            say("no longer leading (the lock went with a lost connection): standing by")
        elif not self.leader and "standby" not in self.supervisor.said:
            self.supervisor.said["standby"] = True
            say("standing by: another server leads")
        ledger.beat(self.name, pipeline_key=self.lock.key, pipeline=self.supervisor.options.pipeline[:1023],
                    host=platform.node()[:255], pid=os.getpid(), role="leader" if self.leader else "standby",
                    interval_s=self.interval, started=self.started)
        return self.supervisor.tick(launch=self.leader)

    def _reconnect(self) -> None:
        """Open the connection again, backing off to 30 s between tries, for as long as it takes."""
        delay = 1.0
        while not self.stopping:
            try:
                self.conn.connect()
                self.conn._in_transaction = False
                self.conn.connection_id = self.conn.adapter.get_connection_id(self.conn._conn)
                return
            except Exception:
                self._sleep(delay)
                delay = min(delay * 2, 30.0)

    def _sleep(self, seconds: float) -> None:
        """Sleep, waking for a signal and to note runs that ended."""
        deadline = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < deadline:
            time.sleep(min(0.5, max(0.0, deadline - time.monotonic())))


def parse_until(text: str) -> datetime.datetime:
    """``--until``: an ISO date-time, or HH:MM (the next such time)."""
    try:
        if len(text) <= 5 and ":" in text:
            hour, minute = map(int, text.split(":"))
            now = datetime.datetime.now()
            at = now.replace(hour=hour, minute=minute, second=0, microsecond=0)
            return at if at > now else at + datetime.timedelta(days=1)
        return datetime.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"--until {text!r} is not a time", "e.g. --until 06:00 or --until 2026-12-08T06:00") from None
