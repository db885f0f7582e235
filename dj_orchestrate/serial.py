"""Tables that can have no jobs table, made by one worker at a time under a database lock.

DataJoint keys a jobs table by the primary-key attributes that come from foreign keys. A
table with none (a custom ``key_source`` over its own attributes, like DataJoint's own
``schema_uuid.Item``) cannot have one, yet stock ``populate()`` makes it, and so does every
dj-orchestrate worker that serves it:

* one worker at a time per table: the worker that gets the table's database lock
  (``GET_LOCK`` on MySQL/MariaDB, a session advisory lock on PostgreSQL; no table is
  created) makes its missing keys; the others move on, seeing the table as in flight, and
  come back only if they still have to (a table they serve waits for it, or the holder
  died: its lock went with its connection);
* each key is made with DataJoint's own ``_populate1``: one transaction per key, and a key
  already in the table (made meanwhile by a stock ``populate()``) is skipped;
* failures live in the ledger (``ledger.key_failures``), there being no jobs table:
  ``errors`` lists them, ``status`` counts them, ``retry`` clears them, and a failed key is
  not tried again before that (with ``--retries``: not before its backoff).

``SerialTable`` has the methods of ``JobTable`` that a worker and the commands use; a
worker serves such a table through it (``adopt``), and ``JobTable`` hands it the table's
counts, errors, retries and ignores.
"""

from __future__ import annotations

import datetime
import hashlib
import inspect
import json
from typing import Any, Sequence

import datajoint as dj

from . import ledger
from .flow import Node
from .jobs import STATUSES, Claim, Owner, Policy, Restriction, truncate


def adopt(nodes: list[Node], restriction: Restriction) -> list[Node]:
    """A worker's tables, those that can have no jobs table served under their lock."""
    for node in nodes:
        if not node.jt.supported:
            node.jt = SerialTable(node.jt.table, restriction)  # type: ignore[assignment]
    return nodes


def key_hash(key: dict) -> str:
    return hashlib.md5(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


class SerialTable:
    """One table without a jobs table: its keys are those of its ``key_source`` (within
    ``restriction``) not in the table and not failed, claimed only by the holder of its lock."""

    pk: list[str] = []  # no jobs key: a table downstream enqueues all its missing keys after this one's

    def __init__(self, table: Any, restriction: Restriction = Restriction()) -> None:
        self.table = table
        self.conn = table.connection
        self.target = table.full_table_name
        self.restriction = restriction
        self.mysql = self.conn.adapter.backend == "mysql"
        digest = hashlib.md5(self.target.encode()).digest()  # MySQL lock names: 64 characters at most
        self.lock_id: str | int = "djo-" + digest.hex() if self.mysql else int.from_bytes(digest[:8], "big", signed=True)
        self.locked = False
        self._failures: Any = None

    def _query(self, sql: str, args: Sequence = ()) -> Any:
        return self.conn.query(sql, args=tuple(args), reconnect=False)

    # --------------------------------------------------------------------- lock
    def _try_lock(self) -> bool:
        sql = "SELECT GET_LOCK(%s, 0)" if self.mysql else "SELECT pg_try_advisory_lock(%s)"
        self.locked = bool(self._query(sql, [self.lock_id]).fetchone()[0])
        return self.locked

    def _unlock(self) -> None:
        if self.locked:
            self.locked = False
            self._query("SELECT RELEASE_LOCK(%s)" if self.mysql else "SELECT pg_advisory_unlock(%s)", [self.lock_id])

    def held(self) -> bool:
        """Whether a worker (this one too) holds the lock: the table is being made."""
        if self.mysql:
            return self._query("SELECT IS_USED_LOCK(%s)", [self.lock_id]).fetchone()[0] is not None
        lock = int(self.lock_id)  # a bigint key shows as its high half (classid) and low half (objid)
        return bool(self._query(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1 "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND classid::bigint = %s AND objid::bigint = %s)",
            [(lock >> 32) & 0xFFFFFFFF, lock & 0xFFFFFFFF]).fetchone()[0])

    # --------------------------------------------------------------------- keys
    def _key_source(self, restriction: Restriction) -> Any:
        ks = self.table.key_source
        ks = ks() if inspect.isclass(ks) else ks
        return (ks if restriction.keys is None else ks & restriction.keys).proj()

    def _todo(self, restriction: Restriction) -> Any:
        """The key_source's keys not in the table. A key is in the table when rows match it
        on the key_source's attributes the table has, by name: DataJoint's own check
        (``key in table`` in ``_populate1``) and its ``progress()``."""
        ks = self._key_source(restriction)
        common = [a for a in ks.primary_key if a in self.table.heading.names]
        return ks.restrict(dj.Not(self.table.proj(*common)), semantic_check=False)

    def _ledger(self, create: bool = False) -> Any:
        """The ledger's failures table (None: not there yet), looked up until found."""
        if self._failures is None or create:
            self._failures = ledger.key_failures(create)
        return self._failures

    def _recorded(self, *attrs: str) -> dict[str, dict]:
        """This table's failed and ignored keys in the ledger, by key hash."""
        failures = self._ledger()
        if failures is None:
            return {}
        rows = (failures & {"table_name": self.target}).proj(*attrs).to_dicts()
        return {r["key_hash"]: r for r in rows}

    def _keys(self, limit: int | None = None) -> list[tuple[dict, int]]:
        """Keys to make now, in key order, with the attempts each has used: not failed,
        not ignored, not waiting for a retry's backoff."""
        recorded = self._recorded("status", "attempts", "scheduled_time")
        now = ledger.now()
        blocked = {h for h, r in recorded.items() if r["status"] != "pending" or r["scheduled_time"] > now}
        keys = self._todo(self.restriction).keys(order_by="KEY", limit=None if limit is None else limit + len(blocked))
        found = [(k, recorded[h]["attempts"] if h in recorded else 0) for k in keys if (h := key_hash(k)) not in blocked]
        return found[:limit] if limit is not None else found

    # ------------------------------------------------------------- the worker's
    def ensure(self) -> None:
        """Nothing to declare: a failure declares the ledger's table when it is recorded."""

    def enqueue(self, restriction: Restriction = Restriction(), priority: int | None = None, after: Any = None) -> int:
        """Nothing to enqueue: the lock holder finds the missing keys when it claims."""
        return 0

    def activity(self) -> tuple[bool, bool]:
        """(keys this worker could make now, a worker is making the table): a table
        another worker holds is in flight, not due."""
        held = self.held()
        return (self.locked or not held) and bool(self._keys(1)), held

    def claim(self, owner: Owner, limit: int, shard: Any = None) -> list[Claim]:
        """Up to ``limit`` keys to make, once this worker holds the lock (kept until a
        claim finds none, or the worker lets its keys go); none while another holds it."""
        if not self.locked and not self._try_lock():
            return []
        keys = self._keys(limit)
        if not keys:
            self._unlock()
        return [Claim(tuple(key.values()), key, attempts) for key, attempts in keys]

    def complete(self, owner: Owner, claims: Sequence[Claim]) -> int:
        """Made keys: a failure recorded before (a retry that worked) is cleared."""
        failures = self._ledger()
        if failures is None or not claims:
            return 0
        return (failures & [{"table_name": self.target, "key_hash": key_hash(c.key)} for c in claims]).delete_quick(True)

    def fail(self, owner: Owner, claim: Claim, message: str, stack: str | None, policy: Policy) -> str:
        """An exception in ``make``: retried after a backoff (``--retries``), else ``error``."""
        attempts = claim.attempts + 1
        status = "pending" if attempts <= policy.retries else "error"
        delay = policy.backoff * 2 ** (attempts - 1) if status == "pending" else 0
        self._record(owner, claim.key, status, attempts, truncate(message), stack, delay)
        return status

    def release(self, owner: Owner, claims: Sequence[Claim], charge: Claim | None = None, reason: str = "",
                policy: Policy = Policy()) -> int:
        """Let the table go (unstarted keys are simply not made). ``charge``, the key a
        stopped worker rolled back, is counted an attempt, and is an ``error`` at
        ``policy.max_attempts`` (a key that never fits a time limit does not loop)."""
        if charge is not None:
            attempts = charge.attempts + 1
            status = "error" if attempts >= policy.max_attempts else "pending"
            self._record(owner, charge.key, status, attempts, f"attempt {attempts} ended: the worker {reason}", None)
        try:
            self._unlock()
        finally:
            self.locked = False  # (a lost connection took the lock with it)
        return 0

    def _record(self, owner: Owner, key: dict, status: str, attempts: int, message: str, stack: str | None,
                delay: float = 0) -> None:
        failures = self._ledger(create=True)
        now = ledger.now()
        row = {"table_name": self.target, "key_hash": key_hash(key), "key": json.dumps(key, default=str)[:4000],
               "status": status, "attempts": attempts, "error_message": message, "error_stack": stack,
               "host": owner.host, "pid": owner.pid, "backend_job_id": owner.backend_job_id, "log_path": owner.log_path,
               "completed_time": now, "scheduled_time": now + datetime.timedelta(seconds=delay)}
        if failures & {"table_name": self.target, "key_hash": row["key_hash"]}:
            failures.update1(row)
        else:
            failures.insert1(row)

    # ------------------------------------------------------------- the commands'
    def counts(self, restriction: Restriction = Restriction()) -> dict[str, int]:
        """As ``JobTable.counts``: every key to make is pending (a worker finds it when it
        claims); failed and ignored keys are counted from the ledger."""
        total = len(self._key_source(restriction))
        todo = self._todo(restriction)
        recorded = self._recorded("status")
        keys = todo.keys() if recorded else []  # (without failures, counting them is enough)
        left = len(keys) if recorded else len(todo)
        statuses = [recorded[h]["status"] for h in map(key_hash, keys) if h in recorded]
        error, ignore = statuses.count("error"), statuses.count("ignore")
        todo_now = left - error - ignore
        if todo_now and not self.locked and self.held():  # another worker is making them: in flight, not left
            return {"total": total, "done": total - left, **dict.fromkeys(STATUSES, 0), "reserved": todo_now,
                    "error": error, "ignore": ignore, "missing": 0}
        return {"total": total, "done": total - left, **dict.fromkeys(STATUSES, 0), "pending": todo_now,
                "error": error, "ignore": ignore, "missing": todo_now}

    def status_counts(self) -> dict[str, int]:
        """As ``JobTable.status_counts``; ``ready``: one worker can start (it holds the lock)."""
        pending = len(self._keys())
        errors = [r["status"] for r in self._recorded("status").values()]
        return {**dict.fromkeys(STATUSES, 0), "pending": pending, "error": errors.count("error"),
                "ignore": errors.count("ignore"), "ready": int(bool(pending) and not self.held())}

    def made(self) -> int:
        """Keys made (not rows: one key may make several)."""
        return len(self._key_source(Restriction())) - len(self._todo(Restriction()))

    def errors(self, restriction: Restriction = Restriction(), match: str | None = None, stack: bool = False) -> list[dict]:
        """Failed keys not made since, as ``JobTable.errors`` lists them."""
        cols = ["error_message", "attempts", "host", "pid", "backend_job_id", "log_path", "completed_time"]
        recorded = self._recorded("status", "key", *cols, *(["error_stack"] if stack else []))
        left = {key_hash(k) for k in self._todo(restriction).keys()} if recorded else set()
        out = [{"key": json.loads(r["key"]), **{c: r[c] for c in cols + (["error_stack"] if stack else [])}}
               for h, r in recorded.items()
               if h in left and r["status"] == "error" and (not match or match in r["error_message"])]
        return sorted(out, key=lambda e: json.dumps(e["key"], sort_keys=True))

    def retry(self, restriction: Restriction = Restriction(), match: str | None = None) -> int:
        """Failed and ignored keys cleared from the ledger: the next worker makes them."""
        recorded = self._recorded("status", "error_message")
        keys = {key_hash(k) for k in self._key_source(restriction).keys()} if recorded else set()
        chosen = [h for h, r in recorded.items()
                  if h in keys and r["status"] in ("error", "ignore") and (not match or match in r["error_message"])]
        if not chosen:
            return 0
        return (self._ledger() & [{"table_name": self.target, "key_hash": h} for h in chosen]).delete_quick(True)

    def ignore(self, restriction: Restriction) -> int:
        """Keys not made (nor already ignored) marked ``ignore`` in the ledger."""
        recorded = self._recorded("status")
        owner = Owner("", 0, 0)
        marked = 0
        for key in self._todo(restriction).keys():
            row = recorded.get(key_hash(key))
            if row is None or row["status"] != "ignore":
                self._record(owner, key, "ignore", 0, "", None)
                marked += 1
        return marked
