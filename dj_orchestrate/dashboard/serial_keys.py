"""A page of keys of a table that can have no jobs table (``serial``): its keys are those
of its ``key_source`` not in the table, its failures in the ledger, so ``queries.key_page``
(a jobs table's rows) has nothing to show for it."""

from __future__ import annotations

import json

import datajoint as dj

from ..jobs import JobTable, Restriction
from ..queries import PAGE
from ..serial import key_hash

STATUSES = ("pending", "error", "ignore")  # no key of such a table is kept reserved or as a success
SHOWN = ("attempts", "host", "backend_job_id", "error_message")


def key_page(jt: JobTable, status: str | None, restriction: Restriction, offset: int = 0,
             limit: int = PAGE) -> list[dict]:
    """One page of the keys not made, in key order, each with its failure in the ledger
    (``error``, ``ignore``; ``pending``: none, or one retried after a backoff). By LIMIT
    and OFFSET (DataJoint's fetch); the ledger's rows of the table are read whole, as
    ``errors`` reads them (a row per failed key, not per key)."""
    if status is not None and status not in STATUSES:
        return []
    serial = jt._serial()
    recorded = serial._recorded("status", "key", *SHOWN)
    todo = serial._todo(restriction)
    if status == "pending":
        todo = todo & dj.Not([json.loads(r["key"]) for r in recorded.values() if r["status"] != "pending"])
    elif status is not None:
        todo = todo & [json.loads(r["key"]) for r in recorded.values() if r["status"] == status]
    rows = []
    for key in todo.keys(order_by="KEY", limit=limit, offset=offset or None):
        r = recorded.get(key_hash(key), {})
        rows.append({"key": key, "status": r.get("status") if r.get("status") in ("error", "ignore") else "pending",
                     **{c: "" if r.get(c) is None else r[c] for c in SHOWN}})
    return rows
