"""Ending a claim: complete, fail, release (and charge the key in flight an attempt).
Each touches only the rows still reserved by their owner."""

from __future__ import annotations

from typing import Sequence

from datajoint import blob
from datajoint.jobs import ERROR_MESSAGE_LENGTH

from .declare import Declared
from .model import NOW, Claim, Owner, Policy, truncate


class Finishing(Declared):
    """The statements that end one owner's claims."""

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
        else:
            sql = self.dialect.delete(self.name, self._by_key, f"{owned} AND {cond}")
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
