"""One ``serve`` process: leads or stands by, beats, supervises; the dashboard beside it
(``--http``) and its ``--until``."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Any

from .. import db, ledger
from ..errors import UsageError
from .leadership import Leadership
from .supervisor import Supervisor, say

STANDBY_POLL_S = 5.0  # how often a standby tries the lock: a dead leader is replaced within this (plus a beat)


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


@dataclass
class Server:
    """One ``serve`` process: leads or stands by, beats, supervises (see ``dj_orchestrate.serve``)."""

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
