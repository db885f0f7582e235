"""Processes a test starts and the database servers it may restart: shared by the
tests of faults and of ``serve``. Everything a test starts is killed when it ends."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import datajoint as dj
import psutil
from conftest import jobs_rows, reachable, require, wait_for

from dj_orchestrate.jobs import LiveConnections


def reserved(table) -> list[dict]:
    return [r for r in jobs_rows(table) if r["status"] == "reserved"]


def live_ids() -> set[int]:
    return LiveConnections(dj.conn()).snapshot()


def assert_all_made(chain, n: int, skip: set[int] = frozenset()) -> None:
    """Square and Total hold exactly what a plain ``populate()`` would: value² and value²+1."""
    want = {i for i in range(n) if i not in skip}
    square = {r["item_id"]: r["square"] for r in chain.Square.to_dicts()}
    total = {r["item_id"]: r["total"] for r in chain.Total.to_dicts()}
    assert square == {i: float(i) ** 2 for i in want}
    assert total == {i: float(i) ** 2 + 1 for i in want}


def assert_nothing_reserved(chain) -> None:
    for t in (chain.Square, chain.Total):
        assert reserved(t) == [], f"{t.__name__}: keys left reserved"


class Procs:
    """Subprocesses a test starts: output in files, all of them killed (with every
    process they started) when the test ends, whatever happens."""

    def __init__(self, db, tmp_path: Path) -> None:
        self.db, self.tmp = db, tmp_path
        self.procs: list[tuple[subprocess.Popen, Path]] = []
        self.pids: set[int] = set()

    def start(self, args: list[str], env: dict | None = None, name: str = "proc") -> subprocess.Popen:
        out = self.tmp / f"{name}-{len(self.procs)}.out"
        full_env = {**self.db.env, "DJO_LOG_DIR": str(self.tmp / "logs"), **(env or {})}
        with open(out, "wb") as f:
            p = subprocess.Popen(args, env=full_env, cwd=self.tmp, stdout=f, stderr=subprocess.STDOUT,
                                 start_new_session=True)
        self.procs.append((p, out))
        self.pids.add(p.pid)
        return p

    def cli(self, *args: str, env: dict | None = None, name: str = "cli") -> subprocess.Popen:
        return self.start([sys.executable, "-m", "dj_orchestrate", *args], env, name)

    def output(self, p: subprocess.Popen) -> str:
        return next(out for q, out in self.procs if q is p).read_text(errors="replace")

    def workers_logs(self) -> str:
        logs = sorted((self.tmp / "logs").rglob("*.log"))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)

    def descendants(self) -> set[int]:
        """Every process our processes started, including the workers the local backend
        starts in their own sessions (remembered, so that they can be killed later), and
        any that outlived its parent: a Python process of ours with this test's schema in
        its environment (only ours: a database server restarted here must never match)."""
        for pid in list(self.pids):
            try:
                self.pids.update(c.pid for c in psutil.Process(pid).children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        for proc in psutil.process_iter(["cmdline"]):
            try:
                ours = (proc.info["cmdline"] or [""])[0] == sys.executable and proc.pid != os.getpid()
                if ours and proc.environ().get("DJO_TEST_SCHEMA") == self.db.schema:
                    self.pids.add(proc.pid)
            except (psutil.Error, OSError):
                pass
        return self.pids

    def kill_all(self) -> None:
        self.descendants()
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        for p, _ in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


def finish(procs: Procs, p: subprocess.Popen, timeout: float = 120) -> str:
    """Wait for ``p``; return its output (with the workers' logs when it failed)."""
    try:
        p.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        procs.kill_all()
        raise AssertionError(f"timed out after {timeout}s:\n{procs.output(p)[-4000:]}\n{procs.workers_logs()}")
    return procs.output(p)


def explain(procs: Procs, p: subprocess.Popen) -> str:
    return f"exit {p.returncode}\n{procs.output(p)[-4000:]}\n{procs.workers_logs()}"


PORTS = {"mysql": 3306, "postgresql": 5432}


@dataclasses.dataclass(frozen=True)
class Server:
    """The database server the tests use, as this machine runs it: the process that
    listens on its port, found by the port (not by a pid file at a guessed path: on this
    machine SLURM's accounting database is another mariadbd from the same binary)."""

    pid: int
    argv: tuple[str, ...]
    pidfile: str  # MariaDB: where the server writes its pid (start-stop-daemon's handle on it)
    cluster: tuple[str, str] = ("", "")  # PostgreSQL: (version, name) for pg_ctlcluster

    @classmethod
    def find(cls, backend: str) -> Server | str:
        """The server, or why it cannot be restarted from here."""
        listening = [c.pid for c in psutil.net_connections("tcp")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == PORTS[backend] and c.pid]
        if not listening:
            return f"no local process listens on port {PORTS[backend]}"
        proc = psutil.Process(listening[0])
        argv = (proc.exe(), *proc.cmdline()[1:])  # (its own argv[0] may be a bare name)
        if backend == "postgresql":  # Debian's clusters: config_file=/etc/postgresql/<version>/<name>/...
            config = next((a.split("=", 1)[1] for a in argv if a.startswith("config_file=")), "")
            parts = Path(config).parts
            if parts[:3] != ("/", "etc", "postgresql") or len(parts) < 5:
                return f"PostgreSQL on port 5432 is not a Debian cluster (pg_ctlcluster): {' '.join(argv)}"
            return cls(proc.pid, argv, "", (parts[3], parts[4]))
        pidfile = dj.conn().query("SELECT @@pid_file").fetchone()[0]
        if not os.path.isabs(pidfile):
            pidfile = os.path.join(dj.conn().query("SELECT @@datadir").fetchone()[0], pidfile)
        return cls(proc.pid, argv, pidfile)

    def start(self) -> None:
        if self.cluster[0]:
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", *self.cluster, "start"], timeout=60,
                           env=SERVER_ENV)
        else:
            # --pidfile, not --exec alone: another mariadbd (SLURM's accounting database)
            # runs from the same binary and would make start-stop-daemon do nothing.
            subprocess.run(["start-stop-daemon", "--start", "--background", "--pidfile", self.pidfile,
                            "--exec", self.argv[0], "--", *self.argv[1:]], check=True, timeout=30, env=SERVER_ENV)
        _wait_port(PORTS["postgresql" if self.cluster[0] else "mysql"], True, 60)

    def restart(self) -> float:
        """Restart it; returns how long it was down."""
        started = time.monotonic()
        if self.cluster[0]:
            subprocess.run(["pg_ctlcluster", "--skip-systemctl-redirect", *self.cluster, "restart", "-m", "fast"],
                           check=True, timeout=60, capture_output=True, env=SERVER_ENV)
            _wait_port(5432, True, 60)
        else:
            subprocess.run(["mysqladmin", "-h127.0.0.1", "-P3306", "-uroot", "shutdown"], check=True, timeout=60,
                           capture_output=True, env=SERVER_ENV)
            wait_for(lambda: not psutil.pid_exists(self.pid), 60, interval=0.1, what="mariadbd to exit")
            self.start()
        return time.monotonic() - started

    def ensure_up(self) -> None:
        if not reachable(PORTS["postgresql" if self.cluster[0] else "mysql"]):
            self.start()


def _wait_port(port: int, up: bool, timeout: float) -> None:
    wait_for(lambda: reachable(port) == up, timeout, interval=0.2, what=f"port {port} {'up' if up else 'down'}")


SERVER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}  # never the test's own env


def restartable(backend: str) -> Server:
    """The server, where this machine lets the test restart it; else skip locally and fail
    in CI (the only test where ``run`` must reconcile a dead reservation on its own)."""
    require(not os.environ.get("DJO_TEST_NO_RESTART"), "restarting the database (DJO_TEST_NO_RESTART is set)")
    require(os.geteuid() == 0, "root (to restart the database server)")
    tools = ["pg_ctlcluster"] if backend == "postgresql" else ["mysqladmin", "start-stop-daemon"]
    require(all(shutil.which(t) for t in tools), " and ".join(tools))
    server = Server.find(backend)
    require(isinstance(server, Server), f"a restartable {backend} server ({server})")
    return server
