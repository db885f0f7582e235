"""The pipeline's leader lock: the database's own (``GET_LOCK`` on MySQL/MariaDB, a session
advisory lock on PostgreSQL), named after the pipeline's schemas and held by the server's
connection, so that it goes with a server that dies."""

from __future__ import annotations

from typing import Any

from .. import ledger


class Leadership:
    """The pipeline's leader lock on this process's connection (see the module's doc)."""

    def __init__(self, conn: Any, schemas: list[str]) -> None:
        self.conn = conn
        self.key = ledger.pipeline_key(schemas)
        self.mysql = conn.adapter.backend == "mysql"
        digest = bytes.fromhex(self.key)
        # MySQL: a name of at most 64 characters; PostgreSQL: two non-negative int4 (as pg_locks shows them)
        self.ids: tuple = (f"djo-serve-{self.key}",) if self.mysql else (
            int.from_bytes(digest[:4], "big") >> 1, int.from_bytes(digest[4:8], "big") >> 1)

    def _one(self, sql: str) -> Any:
        return self.conn.query(sql, args=self.ids, reconnect=False).fetchone()[0]

    def held(self) -> bool:
        """Whether this connection holds the lock now (a server restart took it away)."""
        if self.mysql:
            return bool(self._one("SELECT IS_USED_LOCK(%s) = CONNECTION_ID()"))
        return bool(self._one("SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND "
                              "pid = pg_backend_pid() AND classid = %s::bigint::oid AND objid = %s::bigint::oid "
                              "AND objsubid = 2)"))

    def try_acquire(self) -> bool:
        return bool(self._one("SELECT GET_LOCK(%s, 0)" if self.mysql else "SELECT pg_try_advisory_lock(%s, %s)"))

    def release(self) -> None:
        self._one("SELECT RELEASE_LOCK(%s)" if self.mysql else "SELECT pg_advisory_unlock(%s, %s)")
