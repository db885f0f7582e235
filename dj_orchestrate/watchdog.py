"""A make that runs past its table's ``--timeout`` (``timeout`` in the config).

A make can hang in two ways, so there are two layers:

* in Python (a sleep, a loop, a read that the interpreter resumes between signals):
  SIGALRM at the deadline raises ``MakeTimedOut`` into the make, never inside a database
  call (``Worker._interrupt``); DataJoint rolls the key's transaction back, the key is
  failed with ``timed out after N s`` under the retry policy, and the same worker goes on
  with its next key;
* in C code that never returns to the interpreter, or with signals blocked (a deadlocked
  library, a stuck driver read): no signal reaches it, and the worker's own connection
  may be the stuck one. This thread, with a connection of its own opened only then,
  waits ``MARGIN`` seconds past the deadline; if the same make is still running, it fails
  that key (``JobTable.fail``, the same policy), puts the unstarted rest of the batch back
  to ``pending`` uncharged, and kills its process with SIGKILL (the server rolls the
  make's transaction back as the session ends; the local pool starts a new worker). The
  records come first: left to reconcile, the key would be charged as a dead worker's
  ("lost its database connection", retried up to max_attempts), and reconcile takes the
  *first* reserved key of a dead owner as the one in flight. What is left reserved after
  the kill is only keys already made (completions not yet flushed), which reconcile
  marks done without a charge.
"""

from __future__ import annotations

import copy
import logging
import os
import signal
import threading
import time
from typing import Sequence

from .jobs import Claim, JobTable, Owner, Policy

log = logging.getLogger("dj_orchestrate")

MARGIN = 3.0  # seconds past the deadline the alarm has to stop a make in Python


class MakeTimedOut(SystemExit):
    """Raised into a make that ran past its timeout. A SystemExit, so that a make's own
    ``except Exception`` cannot swallow it and DataJoint's ``_populate1`` rolls back."""


def seconds_text(seconds: float) -> str:
    """``30``, ``2.5``: as the user wrote it (``:g`` would write a week, 604800, as ``6.048e+05``)."""
    return str(int(seconds)) if float(seconds).is_integer() else str(seconds)


def message(seconds: float) -> str:
    return f"timed out after {seconds_text(seconds)} s"


class Watchdog(threading.Thread):
    """Kills its process when a make is still running ``MARGIN`` seconds after its deadline
    (see the module's docstring). ``arm`` before each make, ``disarm`` after it."""

    def __init__(self, policy: Policy) -> None:
        super().__init__(name="dj-orchestrate-watchdog", daemon=True)
        self.policy = policy
        self._cond = threading.Condition()
        self._armed: tuple | None = None  # (deadline, seconds, jt, owner, claim, unstarted)

    def arm(self, seconds: float, jt: JobTable, owner: Owner, claim: Claim, unstarted: Sequence[Claim]) -> None:
        with self._cond:
            self._armed = (time.monotonic() + seconds + MARGIN, seconds, jt, owner, claim, list(unstarted))
            self._cond.notify()

    def disarm(self) -> None:
        with self._cond:  # (waits while the watchdog acts: then this process is about to die)
            self._armed = None

    def run(self) -> None:
        with self._cond:
            while True:
                if self._armed is None:
                    self._cond.wait()
                    continue
                left = self._armed[0] - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                self._kill(*self._armed[1:])

    def _kill(self, seconds: float, jt: JobTable, owner: Owner, claim: Claim, unstarted: list[Claim]) -> None:
        log.error("make of %s %s still running %.0f s past its timeout (blocked outside Python): "
                  "failing the key and killing this worker", jt.table.__class__.__name__, claim.key, MARGIN)
        try:
            own = copy.copy(jt)
            own.conn = copy.copy(jt.conn)  # same server and credentials, a session of its own
            own.conn.connect()
            own.conn._in_transaction = False
            own.fail(owner, claim, message(seconds), None, self.policy)
            own._repend(owner.host, owner.pid, owner.connection_id, [c.raw for c in unstarted])
        except Exception as err:  # reconcile releases the keys instead (charging the key in flight)
            log.error("could not record the timeout (%s); `dj-orchestrate reconcile` will release the keys", err)
        finally:
            os.kill(os.getpid(), signal.SIGKILL)
