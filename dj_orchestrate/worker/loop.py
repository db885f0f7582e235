"""The worker loop: claim from whichever table is ready, make, flush, reconnect."""

from __future__ import annotations

import logging
import signal
import time
import traceback
from typing import Any, Callable

from .. import durations, flow, ledger, serial
from ..db import is_lost as _is_lost, reconnect
from ..flow import Node
from ..jobs import Claim, Owner, Restriction, activity_of, ensure_all
from ..pipeline import TableInfo
from ..watchdog import MakeTimedOut, Watchdog
from .handle import JobsHandle
from .interrupts import Interrupts, WorkerInterrupted
from .settings import Settings, Tally

log = logging.getLogger("dj_orchestrate")

EMPTY_CLAIM_RETRIES = 50  # empty claims in a row while keys are due, before a worker gives up
CLAIM_RETRIES = 4  # empty claims of one table with keys due, before the next table is tried


def _holds_lock(node: Node) -> bool:
    """A table served under its lock (``serial``) that this worker holds: it must be
    claimed again, since only a claim that finds no key lets the lock go."""
    return bool(getattr(node.jt, "locked", False))


class Worker(Interrupts):
    """Claims and makes keys of the given tables, whichever is ready (see ``flow``)."""

    def __init__(self, tables: list[TableInfo], settings: Settings, shard: tuple | None = None,
                 run_id: str | None = None, shard_index: int | None = None,
                 restriction: Restriction = Restriction()) -> None:
        self.tables = tables
        self.settings = settings
        self.shard = shard
        self.run_id = run_id
        self.shard_index = shard_index
        self.restriction = restriction
        self.conn = tables[0].cls.connection
        self.conn._config["database.reconnect"] = False  # a lost connection must be seen, not hidden
        self.owner = self._new_owner()
        self.stopping = False
        self.stop_signal: int | None = None
        self.in_flight: Claim | None = None
        self._completed: dict[Node, list[Claim]] = {}
        self._last_flush = time.monotonic()
        self._seconds_per_key: dict[Node, float] = {}
        self._empty = 0  # claims in a row that came back empty
        self._due: set[Node] | None = None  # the tables known to have keys due (None: ask the database)
        self._full: set[Node] = set()  # of those, the ones there only because their last claim came back full
        self._deadline: float | None = None  # when the make in flight times out
        self._seconds = 0.0  # its timeout
        self._watchdog: Watchdog | None = None

    def _new_owner(self) -> Owner:
        return Owner.of(self.conn, self.settings.backend_job_id, self.settings.log_path)

    # --------------------------------------------------------------------- run
    def run(self) -> Tally:
        tally = Tally()
        # (before the ledger: declaring its schema makes DataJoint reload the dependencies)
        nodes = serial.adopt(flow.build(self.tables, self.settings.order), self.restriction)
        recorded = durations.means([n.info.name for n in nodes])
        self._seconds_per_key = {n: recorded[n.info.name] for n in nodes if n.info.name in recorded}
        previous = self._install_signals()
        self._record(state="running", started=ledger.now())
        try:
            ensure_all([n.jt for n in nodes])
            if any(not n.opened for n in nodes):
                self._more_coming(nodes)  # open the tables whose gates are already finished
            while not self.stopping:
                node, batch = self._claim_next(nodes)
                if batch:
                    self._empty = 0
                    self._make_batch(node, batch, tally)
                    if node.readers:  # what it made feeds the next claim
                        self._flush(node, force=True)
                    continue
                for n in nodes:
                    self._flush(n, force=True)
                if not self._more_coming(nodes):
                    break
            for n in nodes:
                self._flush(n, force=True)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            for s, handler in previous.items():
                signal.signal(s, handler)
        tally.stop_signal = self.stop_signal
        durations.flush()
        self._record(state="interrupted" if self.stopping else "done", ended=ledger.now(),
                     keys_done=tally.done, keys_failed=tally.failed)
        return tally

    def _claim_next(self, nodes: list[Node]) -> tuple[Node | None, list[Claim]]:
        """A batch from the first open table (in the worker's order) that has keys due.

        Which tables have keys due, one statement says for all of them (``_ask_due``),
        asked again only when a claim comes back empty or no table is known to have any:
        a worker serving N tables does not try N jobs tables per claim. A table whose
        claim came back short has none left; a table its makes fed has some (``_flush``).
        A claim that comes back empty from a table that still has keys due (another
        claim was scanning past them) is tried again before the next table, so the order
        holds. A table whose last claim came back full may have none left: when its next
        claim comes back empty, it is dropped without asking (on a wide pipeline of
        200-key tables, that was an empty claim and a question for every table)."""
        tries = CLAIM_RETRIES if len(nodes) > 1 else 1
        empty: dict[Node, int] = {}
        asked = False
        while not self.stopping:
            if self._due is None:
                self._ask_due(nodes)
                asked = True
            due = self._due or set()
            node = next((n for n in nodes if n.opened and n in due and empty.get(n, 0) < tries), None)
            if node is None:
                if asked:
                    return None, []
                self._due = None  # what others enqueued, or keys whose backoff ended
                continue
            if empty.get(node):
                time.sleep(0.005 * 2 ** (empty[node] - 1))
            limit = self._batch_size(node)
            batch = self._claim(node, limit)
            was_full = node in self._full
            self._full.discard(node)
            if batch:
                if len(batch) < limit and self._due is not None and not _holds_lock(node):
                    self._due.discard(node)
                elif self._due is not None:
                    self._full.add(node)
                return node, batch
            if was_full and self._due is not None:  # its full claim took its last keys: known without asking
                self._due.discard(node)
                empty[node] = tries
                continue
            empty[node] = empty.get(node, 0) + 1
            self._due = None
        return None, []

    def _ask_due(self, nodes: list[Node]) -> None:
        """The tables with keys due now, in one statement (a worker of one table claims
        instead of asking)."""
        self._full.clear()
        if len(nodes) == 1:
            self._due = set(nodes)
            return
        try:
            self._due = {n for n, (due, _) in zip(nodes, activity_of([n.jt for n in nodes])) if due or _holds_lock(n)}
        except Exception as err:
            if not _is_lost(err, self.conn):
                raise
            self._due = set(nodes)  # the next claim reconnects

    def _more_coming(self, nodes: list[Node]) -> bool:
        """After claims came back empty: can this worker still get keys? Yes when keys
        are due (a claim can skip keys another claim is scanning past: see
        ``JobTable.ready``; given up after EMPTY_CLAIM_RETRIES empty claims in a row), or
        when a table it serves still has keys due or in flight that feed another of its
        tables (their downstream keys appear when they are made), or when a table its make
        reads is being made by someone else. Nothing else can come (a gate that cannot
        open: the driver says why, ``flow.waiting``): it exits. Waits a moment, growing."""
        try:
            if self.shard:
                activity = {nodes[0]: (bool(nodes[0].jt.ready(self.shard)), False)}
            else:
                activity = dict(zip(nodes, activity_of([n.jt for n in nodes])))
            opened = flow.open_gates(nodes, activity, self.restriction)
            self._due = None if self.shard else {n for n in nodes if activity[n][0] or _holds_lock(n)}
            self._full.clear()
            if opened:
                return True
        except Exception as err:
            if not _is_lost(err, self.conn):
                raise
            return True  # the next claim reconnects
        if any(n.opened and activity[n][0] for n in nodes):
            self._empty += 1
            if self._empty > EMPTY_CLAIM_RETRIES:
                return False
        elif any(n.feeds and any(activity[n]) for n in nodes) or any(c["reserved"] for n in nodes for _, c in n.blocked):
            self._empty = min(self._empty + 1, 7)  # polls at most every 0.5 s while upstream works
        else:
            return False
        if not self.stopping:
            time.sleep(min(0.5, 0.005 * 2 ** self._empty))
        return True

    def _batch_size(self, node: Node) -> int:
        """Keys of about ``batch_seconds`` of work, by the table's mean make duration:
        recorded by earlier runs (``durations.means``), moved towards this worker's own
        as it makes keys; one key where nothing is known yet."""
        seconds = self._seconds_per_key.get(node, 0.0)
        if seconds <= 0:
            return 1
        return max(1, min(self.settings.max_batch, int(self.settings.batch_seconds / seconds)))

    def _claim(self, node: Node, limit: int) -> list[Claim]:
        while True:
            try:
                return node.jt.claim(self.owner, limit, self.shard)
            except Exception as err:
                if not _is_lost(err, self.conn):
                    raise
                self._reconnect(node, [])

    def _make_batch(self, node: Node, batch: list[Claim], tally: Tally) -> None:
        jt = node.jt
        table = jt.table
        for i, claim in enumerate(batch):
            if self.stopping:
                self._safe(lambda: jt.release(self.owner, batch[i:]))
                return
            handle = JobsHandle(self, node, claim)
            started = time.monotonic()
            self.in_flight = claim
            self._arm(node, batch, i)
            try:
                table._populate1(claim.key, handle, suppress_errors=True, return_exception_objects=False,
                                 make_kwargs=self.settings.make_kwargs)
            except WorkerInterrupted:  # (only ever raised once a stop signal set self.stopping)
                self._close_transaction()
                if self._committed(table, claim):
                    handle.complete(claim.key)
                handle.outcome = "done" if handle.completed else "interrupted"
            except MakeTimedOut as exc:
                self._close_transaction()
                if self._committed(table, claim):  # (landed after the commit)
                    handle.complete(claim.key)
                elif handle.outcome == "done":  # landed outside make: not yet recorded
                    handle.outcome = jt.fail(self.owner, claim, str(exc), traceback.format_exc(), self.settings.policy)
            except SystemExit as exc:  # a make that exits (sys.exit, DataJoint's SigTermTable): that key's error
                self._close_transaction()
                if handle.outcome == "done" and not handle.completed:  # raised outside make: not yet recorded
                    handle.outcome = jt.fail(self.owner, claim, f"SystemExit: {exc}", traceback.format_exc(),
                                             self.settings.policy)
            except Exception as err:  # outside make: the key-in-table check, a commit
                if _is_lost(err, self.conn):
                    handle.outcome = "lost"
                else:
                    self._close_transaction()
                    handle.outcome = jt.fail(self.owner, claim, f"{type(err).__name__}: {err}",
                                             traceback.format_exc(), self.settings.policy)
            finally:
                self.in_flight = None
                signal.setitimer(signal.ITIMER_REAL, 0)
                self._disarm()
            if handle.outcome == "interrupted":
                charge = claim if self.stop_signal not in (None, signal.SIGINT) else None
                reason = f"was stopped by {signal.Signals(self.stop_signal or signal.SIGINT).name} (preemption or time limit)"
                self._safe(lambda: jt.release(self.owner, batch[i:], charge=charge, reason=reason,
                                              policy=self.settings.policy))
                return
            if handle.outcome == "lost":
                self._reconnect(node, batch[i:], charge=claim)
                return
            elapsed = time.monotonic() - started  # per table: a worker's tables may differ by hours per key
            seconds = self._seconds_per_key.get(node)
            self._seconds_per_key[node] = elapsed if not seconds else 0.7 * seconds + 0.3 * elapsed
            if handle.outcome == "done":
                tally.done += 1
                durations.note(self.run_id, node.info.name, elapsed)  # make durations for the ETA (the ledger's MakeStat)
            else:
                tally.failed += handle.outcome == "error"
            self._flush(node)

    def _committed(self, table: Any, claim: Claim) -> bool:
        """Did the key's transaction commit before the interrupt landed? (It can land in
        ``_populate1`` after the commit: in its logging, its job metadata, its finally.)
        Such a key is done; releasing it would leave a made key ``pending``."""
        try:
            return claim.key in table
        except Exception:  # the connection is gone: reconcile releases it; a re-claim only marks it done
            return False

    def _close_transaction(self) -> None:
        """An exception from ``_populate1`` outside make's try (an interrupt or an error in
        DataJoint's key-in-table check, after it opened the key's transaction) leaves that
        transaction open: what the worker writes next would be rolled back with it."""
        if self.conn._in_transaction:
            self._safe(self.conn.cancel_transaction)

    def _flush(self, node: Node, force: bool = False, owner: Owner | None = None) -> None:
        """Mark made keys done, after enqueueing what they made ready downstream (in that
        order: a worker that sees neither the keys in flight nor their downstream keys
        concludes that nothing more is coming). Should the enqueue fail, the run's final
        enqueue finds those keys."""
        done = self._completed.get(node)
        if done and (force or time.monotonic() - self._last_flush >= self.settings.flush_seconds):
            self._completed[node] = []
            made = [c.raw for c in done]
            for reader in node.readers:
                if self._safe(lambda reader=reader: reader.jt.enqueue(self.restriction, after=(node.jt, made))) \
                        and self._due is not None:
                    self._due.add(reader)
                    self._full.discard(reader)
            self._safe(lambda: node.jt.complete(owner or self.owner, done))
            self._last_flush = time.monotonic()

    def _safe(self, action: Callable[[], Any]) -> Any:
        """Bookkeeping that may fail on a dying connection: reconcile covers what it misses.
        What it returned, or None when it failed."""
        try:
            return action()
        except Exception as err:
            log.warning("could not update the jobs table (%s); `dj-orchestrate reconcile` will", err)
            return None

    def _reconnect(self, node: Node, unstarted: list[Claim], charge: Claim | None = None) -> None:
        """New connection, new owner; the old owner's claims go back to pending."""
        old = self.owner
        self._due = None
        self.owner = reconnect(self.conn, self.settings.reconnect_seconds, "worker", give_up=lambda: self.stopping,
                               then=self._new_owner, hint="its keys are released by `dj-orchestrate reconcile`")
        for made in list(self._completed):
            self._flush(made, force=True, owner=old)
        reason = "lost its database connection"
        self._safe(lambda: node.jt.release(old, unstarted, charge=charge, reason=reason, policy=self.settings.policy))

    def _record(self, **fields: Any) -> None:
        if self.run_id is None or self.shard_index is None:
            return
        self._safe(lambda: ledger.record_shard(
            self.run_id, ",".join(t.name for t in self.tables), self.shard_index,
            host=self.owner.host, pid=self.owner.pid, backend_job_id=self.settings.backend_job_id,
            log_path=self.settings.log_path, **fields))
