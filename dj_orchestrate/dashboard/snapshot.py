"""Figures that cost a pass over every key (each table's counts, errors by cause, plans),
computed at most once per TTL seconds, shared by every page and viewer, and refreshed
where no page waits for them.

On a million keys such a figure costs a quarter to a full second of database work, too
much for a page (300 ms at most). A ``Snapshot`` holds the last one computed, and:

* the dashboard takes its snapshots before it accepts requests, and again right after
  each of its actions (retry, ignore, reconcile) before it answers (``warm``): neither the
  first page nor the page an action leads to waits, and that page shows what it did;
* a thread of the dashboard's own (``Keeper``) takes again each snapshot that a page
  asked for in the last ``STALE`` seconds once it is ``TTL`` old: the pages viewed now
  never wait;
* a page waits for a fresh one only where the snapshot was not kept so (no page asked
  for it for a while) or an action invalidated it.

So a page shows what the database held at most about ``TTL`` seconds (and one refresh)
ago, and the database does that work only for what someone looks at."""

from __future__ import annotations

import datetime
import logging
import threading
import time
from typing import Callable, Generic, Sequence, TypeVar

T = TypeVar("T")
TTL = 5.0  # seconds a snapshot is served as it is
STALE = 60.0  # seconds after the last page that asked for it that a snapshot is kept fresh
log = logging.getLogger("dj_orchestrate")


class Snapshot(Generic[T]):
    """The last result of ``compute`` and when it was taken; see the module's docstring."""

    def __init__(self, name: str, compute: Callable[[], T], busy: threading.Lock, ttl: float = TTL,
                 stale: float = STALE) -> None:
        """``busy``: held while ``compute`` runs, shared by the snapshots whose computations
        use one connection (they run one at a time)."""
        self.name, self.compute, self.busy, self.ttl, self.stale = name, compute, busy, ttl, stale
        self.guard = threading.Lock()  # the fields below
        self.value: T | None = None
        self.taken = datetime.datetime.min  # when the value was computed (its start)
        self.at = float("-inf")  # the same, monotonic
        self.of = -1  # the generation the value belongs to
        self.generation = 0  # an action's invalidate() starts a new one
        self.wanted = float("-inf")  # when a page last asked for it (or it was warmed), monotonic
        self.failed = float("-inf")  # when a refresh last failed, monotonic: not tried again for a TTL

    def get(self) -> tuple[T, datetime.datetime]:
        """The figure and when it was taken: at once where it is fresh, or kept so."""
        now = time.monotonic()
        with self.guard:
            value, taken, age, current = self.value, self.taken, now - self.at, self.of == self.generation
            kept, self.wanted = now - self.wanted < self.stale, now
        if current and (age < self.ttl or (kept and age < self.stale)):  # (kept: a refresh is under way)
            return value, taken  # type: ignore[return-value]
        return self._refresh()

    def invalidate(self) -> None:
        """What was taken before now is not served again: the next page waits for a fresh one."""
        with self.guard:
            self.generation += 1

    def warm(self) -> None:
        """Take the figure now unless the one held is current and younger than the TTL, and
        keep it fresh for ``stale`` seconds, so that the next page finds it. A failure is
        logged, not raised: the page that next needs the figure tries again and shows it."""
        with self.guard:
            self.wanted = time.monotonic()
        self._try_refresh()

    def due(self) -> bool:
        """Whether the ``Keeper`` should take it again: a page asked for it lately, and it
        is older than the TTL, or invalidated."""
        now = time.monotonic()
        with self.guard:
            return (now - self.wanted < self.stale and now - self.failed >= self.ttl
                    and (now - self.at >= self.ttl or self.of != self.generation))

    def _refresh(self) -> tuple[T, datetime.datetime]:
        with self.busy:
            with self.guard:
                if self.of == self.generation and time.monotonic() - self.at < self.ttl:
                    return self.value, self.taken  # type: ignore[return-value]  # refreshed while this one waited
                generation = self.generation
            at, taken = time.monotonic(), datetime.datetime.now()
            value = self.compute()
            with self.guard:  # (invalidated meanwhile: kept, but not current)
                self.value, self.taken, self.at, self.of = value, taken, at, generation
            return value, taken

    def _try_refresh(self) -> None:
        try:
            self._refresh()
        except Exception as err:  # the old figure stays; the page that next waits for one sees the error
            with self.guard:
                self.failed = time.monotonic()
            log.warning("dashboard: refreshing the %s failed: %s", self.name, err)


class Keeper:
    """A thread that takes the snapshots again as they fall due (``Snapshot.due``), one
    at a time (they share a connection), so that no page viewed now waits for one."""

    TICK = 0.25  # seconds between looks

    def __init__(self, snapshots: Sequence[Snapshot]) -> None:
        self.snapshots = snapshots
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="snapshots", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)  # (a daemon: a refresh under way ends with the process)

    def _run(self) -> None:
        while not self.stopped.wait(self.TICK):
            for snapshot in self.snapshots:
                if snapshot.due():
                    snapshot._try_refresh()
