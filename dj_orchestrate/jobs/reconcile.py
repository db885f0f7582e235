"""Reconcile: release the keys whose owner is gone (its database connection, or its
backend job), charging an attempt only to the key the owner was making."""

from __future__ import annotations

from typing import Any, Sequence

from .declare import read_columns
from .dialect import dialect_of
from .finish import Finishing
from .model import RECONCILED, Policy, Restriction


class LiveConnections:
    """Which database connections exist now: the truth about whether an owner is alive.

    On MySQL/MariaDB a user without the PROCESS privilege sees only their own
    connections; reservations of other users are then never judged dead."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.dialect = dialect_of(conn)
        self.sees_all, self.user = self.dialect.visibility(conn)

    def snapshot(self) -> set[int]:
        return {int(r[0]) for r in self.conn.query(self.dialect.spell("sessions")).fetchall()}

    def before_server_start(self, column: str) -> str:
        """SQL, true when ``column`` (a time the server wrote) is older than the server's
        current run: a connection id from then may belong to a live session now (MariaDB
        numbers sessions from 1 again after a restart; PostgreSQL reuses process ids)."""
        return self.dialect.before_server_start(self.conn, column)

    def is_dead(self, connection_id: int, user: str, alive: set[int]) -> bool:
        if connection_id in alive:
            return False
        return self.sees_all or (user or "").split("@")[0] == self.user


class Reconciling(Finishing):
    """Reconcile on one jobs table."""

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

    def _holders_sql(self, i: int) -> str:
        """This table's part of ``reserved_backend_ids_of``: the backend job ids holding its reservations."""
        return (f"SELECT DISTINCT {i} AS t, {self.q('backend_job_id')} FROM {self.name} "
                f"WHERE {self.q('status')} = 'reserved' AND {self.q('backend_job_id')} <> ''")

    def _present(self, raws: Sequence[tuple]) -> set[tuple]:
        """Which of these keys already have rows in the target table."""
        cond, args = self._in("t", raws)
        found = self._query(f"SELECT DISTINCT {self._cols('t')} FROM {self.target} AS t WHERE {cond}", args).fetchall()
        return {tuple(r) for r in found}


def reserved_backend_ids_of(jts: Sequence[Reconciling]) -> set[str]:
    """Backend job ids holding reservations in any of these jobs tables: what reconcile
    asks the scheduler about. In a UNION ALL (``_union``), not a statement per table: a
    run of 200 tables asked before it started and on every round of following it.
    A jobs table not declared, or declared by stock DataJoint, has none."""
    parts = [(jt._holders_sql(i), ()) for i, (jt, columns) in enumerate(zip(jts, read_columns(jts)))
             if "backend_job_id" in columns]
    return {job_id for _, job_id in jts[0]._union(parts, 1)} if parts else set()
