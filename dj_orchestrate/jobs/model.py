"""The values jobs-table statements take and give: who owns a reservation, a claimed key,
the retry policy, a restriction by keys, and the statuses and columns of a jobs table."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from datajoint.jobs import ERROR_MESSAGE_LENGTH, TRUNCATION_APPENDIX, _get_job_version
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
