"""The SQL that MariaDB/MySQL and PostgreSQL spell differently, in one place.

One small class per database, chosen once per connection (``dialect_of``): the
statements in the rest of ``jobs`` are written once and ask their dialect for the parts
that differ (insert-ignore, the index hint, UUID binding, the claim, the PostgreSQL claim
index and statistics, and how the server's sessions are seen).
"""

from __future__ import annotations

import hashlib
import uuid
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .sql import TableSQL


# What the two databases spell differently, side by side: (MariaDB/MySQL, PostgreSQL).
# A statement on listed keys or a key range is forced onto MariaDB's primary key
# (``by_key``; DELETE's multi-table form is the one that takes that hint). Left to itself,
# InnoDB runs such a statement through the (status, priority, scheduled_time) index
# whenever few rows have that status (the end of a queue), locking the entries of keys
# other workers hold while they do the same: two claims then deadlock (seen with 32
# workers on MariaDB 10.11).
SPELLINGS: dict[str, tuple[str, str]] = {
    "text": ("CHAR", "TEXT"),  # what a CAST to text names
    "insert_new": ("INSERT IGNORE INTO {name} ({columns}) {select}",  # skipping keys another process inserted
                   "INSERT INTO {name} ({columns}) {select} ON CONFLICT DO NOTHING"),
    "by_key": ("{name} FORCE INDEX (PRIMARY)", "{name}"),
    "delete": ("DELETE {name} FROM {by_key} WHERE {where}", "DELETE FROM {name} WHERE {where}"),
    "sessions": ("SELECT ID FROM information_schema.PROCESSLIST", "SELECT pid FROM pg_stat_activity"),
    "snapshot": ("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY",  # statements that read as one
                 "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"),
}


class Dialect:
    """The words in which the databases differ (``SPELLINGS``, in column ``index``); the
    subclasses add what differs in more than words."""

    mysql: bool
    index: int
    indexes = ""  # the catalog query that finds claim indexes by name (where ``claim_index`` makes any)
    union_limit: int  # subqueries one UNION ALL over many tables holds (``TableSQL._union``)

    @classmethod
    def spell(cls, word: str, **parts: str) -> str:
        return SPELLINGS[word][cls.index].format(**parts)

    @classmethod
    def column_type(cls, types: tuple[str, str, str]) -> str:
        """This database's type of one of ``EXTRA_COLUMNS``."""
        return types[cls.index]

    @classmethod
    def insert_new(cls, name: str, columns: str, select: str) -> str:
        return cls.spell("insert_new", name=name, columns=columns, select=select)

    @classmethod
    def by_key(cls, name: str) -> str:
        return cls.spell("by_key", name=name)

    @classmethod
    def delete(cls, name: str, by_key: str, where: str) -> str:
        return cls.spell("delete", name=name, by_key=by_key, where=where)


class MySQL(Dialect):
    """MariaDB and MySQL (InnoDB)."""

    mysql = True
    index = 0
    union_limit = 400

    @staticmethod
    def uuid(value: uuid.UUID | str) -> Any:
        """A UUID attribute's parameter: DataJoint stores UUIDs as binary(16)."""
        return (value if isinstance(value, uuid.UUID) else uuid.UUID(value)).bytes

    @staticmethod
    def claim_index(jt: "TableSQL") -> None:
        """None: DataJoint's (status, priority, scheduled_time) index gives claim order,
        InnoDB ending every index with the primary key."""
        return None

    @staticmethod
    def analyze(name: str, added: int) -> str | None:
        return None

    @staticmethod
    def claim(jt: "TableSQL", pick: str, args: list, sets: str, set_args: list) -> list:
        """Pick and reserve in one short READ COMMITTED transaction: ``pick`` (FOR UPDATE
        SKIP LOCKED), then a conditional UPDATE of the rows it locked. The rows in key
        order, as on PostgreSQL: a worker makes its batch in this order, and reconcile
        takes the first unmade key of a dead owner as its key in flight."""
        n = len(jt.pk)
        jt._query("SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
        jt._query("START TRANSACTION")
        try:
            rows = jt._query(pick, args).fetchall()
            if rows:
                cond, in_args = jt._in(None, [tuple(r[:n]) for r in rows])
                jt._query(
                    f"UPDATE {jt._by_key} SET {sets} WHERE {cond} AND {jt.q('status')} = 'pending'",
                    [*set_args, *in_args],
                )
                if jt.numeric_key:  # (the rows are locked: all of them were updated)
                    rows = sorted(rows, key=lambda r: tuple(r[:n]))
                else:
                    rows = jt._query(
                        f"SELECT {jt._cols()}, {jt.q('attempts')} FROM {jt._by_key} WHERE {cond} "
                        f"ORDER BY {jt._cols()}", in_args,
                    ).fetchall()
            jt._query("COMMIT")
        except BaseException:
            try:
                jt._query("ROLLBACK")
            except Exception:
                pass
            raise
        return rows

    @staticmethod
    def visibility(conn: Any) -> tuple[bool, str]:
        """(whether this user sees every session, the user's name): a user without the
        PROCESS privilege sees only their own connections."""
        grants = " ".join(r[0] for r in conn.query("SHOW GRANTS").fetchall()).upper()
        user = conn.query("SELECT SUBSTRING_INDEX(CURRENT_USER(), '@', 1)").fetchone()[0]
        return "ALL PRIVILEGES ON *.*" in grants or "PROCESS" in grants, user

    @staticmethod
    def before_server_start(conn: Any, column: str) -> str:
        uptime = int(conn.query("SHOW GLOBAL STATUS LIKE 'Uptime'").fetchone()[1])
        # whole seconds: 2 s of margin, so that no reservation of this run looks older
        return f"{column} < CURRENT_TIMESTAMP(3) - {conn.adapter.interval_expr(uptime + 2, 'second')}"


class PostgreSQL(Dialect):
    """PostgreSQL."""

    mysql = False
    index = 1
    indexes = "SELECT indexname FROM pg_indexes WHERE schemaname = %s AND indexname IN ({})"
    union_limit = 20  # it plans a longer one in superlinear time: 200 tables' probes took 140 ms in one statement, 25 in ten

    @staticmethod
    def uuid(value: uuid.UUID | str) -> Any:
        return str(value)

    @staticmethod
    def claim_index(jt: "TableSQL") -> tuple[str, str]:
        """(its name, the statement that creates it) of an index in claim order over the
        pending rows only (``indexes`` finds them).

        A claim takes pending keys by (priority, scheduled_time, key). DataJoint's index
        (status, priority, scheduled_time) gives that order on MySQL, where InnoDB ends
        every index with the primary key, but not on PostgreSQL: there each claim sorted
        every pending row (30 ms per claim with 100,000 pending keys). With this partial
        index a claim reads only the rows it takes."""
        name = "djo_claim_" + hashlib.md5(jt.jobs_name.encode()).hexdigest()[:16]
        return (name, f"CREATE INDEX IF NOT EXISTS {jt.q(name)} ON {jt.name} "
                      f"({jt.q('priority')}, {jt.q('scheduled_time')}, {jt._cols()}) WHERE {jt.q('status')} = 'pending'")

    @staticmethod
    def analyze(name: str, added: int) -> str | None:
        """PostgreSQL plans a claim from the table statistics. Right after a large
        enqueue they still describe the table as it was (often empty), and claims sort
        every pending row instead of reading the claim index, until autovacuum catches
        up. Refresh them once (ANALYZE samples a fixed number of rows)."""
        return f"ANALYZE {name}" if added >= 1000 else None

    @staticmethod
    def claim(jt: "TableSQL", pick: str, args: list, sets: str, set_args: list) -> list:
        """Pick and reserve in one statement, the rows in key order."""
        sql = (
            f"WITH s AS ({pick}), u AS (UPDATE {jt.name} AS j SET {sets} FROM s WHERE {jt._match('j', 's')} "
            f"RETURNING {jt._cols('j')}, j.{jt.q('attempts')}) SELECT * FROM u ORDER BY {jt._cols()}"
        )
        return jt._query(sql, [*args, *set_args]).fetchall()

    @staticmethod
    def visibility(conn: Any) -> tuple[bool, str]:
        return True, ""

    @staticmethod
    def before_server_start(conn: Any, column: str) -> str:
        return f"{column} < pg_postmaster_start_time()"


def dialect_of(conn: Any) -> type[Dialect]:
    """The dialect of a DataJoint connection's database."""
    return MySQL if conn.adapter.backend == "mysql" else PostgreSQL
