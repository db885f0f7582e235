"""What stops a make, and where it may be stopped: stop signals (a grace period for the
key in flight, then a rollback), a make's timeout, and never inside a database call."""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

from ..flow import Node
from ..jobs import Claim
from ..watchdog import MakeTimedOut, Watchdog, message as timeout_message

log = logging.getLogger("dj_orchestrate")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)
_DATABASE_CALLS = ("pymysql", "psycopg2", "datajoint.connection", "datajoint.adapters")  # not to be interrupted


class WorkerInterrupted(SystemExit):
    """Raised into ``make`` when the grace period after a stop signal ends. A SystemExit,
    so that DataJoint's ``_populate1`` rolls the transaction back before it propagates."""


class Interrupts:
    """The signal handlers and the make timeout of a ``Worker`` (mixed into it: they read
    and set its state)."""

    # ------------------------------------------------------------------ signals
    def _install_signals(self) -> dict:
        previous = {s: signal.signal(s, self._on_stop) for s in STOP_SIGNALS}
        previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._on_grace_over)
        return previous

    def _on_stop(self, signum: int, frame: Any) -> None:
        if self.stopping:
            return
        self.stopping = True
        self.stop_signal = signum
        log.warning("signal %d: stopping after the key in flight (grace %.0fs)", signum, self.settings.grace)
        if self.in_flight is not None:
            if self.settings.grace > 0:  # (or sooner, at the make's timeout)
                left = self.settings.grace if self._deadline is None else self._deadline - time.monotonic()
                signal.setitimer(signal.ITIMER_REAL, max(0.001, min(self.settings.grace, left)))
            else:
                self._interrupt(f"signal {signum}", frame)

    def _on_grace_over(self, signum: int, frame: Any) -> None:
        if self.in_flight is None:
            return
        if self._deadline is not None and (not self.stopping or time.monotonic() >= self._deadline - 0.01):
            self._interrupt(timeout_message(self._seconds), frame, MakeTimedOut)
        else:
            self._interrupt("grace period over", frame)

    def _interrupt(self, why: str, frame: Any, error: type[SystemExit] = WorkerInterrupted) -> None:
        """Roll the key in flight back by raising into its make, but never in the middle
        of a database call (raised there, the exception tears the connection: pymysql is
        left mid-packet, and the worker can no longer release its claims) nor outside
        ``_populate1`` (the worker's own bookkeeping). Else try again in 20 ms."""
        in_make = False
        while frame is not None:
            if frame.f_globals.get("__name__", "").startswith(_DATABASE_CALLS):
                in_make = False
                break
            in_make = in_make or frame.f_code.co_name == "_populate1"
            frame = frame.f_back
        if in_make:
            raise error(why)
        signal.setitimer(signal.ITIMER_REAL, 0.02)


    def _arm(self, node: Node, batch: list[Claim], i: int) -> None:
        """The make of ``batch[i]`` gets its table's timeout: the alarm, the watchdog behind it."""
        seconds = self.settings.timeout_of(node.info.name)
        if seconds is None:
            return
        self._seconds, self._deadline = seconds, time.monotonic() + seconds
        if self._watchdog is None:
            self._watchdog = Watchdog(self.settings.policy)
            self._watchdog.start()
        self._watchdog.arm(seconds, node.jt, self.owner, batch[i], batch[i + 1:])
        signal.setitimer(signal.ITIMER_REAL, seconds)

    def _disarm(self) -> None:
        self._deadline = None
        if self._watchdog is not None:
            self._watchdog.disarm()
