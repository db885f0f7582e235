"""Putting keys in a jobs table and taking them out: enqueue (one ``INSERT ... SELECT``
per table), what is ready, and batched claims (``SELECT ... FOR UPDATE SKIP LOCKED`` and
a conditional UPDATE, in one short transaction or one statement: see ``dialect``)."""

from __future__ import annotations

import time
from typing import Any, Sequence

from .declare import Declared
from .model import NOW, Claim, Owner, Restriction
from .sql import TableSQL


class Queue(Declared):
    """Enqueue, ready and claim on one jobs table."""

    def enqueue(self, restriction: Restriction = Restriction(), priority: int | None = None,
                after: "tuple[TableSQL, Sequence[tuple]] | None" = None) -> int:
        """Add every missing key as ``pending`` in one statement. Returns how many.

        ``after`` = (upstream jobs table, keys just made there): only the keys those can
        have added, so that the cost grows with the new keys, not with the tables (the
        key_source is restricted by the upstream keys' values before anything is read).
        An upstream that shares no attribute with this key_source: every missing key."""
        if not self.supported:
            return 0
        if after is not None:
            if not after[1]:
                return 0
            if not any(c in self.key_source[1] for c in after[0].pk):
                after = None
        self.ensure()
        if priority is None:
            priority = self.conn._config.jobs.default_priority
        ks_sql, ks_args = self._key_source(restriction, after)
        sql = self.dialect.insert_new(
            self.name, f"{self._cols()}, {self.q('status')}, {self.q('priority')}, {self.q('scheduled_time')}",
            f"SELECT {self._cols('m')}, 'pending', %s, {NOW} FROM ({ks_sql}) AS m "
            f"WHERE NOT {self._done('m')} "
            f"AND NOT EXISTS (SELECT 1 FROM {self.name} AS j WHERE {self._match('j', 'm')})",
        )
        for attempt in range(5):  # workers enqueueing the same table at once may deadlock on MySQL
            try:
                return self._analyzed(self._query(sql, [priority, *ks_args]).rowcount)
            except Exception as err:
                if "eadlock" not in str(err) or attempt == 4:
                    raise
                time.sleep(0.05 * 2**attempt)
        return 0

    def _analyzed(self, added: int) -> int:
        """Table statistics refreshed after a large enqueue, where the claims' plan needs
        them (see the dialect's ``analyze``)."""
        analyze = self.dialect.analyze(self.name, added)
        if analyze:
            self._query(analyze)
        return added

    # -------------------------------------------------------------------- claim
    def _due(self, shard: tuple[tuple | None, tuple | None] | None) -> tuple[list[str], list]:
        """Conditions for pending keys due now, within ``[lo, hi)`` when a shard is given."""
        where = [f"{self.q('status')} = 'pending'", f"{self.q('scheduled_time')} <= {NOW}"]
        args: list = []
        if shard:
            row = "(" + ", ".join(["%s"] * len(self.pk)) + ")"
            for bound, op in zip(shard, (">=", "<")):
                if bound is not None:
                    where.append(f"({self._cols()}) {op} {row}")
                    args.extend(self._bind(c, v) for c, v in zip(self.pk, bound))
        return where, args

    def ready(self, shard: tuple[tuple | None, tuple | None] | None = None, restriction: Restriction = Restriction()) -> int:
        """Pending keys due now (within the shard), read without locking anything.

        A claim that comes back empty does not prove there are none: on MySQL,
        ``SKIP LOCKED`` also skips rows that another worker's claim is only scanning past
        (a claim scans the pending rows in claim order, and InnoDB locks what it scans
        until it has checked the shard bounds). A fixed-shard worker that stopped there
        left most of its shard pending."""
        where, args = self._due(shard)
        if restriction.keys is not None:  # (by the jobs key's attributes: a key by others matches every row)
            cond, more = restriction.sql(self.name, self.pk, self.q, self._bind)
            where, args = [*where, cond], [*args, *more]
        source = self._by_key if shard else self.name
        return int(self._query(f"SELECT COUNT(*) FROM {source} WHERE {' AND '.join(where)}", args).fetchone()[0])

    def activity(self) -> tuple[bool, bool]:
        """(any key pending and due now, any key reserved): two probes of the status index,
        for a worker deciding whether more work can still come."""
        row = self._query(f"SELECT {self._activity_sql()}").fetchone()
        return bool(row[0]), bool(row[1])

    def _activity_sql(self) -> str:
        status = self.q("status")
        return (f"EXISTS (SELECT 1 FROM {self.name} WHERE {status} = 'pending' AND {self.q('scheduled_time')} <= {NOW}), "
                f"EXISTS (SELECT 1 FROM {self.name} WHERE {status} = 'reserved')")

    def claim(self, owner: Owner, limit: int, shard: tuple[tuple | None, tuple | None] | None = None) -> list[Claim]:
        """Reserve up to ``limit`` pending keys (within ``[lo, hi)`` when a shard is given).

        Pull claims take keys by (priority, scheduled_time, key). A shard's keys are taken
        in key order along the primary key, reading about ``limit`` rows: in claim order a
        claim read the whole shard (PostgreSQL, 1.2 ms for 2,000 keys) or every pending
        row before it (MySQL: 185 ms for the last shard of 200,000 keys). Priority orders
        the work of many workers; a shard's one worker makes all of its keys anyway."""
        where, args = self._due(shard)
        order = self._cols() if shard else f"{self.q('priority')}, {self.q('scheduled_time')}, {self._cols()}"
        pick = (
            f"SELECT {self._cols()}, {self.q('attempts')} FROM {self._by_key if shard else self.name} "
            f"WHERE {' AND '.join(where)} ORDER BY {order} LIMIT %s FOR UPDATE SKIP LOCKED"
        )
        args.append(int(limit))
        sets = (
            f"{self.q('status')} = 'reserved', {self.q('reserved_time')} = {NOW}, {self.q('host')} = %s, "
            f"{self.q('pid')} = %s, {self.q('connection_id')} = %s, {self.q('user')} = %s, "
            f"{self.q('version')} = %s, {self.q('backend_job_id')} = %s, {self.q('log_path')} = %s"
        )
        set_args = [owner.host, owner.pid, owner.connection_id, owner.user, owner.version, owner.backend_job_id, owner.log_path]
        n = len(self.pk)
        rows = self.dialect.claim(self, pick, args, sets, set_args)
        return [Claim(tuple(r[:n]), self._decode(r[:n]), int(r[n])) for r in rows]


def activity_of(jts: Sequence[Any]) -> list[tuple[bool, bool]]:
    """``activity`` of each of these jobs tables: of the declared ones in a UNION ALL of
    their probes (``_union``, on the first one's connection), so that a worker serving N
    tables learns which have keys due in a round trip or a few, not N. The others (a table
    served under its lock, a jobs table not declared yet) answer one by one."""
    parts = [(f"SELECT {i} AS t, {jt._activity_sql()}", ()) for i, jt in enumerate(jts)
             if isinstance(jt, Queue) and jt.declared]
    found: dict[int, tuple[bool, bool]] = {}
    if parts:
        first = next(jt for jt in jts if isinstance(jt, Queue) and jt.declared)
        found = {int(t): (bool(due), bool(reserved)) for t, due, reserved in first._union(parts, 2)}
    return [found[i] if i in found else jt.activity() for i, jt in enumerate(jts)]
