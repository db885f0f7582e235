"""Every statement that touches a DataJoint ``~~table`` jobs table lives here.

The jobs tables stay DataJoint's own, so ``Table.populate(reserve_jobs=True)`` and
``Table.jobs.errors`` keep working beside dj-orchestrate. What DataJoint lacks for
clusters is added here:

* enqueue is one ``INSERT ... SELECT`` per table, not one round trip per key;
* claims are batched: ``SELECT ... FOR UPDATE SKIP LOCKED`` and a conditional UPDATE in
  one short READ COMMITTED transaction (one statement on PostgreSQL);
* complete, error and release only touch rows still reserved by their owner
  (host, pid and the database connection id, as DataJoint itself records them);
* three columns are added to each jobs table: ``attempts`` (failed attempts: errors
  and dead workers), ``backend_job_id`` and ``log_path``;
* reconcile releases keys whose owner's connection is gone (or whose backend job
  ended), charging an attempt only to the key the owner was making.

Keys travel as the raw values the database returned and are always bound as
parameters.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import os
import platform
import time
import uuid
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

from datajoint import blob
from datajoint.errors import AccessError
from datajoint.jobs import ERROR_MESSAGE_LENGTH, TRUNCATION_APPENDIX, _get_job_version

from .errors import UsageError

EXTRA_COLUMNS = {
    # name: (MySQL/MariaDB type, PostgreSQL type, the value a row without the column has)
    "attempts": ("int NOT NULL DEFAULT 0", "integer NOT NULL DEFAULT 0", "0"),
    "backend_job_id": ("varchar(255) NOT NULL DEFAULT ''", "varchar(255) NOT NULL DEFAULT ''", "''"),
    "log_path": ("varchar(1023) NOT NULL DEFAULT ''", "varchar(1023) NOT NULL DEFAULT ''", "''"),
}
STATUSES = ("pending", "reserved", "success", "error", "ignore")
# what reconcile did to keys: back to pending untouched, charged an attempt (then pending
# or, at max_attempts, error), of which became errors, found already done
RECONCILED = ("released", "charged", "errors", "completed")
NOW = "CURRENT_TIMESTAMP(3)"

# Per process and table class: its key_source and jobs key, its jobs table's columns once
# complete, and whether this process has ensured that jobs table. Computing them costs
# catalog queries each (every key_source loads its parents' headings afresh), paid by
# every command and worker start for every JobTable built; the answers do not change while
# a process runs (columns are never dropped).
_KEY_SOURCE: dict[type, tuple[str, tuple[str, ...]]] = {}
_JOBS_KEY: dict[type, list[str]] = {}
_COLUMNS: dict[type, frozenset[str]] = {}
_ENSURED: set[type] = set()


@dataclass(frozen=True)
class Owner:
    """Who holds a reservation: unique per process start and database connection."""

    host: str
    pid: int
    connection_id: int
    user: str = ""
    version: str = ""
    backend_job_id: str = ""
    log_path: str = ""

    @classmethod
    def of(cls, conn: Any, backend_job_id: str = "", log_path: str = "") -> "Owner":
        return cls(
            host=platform.node(),
            pid=os.getpid(),
            connection_id=int(conn.adapter.get_connection_id(conn._conn)),
            user=conn.get_user(),
            version=_get_job_version(conn._config),
            backend_job_id=backend_job_id,
            log_path=log_path,
        )


@dataclass(frozen=True)
class Claim:
    """A reserved key: ``raw`` as stored (for binding), ``key`` as DataJoint wants it."""

    raw: tuple
    key: dict
    attempts: int


@dataclass(frozen=True)
class Policy:
    """What happens after a failed attempt.

    ``retries``: how many times an exception in ``make`` is retried (with exponential
    ``backoff`` seconds) before the key becomes ``error``. ``max_attempts``: how many
    attempts may end in a dead worker before the key becomes ``error``.
    """

    retries: int = 0
    backoff: float = 30.0
    max_attempts: int = 3


def truncate(message: str) -> str:
    """An error message cut to what DataJoint's jobs table holds, saying so."""
    if len(message) > ERROR_MESSAGE_LENGTH:
        return message[: ERROR_MESSAGE_LENGTH - len(TRUNCATION_APPENDIX)] + TRUNCATION_APPENDIX
    return message


def key_source_of(cls: type) -> tuple[str, tuple[str, ...]]:
    """DataJoint's own SQL of a table class's key_source, and the attributes it yields."""
    if cls not in _KEY_SOURCE:
        ks = cls().key_source
        if inspect.isclass(ks):
            ks = ks()
        _KEY_SOURCE[cls] = (ks.make_sql(), tuple(ks.heading.names))
    return _KEY_SOURCE[cls]


class Restriction:
    """Key dicts from the outside, compiled to a bound SQL condition per table heading.

    DataJoint semantics: a key restricts by the attributes the heading has; a key with
    none of them matches everything. No keys at all (``None``) is no restriction; an
    empty list of keys matches nothing (``--key '[]'`` must never mean "every key")."""

    def __init__(self, keys: Sequence[dict[str, Any]] | None = None) -> None:
        self.keys = None if keys is None else [dict(k) for k in keys]

    def sql(self, alias: str, names: Iterable[str], q, encode) -> tuple[str, list]:
        if self.keys is None:
            return "1=1", []
        if not self.keys:
            return "1=0", []
        names = set(names)
        ors, args = [], []
        for key in self.keys:
            terms = [(k, v) for k, v in key.items() if k in names]
            if not terms:
                return "1=1", []
            ors.append("(" + " AND ".join(f"{alias}.{q(k)} = %s" for k, _ in terms) + ")")
            args.extend(encode(k, v) for k, v in terms)
        return "(" + " OR ".join(ors) + ")", args


class JobTable:
    """Set-based, owner-checked operations on one table's ``~~table`` jobs table."""

    def __init__(self, table: Any, conn: Any = None) -> None:
        """``conn``: the connection its statements run on, where not the table's own (the
        dashboard reads on a second one, beside the one its pages use)."""
        self.table = table
        self.conn = conn or table.connection
        self.mysql = self.conn.adapter.backend == "mysql"
        self.q = self.conn.adapter.quote_identifier
        self.schema = table.database
        self.jobs_name = "~~" + table.table_name.lstrip("_")
        self.name = f"{self.q(self.schema)}.{self.q(self.jobs_name)}"
        self.target = table.full_table_name
        cls = type(table)
        if cls not in _JOBS_KEY:
            fk: set[str] = set()
            for _parent, props in table.parents(primary=True, foreign_key_info=True):
                fk.update(props.get("attr_map", {}))
            _JOBS_KEY[cls] = [a for a in table.primary_key if a in fk]
        self.pk = _JOBS_KEY[cls]
        self.uuid_cols = {a for a in self.pk if table.heading[a].uuid}
        # Python orders numbers as the database does; strings follow a column's collation
        self.numeric_key = all(table.heading[a].numeric for a in self.pk)

    # ------------------------------------------------------------------ helpers
    def _query(self, sql: str, args: Sequence = ()) -> Any:
        return self.conn.query(sql, args=tuple(args), reconnect=False)

    def _cols(self, alias: str | None = None, names: Sequence[str] | None = None) -> str:
        prefix = f"{alias}." if alias else ""
        return ", ".join(prefix + self.q(c) for c in (names or self.pk))

    def _match(self, a: str, b: str) -> str:
        return " AND ".join(f"{a}.{self.q(c)} = {b}.{self.q(c)}" for c in self.pk)

    def _bind(self, name: str, value: Any) -> Any:
        if isinstance(value, uuid.UUID):
            return value.bytes if self.mysql else str(value)
        if name in self.uuid_cols and isinstance(value, str):
            return uuid.UUID(value).bytes if self.mysql else value
        return value

    def _decode(self, raw: Sequence) -> dict:
        key = {}
        for name, value in zip(self.pk, raw):
            if name in self.uuid_cols and not isinstance(value, uuid.UUID):
                value = uuid.UUID(bytes=bytes(value)) if isinstance(value, (bytes, bytearray, memoryview)) else uuid.UUID(str(value))
            key[name] = value
        return key

    def _in(self, alias: str | None, raws: Sequence[tuple]) -> tuple[str, list]:
        if not raws:
            return "1=0", []
        args = [self._bind(c, v) for raw in raws for c, v in zip(self.pk, raw)]
        if len(self.pk) == 1:
            return f"{self._cols(alias)} IN ({', '.join(['%s'] * len(raws))})", args
        row = "(" + ", ".join(["%s"] * len(self.pk)) + ")"
        return f"({self._cols(alias)}) IN ({', '.join([row] * len(raws))})", args

    def _owned(self, host: str, pid: int, connection_id: int) -> tuple[str, list]:
        return (
            f"{self.q('status')} = 'reserved' AND {self.q('host')} = %s AND {self.q('pid')} = %s "
            f"AND {self.q('connection_id')} = %s",
            [host, pid, connection_id],
        )

    @property
    def _by_key(self) -> str:
        """The jobs table for a statement on listed keys or a key range. MySQL: forced
        onto the primary key. Left to itself, InnoDB runs such a statement through the
        (status, priority, scheduled_time) index whenever few rows have that status (the
        end of a queue), locking the entries of keys other workers hold while they do the
        same: two claims then deadlock (seen with 32 workers on MariaDB 10.11)."""
        return f"{self.name} FORCE INDEX (PRIMARY)" if self.mysql else self.name

    def _interval(self, seconds: float) -> str:
        return self.conn.adapter.interval_expr(max(0, int(round(seconds))), "second")

    @property
    def key_source(self) -> tuple[str, tuple[str, ...]]:
        return key_source_of(type(self.table))

    def reads(self, other: "JobTable") -> bool:
        """Whether this table's key_source reads ``other``: then a key of ``other`` made
        can add keys here (a fan-in's only once every part it needs is there)."""
        return other.target in self.key_source[0]

    def _key_source(self, restriction: Restriction, after: "tuple[JobTable, Sequence[tuple]] | None" = None) -> tuple[str, list]:
        """``SELECT pk FROM (key_source) WHERE restriction``, from DataJoint's own SQL;
        with ``after`` = (upstream, keys), only the keys that share those upstream keys'
        values (the key_source rows those keys can have added)."""
        sql, names = self.key_source
        cond, args = restriction.sql("ks", names, self.q, self._bind)
        if after is not None:
            upstream, raws = after
            common = [i for i, c in enumerate(upstream.pk) if c in names]
            cols = [upstream.pk[i] for i in common]
            distinct = list(dict.fromkeys(tuple(raw[i] for i in common) for raw in raws))
            args += [upstream._bind(c, v) for row in distinct for c, v in zip(cols, row)]
            row = "(" + ", ".join(["%s"] * len(cols)) + ")"
            cond += f" AND ({', '.join('ks.' + self.q(c) for c in cols)}) IN ({', '.join([row] * len(distinct))})"
        return f"SELECT {self._cols('ks')} FROM ({sql.replace('%', '%%')}) AS ks WHERE {cond}", args

    def _done(self, alias: str) -> str:
        return f"EXISTS (SELECT 1 FROM {self.target} AS t WHERE {self._match('t', alias)})"

    # -------------------------------------------------------------- declaration
    @property
    def supported(self) -> bool:
        """DataJoint keys a jobs table by the primary-key attributes that come from
        foreign keys; a table with none (a custom ``key_source`` over its own attributes)
        cannot have one: it is made under a lock instead (``serial``)."""
        return bool(self.pk)

    def _serial(self) -> Any:
        """This table as ``serial`` serves it, for one that cannot have a jobs table."""
        from .serial import SerialTable

        return SerialTable(self.table)

    @property
    def columns(self) -> frozenset[str]:
        """The columns the jobs table has now; empty when it is not declared. The one
        place that knows: a jobs table may be undeclared, declared by stock DataJoint
        (without dj-orchestrate's columns), ours, or half-upgraded by a process that
        died, and a colleague's ``populate`` may declare it at any moment. Remembered
        only once complete (columns are never dropped)."""
        cls = type(self.table)
        if cls not in _COLUMNS:
            found = frozenset(
                r[0]
                for r in self._query(
                    "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = %s",
                    (self.schema, self.jobs_name),
                ).fetchall()
            )
            if not found or not set(EXTRA_COLUMNS) <= found:
                return found
            _COLUMNS[cls] = found
        return _COLUMNS[cls]

    @property
    def declared(self) -> bool:
        return self.supported and bool(self.columns)

    def _col(self, name: str, alias: str = "j", columns: frozenset[str] | None = None) -> str:
        """A column for reading, or the value its rows would have where the jobs table
        lacks it (stock DataJoint's): read-only commands never ALTER anything."""
        if name in (self.columns if columns is None else columns) or name not in EXTRA_COLUMNS:
            return f"{alias}.{self.q(name)}"
        return EXTRA_COLUMNS[name][2]

    def ensure(self) -> None:
        """Declare the jobs table the way DataJoint does, then add dj-orchestrate's columns.
        For commands that write; a missing privilege is a UsageError that names it."""
        if not self.supported:
            return
        if type(self.table) in _ENSURED:
            return
        have = self.columns
        if not have:
            try:
                with _privilege(f"create the jobs table {self.name}", "CREATE"):
                    _ = self.table.jobs  # DataJoint declares ~~table on first access
            except UsageError:
                raise
            except Exception as err:  # workers that start together race to declare it
                if "uplicate" not in str(err) and "exists" not in str(err):
                    raise
            have = self.columns
        for column, (mysql_type, pg_type, _default) in EXTRA_COLUMNS.items():
            if column in have:
                continue
            try:
                with _privilege(f"add the column {column!r} to {self.name}", "ALTER"):
                    self._query(f"ALTER TABLE {self.name} ADD COLUMN {self.q(column)} {mysql_type if self.mysql else pg_type}")
            except UsageError:
                raise
            except Exception as err:  # another process added it first
                if "uplicate" not in str(err) and "exists" not in str(err):
                    raise
        if not self.mysql:
            self._ensure_claim_index()
        _ENSURED.add(type(self.table))

    def _ensure_claim_index(self) -> None:
        """PostgreSQL: an index in claim order over the pending rows only.

        A claim takes pending keys by (priority, scheduled_time, key). DataJoint's index
        (status, priority, scheduled_time) gives that order on MySQL, where InnoDB ends
        every index with the primary key, but not on PostgreSQL: there each claim sorted
        every pending row (30 ms per claim with 100,000 pending keys). With this partial
        index a claim reads only the rows it takes."""
        name = "djo_claim_" + hashlib.md5(self.jobs_name.encode()).hexdigest()[:16]
        if self._query("SELECT 1 FROM pg_indexes WHERE schemaname = %s AND indexname = %s", (self.schema, name)).fetchone():
            return
        try:
            with _privilege(f"create an index on {self.name}", "owner (CREATE INDEX)"):
                self._query(
                    f"CREATE INDEX IF NOT EXISTS {self.q(name)} ON {self.name} "
                    f"({self.q('priority')}, {self.q('scheduled_time')}, {self._cols()}) WHERE {self.q('status')} = 'pending'"
                )
        except UsageError:
            raise
        except Exception as err:  # another process created it first
            if "uplicate" not in str(err) and "exists" not in str(err):
                raise

    # ------------------------------------------------------------------ enqueue
    def enqueue(self, restriction: Restriction = Restriction(), priority: int | None = None,
                after: "tuple[JobTable, Sequence[tuple]] | None" = None) -> int:
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
        sql = (
            f"INSERT {'IGNORE ' if self.mysql else ''}INTO {self.name} "
            f"({self._cols()}, {self.q('status')}, {self.q('priority')}, {self.q('scheduled_time')}) "
            f"SELECT {self._cols('m')}, 'pending', %s, {NOW} FROM ({ks_sql}) AS m "
            f"WHERE NOT {self._done('m')} "
            f"AND NOT EXISTS (SELECT 1 FROM {self.name} AS j WHERE {self._match('j', 'm')})"
            + ("" if self.mysql else " ON CONFLICT DO NOTHING")
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
        """PostgreSQL plans a claim from the table statistics. Right after a large
        enqueue they still describe the table as it was (often empty), and claims sort
        every pending row instead of reading the claim index, until autovacuum catches
        up. Refresh them once (ANALYZE samples a fixed number of rows)."""
        if not self.mysql and added >= 1000:
            self._query(f"ANALYZE {self.name}")
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
        status = self.q("status")
        row = self._query(
            f"SELECT EXISTS (SELECT 1 FROM {self.name} WHERE {status} = 'pending' AND {self.q('scheduled_time')} <= {NOW}), "
            f"EXISTS (SELECT 1 FROM {self.name} WHERE {status} = 'reserved')"
        ).fetchone()
        return bool(row[0]), bool(row[1])

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
        if not self.mysql:
            sql = (
                f"WITH s AS ({pick}), u AS (UPDATE {self.name} AS j SET {sets} FROM s WHERE {self._match('j', 's')} "
                f"RETURNING {self._cols('j')}, j.{self.q('attempts')}) SELECT * FROM u ORDER BY {self._cols()}"
            )
            rows = self._query(sql, [*args, *set_args]).fetchall()
        else:
            self._query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            self._query("START TRANSACTION")
            try:
                rows = self._query(pick, args).fetchall()
                if rows:
                    cond, in_args = self._in(None, [tuple(r[:n]) for r in rows])
                    self._query(
                        f"UPDATE {self._by_key} SET {sets} WHERE {cond} AND {self.q('status')} = 'pending'",
                        [*set_args, *in_args],
                    )
                    # in key order, as on PostgreSQL: a worker makes its batch in this order,
                    # and reconcile takes the first unmade key of a dead owner as its key in flight
                    if self.numeric_key:  # (the rows are locked: all of them were updated)
                        rows = sorted(rows, key=lambda r: tuple(r[:n]))
                    else:
                        rows = self._query(
                            f"SELECT {self._cols()}, {self.q('attempts')} FROM {self._by_key} WHERE {cond} "
                            f"ORDER BY {self._cols()}", in_args,
                        ).fetchall()
                self._query("COMMIT")
            except BaseException:
                try:
                    self._query("ROLLBACK")
                except Exception:
                    pass
                raise
        return [Claim(tuple(r[:n]), self._decode(r[:n]), int(r[n])) for r in rows]

    # ---------------------------------------------------------- finish a claim
    def complete(self, owner: Owner, claims: Sequence[Claim]) -> int:
        """Done keys: deleted (DataJoint's default) or marked ``success`` (keep_completed)."""
        return self._finish(owner.host, owner.pid, owner.connection_id, [c.raw for c in claims])

    def _finish(self, host: str, pid: int, connection_id: int, raws: Sequence[tuple]) -> int:
        if not raws:
            return 0
        owned, o_args = self._owned(host, pid, connection_id)
        cond, in_args = self._in(None, raws)
        if self.conn._config.jobs.keep_completed:
            sql = f"UPDATE {self._by_key} SET {self.q('status')} = 'success', {self.q('completed_time')} = {NOW} WHERE {owned} AND {cond}"
        elif self.mysql:  # the multi-table form, the one that takes an index hint
            sql = f"DELETE {self.name} FROM {self._by_key} WHERE {owned} AND {cond}"
        else:
            sql = f"DELETE FROM {self.name} WHERE {owned} AND {cond}"
        return self._query(sql, [*o_args, *in_args]).rowcount

    def fail(self, owner: Owner, claim: Claim, message: str, stack: str | None, policy: Policy) -> str:
        """An exception in ``make``: retry later (with backoff) or ``error``. Returns the status."""
        attempts = claim.attempts + 1
        status = "pending" if attempts <= policy.retries else "error"
        message = truncate(message)
        delay = policy.backoff * 2 ** (attempts - 1) if status == "pending" else 0
        owned, o_args = self._owned(owner.host, owner.pid, owner.connection_id)
        cond, in_args = self._in(None, [claim.raw])
        self._query(
            f"UPDATE {self._by_key} SET {self.q('status')} = %s, {self.q('attempts')} = %s, "
            f"{self.q('error_message')} = %s, {self.q('error_stack')} = %s, {self.q('completed_time')} = {NOW}, "
            f"{self.q('scheduled_time')} = {NOW} + {self._interval(delay)} WHERE {owned} AND {cond}",
            [status, attempts, message, blob.pack(stack) if stack is not None else None, *o_args, *in_args],
        )
        return status

    def release(self, owner: Owner, claims: Sequence[Claim], charge: Claim | None = None, reason: str = "", policy: Policy = Policy()) -> int:
        """Unstarted claims back to ``pending`` untouched; ``charge`` (the key in flight)
        also gets an attempt counted, and becomes ``error`` at ``policy.max_attempts``."""
        rest = [c.raw for c in claims if charge is None or c.raw != charge.raw]
        n = self._repend(owner.host, owner.pid, owner.connection_id, rest)
        if charge is not None:
            n += bool(self._charge(owner.host, owner.pid, owner.connection_id, charge.raw, charge.attempts, reason, policy))
        return n

    def _repend(self, host: str, pid: int, connection_id: int, raws: Sequence[tuple]) -> int:
        if not raws:
            return 0
        owned, o_args = self._owned(host, pid, connection_id)
        cond, in_args = self._in(None, raws)
        return self._query(
            f"UPDATE {self._by_key} SET {self.q('status')} = 'pending', {self.q('connection_id')} = 0, "
            f"{self.q('scheduled_time')} = {NOW} WHERE {owned} AND {cond}",
            [*o_args, *in_args],
        ).rowcount

    def _charge(self, host: str, pid: int, connection_id: int, raw: tuple, attempts: int, reason: str,
                policy: Policy) -> str | None:
        """Count an attempt against the key a dead or stopped owner was making. Returns
        what the key became (``pending`` or ``error``), or None if the owner no longer held it."""
        attempts += 1
        give_up = attempts >= policy.max_attempts
        message = (
            f"gave up after {attempts} attempts (max_attempts={policy.max_attempts}): the worker {reason}"
            if give_up
            else f"attempt {attempts} ended: the worker {reason}"
        )[:ERROR_MESSAGE_LENGTH]
        owned, o_args = self._owned(host, pid, connection_id)
        cond, in_args = self._in(None, [raw])
        status = "error" if give_up else "pending"
        changed = self._query(
            f"UPDATE {self._by_key} SET {self.q('status')} = %s, {self.q('attempts')} = %s, {self.q('error_message')} = %s, "
            f"{self.q('connection_id')} = 0, {self.q('completed_time')} = {NOW}, {self.q('scheduled_time')} = {NOW} "
            f"WHERE {owned} AND {cond}",
            [status, attempts, message, *o_args, *in_args],
        ).rowcount
        return status if changed else None

    # ---------------------------------------------------------------- reconcile
    def reconcile(self, live: "LiveConnections", ended_jobs: set[str] = frozenset(), policy: Policy = Policy(),
                  restriction: Restriction = Restriction()) -> dict[str, int]:
        """Release keys whose owner is gone. Done keys are completed; of each dead owner's
        other keys, the first in claim order was in flight (workers make keys in claim
        order) and is charged an attempt; the rest go back to ``pending`` untouched. Only
        keys within ``restriction`` are touched, but the key in flight is found among all
        of the owner's keys (else a key outside it would make the wrong one charged)."""
        result = dict.fromkeys(RECONCILED, 0)
        if not self.declared:
            return result
        n = len(self.pk)
        wanted, w_args = restriction.sql("j", self.pk, self.q, self._bind)
        rows = self._query(
            f"SELECT {self._cols('j')}, j.{self.q('host')}, j.{self.q('pid')}, j.{self.q('connection_id')}, "
            f"{self._col('attempts')}, {self._col('backend_job_id')}, j.{self.q('user')}, "
            f"CASE WHEN {live.before_server_start('j.' + self.q('reserved_time'))} THEN 1 ELSE 0 END, "
            f"CASE WHEN {wanted} THEN 1 ELSE 0 END "
            f"FROM {self.name} AS j WHERE j.{self.q('status')} = 'reserved' ORDER BY j.{self.q('reserved_time')}, {self._cols('j')}",
            w_args,
        ).fetchall()
        if not rows:
            return result
        alive = live.snapshot()  # after reading the rows: a claim made since is not mistaken for dead
        owners: dict[tuple, list] = {}
        for r in rows:
            host, pid, cid, attempts, job_id, user, before_restart, within = r[n:]
            ended = bool(job_id) and job_id in ended_jobs
            # a session from before the server's restart is gone, whatever id is live now
            if ended or int(before_restart) or live.is_dead(int(cid), user, alive):
                reason = f"(backend job {job_id}) ended" if ended else "lost its database connection"
                owners.setdefault((host, int(pid), int(cid), reason), []).append((tuple(r[:n]), int(attempts), int(within)))
        if any(within for keys in owners.values() for *_, within in keys):
            self.ensure()  # charging an attempt needs dj-orchestrate's columns
        for (host, pid, cid, reason), keys in owners.items():
            done = self._present([raw for raw, *_ in keys])
            result["completed"] += self._finish(host, pid, cid, [raw for raw, _, within in keys if raw in done and within])
            todo = [key for key in keys if key[0] not in done]
            if todo:
                (raw, att, within), rest = todo[0], todo[1:]
                became = within and self._charge(host, pid, cid, raw, att, f"on {host} (pid {pid}) {reason}", policy)
                if became:
                    result["charged"] += 1
                    result["errors"] += became == "error"
                result["released"] += self._repend(host, pid, cid, [raw for raw, _, within in rest if within])
        return result

    def reserved_backend_ids(self) -> set[str]:
        """Backend job ids holding reservations: what reconcile asks the scheduler about."""
        if "backend_job_id" not in self.columns:  # (not declared, or by stock DataJoint: none)
            return set()
        rows = self._query(f"SELECT DISTINCT {self.q('backend_job_id')} FROM {self.name} "
                           f"WHERE {self.q('status')} = 'reserved' AND {self.q('backend_job_id')} <> ''").fetchall()
        return {r[0] for r in rows}

    def _present(self, raws: Sequence[tuple]) -> set[tuple]:
        """Which of these keys already have rows in the target table."""
        cond, args = self._in("t", raws)
        found = self._query(f"SELECT DISTINCT {self._cols('t')} FROM {self.target} AS t WHERE {cond}", args).fetchall()
        return {tuple(r) for r in found}

    # ---------------------------------------------------------------- reporting
    def counts(self, restriction: Restriction = Restriction()) -> dict[str, int]:
        """Per-status counts over key_source ∩ restriction, in one statement.

        ``missing``: keys to make (not done, and pending or never enqueued)."""
        if not self.supported:
            return self._serial().counts(restriction)
        return self.tally(self._query(*self.counts_sql(restriction)).fetchall())

    def counts_sql(self, restriction: Restriction = Restriction()) -> tuple[str, list]:
        """The statement ``counts`` runs: rows (what, n) for the keys of key_source ∩
        restriction ('total'), those done ('done'), and those not done by jobs status.
        Three plain aggregates the planner runs as hash or index joins: one grouped query
        over a CASE WHEN EXISTS per key cost 2-3× as much (on PostgreSQL mostly in compiling
        it: JIT) and a SUM(CASE ...) per status more still."""
        ks_sql, args = self._key_source(restriction)
        sql = (f"SELECT 'total' AS what, COUNT(*) AS n FROM ({ks_sql}) AS m "
               f"UNION ALL SELECT 'done', COUNT(*) FROM ({ks_sql}) AS m WHERE {self._done('m')}")
        if not self.declared:
            return sql, args * 2
        status = f"j.{self.q('status')}"  # as text: PostgreSQL's enum and a string do not make one column
        sql += (f" UNION ALL SELECT CAST({status} AS {'CHAR' if self.mysql else 'TEXT'}), COUNT(*) FROM ({ks_sql}) AS m "
                f"JOIN {self.name} AS j ON {self._match('j', 'm')} WHERE NOT {self._done('m')} GROUP BY {status}")
        return sql, args * 3

    @staticmethod
    def tally(rows: Iterable[Sequence]) -> dict[str, int]:
        """``counts`` from the rows of ``counts_sql``."""
        found = {what: int(n) for what, n in rows}
        total, done = found.get("total", 0), found.get("done", 0)
        by_status = {s: found.get(s, 0) for s in STATUSES}
        blocked = by_status["reserved"] + by_status["error"] + by_status["ignore"]
        return {"total": total, "done": done, **by_status, "missing": total - done - blocked}

    def status_counts(self) -> dict[str, int]:
        """Jobs rows per status, plus ``ready`` (pending and due now); cheap, for progress."""
        if not self.supported:
            return self._serial().status_counts()
        counts = dict.fromkeys((*STATUSES, "ready"), 0)
        if self.declared:
            status = self.q("status")
            ready = f"SUM(CASE WHEN {status} = 'pending' AND {self.q('scheduled_time')} <= {NOW} THEN 1 ELSE 0 END)"
            for name, n, ready_n in self._query(f"SELECT {status}, COUNT(*), {ready} FROM {self.name} GROUP BY {status}").fetchall():
                counts[name] = int(n)
                counts["ready"] += int(ready_n or 0)
        return counts

    def made(self) -> int:
        """Rows in the table itself: what progress counts as made."""
        if not self.supported:
            return self._serial().made()
        return int(self._query(f"SELECT COUNT(*) FROM {self.target}").fetchone()[0])

    def _missing_sql(self, restriction: Restriction) -> tuple[str, list]:
        ks_sql, args = self._key_source(restriction)
        sql = f"SELECT {self._cols('m')} FROM ({ks_sql}) AS m WHERE NOT {self._done('m')}"
        if self.declared:
            sql += (
                f" AND NOT EXISTS (SELECT 1 FROM {self.name} AS j WHERE {self._match('j', 'm')} "
                f"AND j.{self.q('status')} IN ('reserved', 'error', 'ignore'))"
            )
        return sql, args

    def shard_starts(self, restriction: Restriction, size: int) -> list[tuple]:
        """First key of every ``size`` missing keys in primary-key order: shard i is
        ``[start_i, start_{i+1})``. Same missing set, same shards; computed in the
        database so that a million keys never cross the wire."""
        sql, args = self._missing_sql(restriction)
        rows = self._query(
            f"SELECT {self._cols('x')} FROM (SELECT {self._cols('mm')}, ROW_NUMBER() OVER (ORDER BY {self._cols('mm')}) AS rn "
            f"FROM ({sql}) AS mm) AS x WHERE MOD(x.rn - 1, %s) = 0 ORDER BY {self._cols('x')}",
            [*args, int(size)],
        ).fetchall()
        return [tuple(r) for r in rows]

    def errors(self, restriction: Restriction = Restriction(), match: str | None = None, stack: bool = False) -> list[dict]:
        """Failed keys with everything needed to find out why."""
        if not self.supported:
            return self._serial().errors(restriction, match, stack)
        if not self.declared:
            return []
        cond, args = restriction.sql("j", self.pk, self.q, self._bind)
        if match:
            cond += f" AND POSITION(%s IN j.{self.q('error_message')}) > 0"
            args.append(match)
        cols = ["error_message", "attempts", "host", "pid", "backend_job_id", "log_path", "completed_time"]
        if stack:
            cols.append("error_stack")
        rows = self._query(
            f"SELECT {self._cols('j')}, {', '.join(self._col(c) for c in cols)} FROM {self.name} AS j "
            f"WHERE j.{self.q('status')} = 'error' AND {cond} ORDER BY {self._cols('j')}",
            args,
        ).fetchall()
        n = len(self.pk)
        out = []
        for r in rows:
            item = {"key": self._decode(r[:n]), **dict(zip(cols, r[n:]))}
            if stack:
                item["error_stack"] = blob.unpack(bytes(item["error_stack"])) if item["error_stack"] is not None else None
            out.append(item)
        return out

    def retry(self, restriction: Restriction = Restriction(), match: str | None = None) -> int:
        """Failed and ignored keys back to ``pending``, with a fresh attempt budget.
        Returns how many keys (an UPDATE changes each row once: rows are keys)."""
        if not self.supported:
            return self._serial().retry(restriction, match)
        if not self.declared:
            return 0
        self.ensure()
        cond, args = restriction.sql(self.name, self.pk, self.q, self._bind)
        if match:
            cond += f" AND POSITION(%s IN {self.q('error_message')}) > 0"
            args.append(match)
        return self._query(
            f"UPDATE {self.name} SET {self.q('status')} = 'pending', {self.q('attempts')} = 0, "
            f"{self.q('error_message')} = '', {self.q('scheduled_time')} = {NOW} "
            f"WHERE {self.q('status')} IN ('error', 'ignore') AND {cond}",
            args,
        ).rowcount

    def ignore(self, restriction: Restriction) -> int:
        """Mark matching keys that are not done ``ignore``: pending and failed keys, and
        keys never enqueued; keys in flight are left alone. Returns how many keys became
        ignored, counted as keys: one UPDATE of the rows there are, one INSERT of the rows
        there are not (MariaDB's ON DUPLICATE KEY UPDATE counts two per updated row)."""
        if not self.supported:
            return self._serial().ignore(restriction)
        self.ensure()
        ks_sql, ks_args = self._key_source(restriction)
        status = self.q("status")
        wanted = f"SELECT {self._cols('m')} FROM ({ks_sql}) AS m WHERE NOT {self._done('m')}"
        updated = self._query(
            f"UPDATE {self.name} SET {status} = 'ignore' WHERE {status} IN ('pending', 'error') "
            f"AND ({self._cols()}) IN ({wanted})",
            ks_args,
        ).rowcount
        inserted = self._query(
            f"INSERT {'IGNORE ' if self.mysql else ''}INTO {self.name} ({self._cols()}, {status}, {self.q('priority')}) "
            f"SELECT {self._cols('i')}, 'ignore', %s FROM ({wanted}) AS i "
            f"WHERE NOT EXISTS (SELECT 1 FROM {self.name} AS j WHERE {self._match('j', 'i')})"
            + ("" if self.mysql else " ON CONFLICT DO NOTHING"),
            [self.conn._config.jobs.default_priority, *ks_args],
        ).rowcount
        return updated + inserted


def counts_of(jts: Sequence[JobTable], restriction: Restriction = Restriction()) -> list[dict[str, int]]:
    """``counts`` of each table: of those with a jobs key in one statement (UNION ALL of
    their ``counts_sql``, on the first one's connection), so in one round trip and from one
    snapshot of the database (a statement per table saw each at another moment, a
    downstream table's keys before or after its upstream's). Those that can have no jobs
    table are counted by ``serial``, one by one."""
    parts, args = [], []
    for i, jt in enumerate(jts):
        if jt.supported:
            sql, more = jt.counts_sql(restriction)
            parts.append(f"SELECT {i} AS t, x.what, x.n FROM ({sql}) AS x")
            args += more
    rows: dict[int, list] = {}
    if parts:
        for t, what, n in next(jt for jt in jts if jt.supported)._query(" UNION ALL ".join(parts), args).fetchall():
            rows.setdefault(int(t), []).append((what, n))
    return [jt.tally(rows.get(i, [])) if jt.supported else jt.counts(restriction) for i, jt in enumerate(jts)]


@contextlib.contextmanager
def _privilege(action: str, privilege: str) -> Iterator[None]:
    """A statement the database refuses for lack of a privilege: say which, exit 2."""
    try:
        yield
    except AccessError as err:
        detail = next((str(a) for a in err.args[1:2] if a), str(err)).splitlines()[0]
        raise UsageError(
            f"the database user may not {action} ({detail})",
            f"grant the {privilege} privilege on that schema, or run this once as a user who has it",
        ) from None


class LiveConnections:
    """Which database connections exist now: the truth about whether an owner is alive.

    On MySQL/MariaDB a user without the PROCESS privilege sees only their own
    connections; reservations of other users are then never judged dead."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.mysql = conn.adapter.backend == "mysql"
        self.sees_all = True
        self.user = ""
        if self.mysql:
            grants = " ".join(r[0] for r in conn.query("SHOW GRANTS").fetchall()).upper()
            self.sees_all = "ALL PRIVILEGES ON *.*" in grants or "PROCESS" in grants
            self.user = conn.query("SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)").fetchone()[0]

    def snapshot(self) -> set[int]:
        sql = "SELECT ID FROM information_schema.PROCESSLIST" if self.mysql else "SELECT pid FROM pg_stat_activity"
        return {int(r[0]) for r in self.conn.query(sql).fetchall()}

    def before_server_start(self, column: str) -> str:
        """SQL, true when ``column`` (a time the server wrote) is older than the server's
        current run: a connection id from then may belong to a live session now (MariaDB
        numbers sessions from 1 again after a restart; PostgreSQL reuses process ids)."""
        if self.mysql:
            uptime = int(self.conn.query("SHOW GLOBAL STATUS LIKE 'Uptime'").fetchone()[1])
            # whole seconds: 2 s of margin, so that no reservation of this run looks older
            return f"{column} < CURRENT_TIMESTAMP(3) - {self.conn.adapter.interval_expr(uptime + 2, 'second')}"
        return f"{column} < pg_postmaster_start_time()"

    def is_dead(self, connection_id: int, user: str, alive: set[int]) -> bool:
        if connection_id in alive:
            return False
        return self.sees_all or (user or "").split("@")[0] == self.user


def reconcile_all(tables: Sequence[Any], policy: Policy = Policy(), ended_jobs: set[str] = frozenset(),
                  restriction: Restriction = Restriction()) -> dict[str, int]:
    """Reconcile the jobs tables of these table instances (the keys within
    ``restriction``); totals over all of them."""
    total = dict.fromkeys(RECONCILED, 0)
    if not tables:
        return total
    live = LiveConnections(tables[0].connection)
    for table in tables:
        for k, v in JobTable(table).reconcile(live, ended_jobs, policy, restriction).items():
            total[k] += v
    return total
