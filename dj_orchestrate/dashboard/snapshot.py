"""Figures that cost a pass over every key (each table's counts, errors by cause, plans),
computed at most once per TTL seconds, shared by every page and viewer, and refreshed
where no page waits for them.

On a million keys such a figure costs a quarter to a full second of database work, too
much for a page (300 ms at most). A ``Snapshot`` holds the last one computed:

* younger than ``TTL``: served as it is;
* older, up to ``STALE``: served, while a refresh runs in a thread of its own (on the
  dashboard's second connection: pages go on meanwhile);
* none yet, older than ``STALE`` (no page asked for a while), or invalidated by an action
  of the dashboard (retry, ignore, reconcile): the page waits for a fresh one.

So a page shows what the database held at most about ``TTL`` seconds (and one refresh)
ago, and right after the dashboard's own actions what they did."""

from __future__ import annotations

import datetime
import logging
import threading
import time
from typing import Callable, Generic, TypeVar

T = TypeVar("T")
TTL = 5.0  # seconds a snapshot is served as it is
STALE = 60.0  # seconds after which a page waits for a fresh one rather than show an old one
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
        self.at = 0.0  # the same, monotonic
        self.of = -1  # the generation the value belongs to
        self.generation = 0  # an action's invalidate() starts a new one

    def get(self) -> tuple[T, datetime.datetime]:
        """The figure and when it was taken."""
        with self.guard:
            value, taken, age, current = self.value, self.taken, time.monotonic() - self.at, self.of == self.generation
        if current and age < self.ttl:
            return value, taken  # type: ignore[return-value]
        if current and age < self.stale:
            if not self.busy.locked():
                threading.Thread(target=self._background, name=f"snapshot-{self.name}", daemon=True).start()
            return value, taken  # type: ignore[return-value]
        return self._refresh()

    def invalidate(self) -> None:
        """What was taken before now is not served again: the next page waits for a fresh one."""
        with self.guard:
            self.generation += 1

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

    def _background(self) -> None:
        try:
            self._refresh()
        except Exception as err:  # the old figure stays; the page that next waits for one sees the error
            log.warning("dashboard: refreshing the %s failed: %s", self.name, err)
