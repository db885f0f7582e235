"""The dashboard's read queries (and the live workers ``status`` counts for its ETA):
errors grouped by cause, a page of a table's keys, reservations whose owner is gone.
Each is bounded (grouped aggregates, LIMIT, keyset pagination) so a page costs the same
on a million keys.
They work on ``jobs.JobTable``'s own helpers (quoting, binding, decoding keys). The
failures of a table that can have no jobs table (``serial``: in the ledger's
``KeyFailure``) are grouped here in Python, from the list ``errors`` prints."""

from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from typing import Any, Sequence

from datajoint import blob

from . import ledger
from .jobs import JobTable, LiveConnections, Restriction

# What is normalised away from an error message, in this order, to find its cause:
# (pattern, replacement). No backslashes: the same text is a valid regular expression
# and string literal for MariaDB (PCRE) and PostgreSQL (ARE).
NORMALISE = (
    ("[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", "<uuid>"),
    ("0x[0-9a-fA-F]+", "<addr>"),
    ("'[^']*'", "'<s>'"),
    ("[{][^}]*[}]", "{<key>}"),
    ("/[^ :,;)]+", "<path>"),
    ("[0-9]+([.][0-9]+)?", "<n>"),
)
GROUP_LIMIT = 200  # causes per table: beyond it, the page says so
SAMPLES = 3  # sample keys per cause
PAGE = 50


def cause_sql(jt: JobTable, column: str) -> str:
    """SQL: ``column`` (an error message) with numbers, paths, keys and addresses replaced."""
    expr, flags = column, "" if jt.mysql else ", 'g'"  # MariaDB replaces every match; PostgreSQL with 'g'
    for pattern, repl in NORMALISE:
        expr = f"REGEXP_REPLACE({expr}, {literal(pattern)}, {literal(repl)}{flags})"
    return expr


def cause_of(message: str) -> str:
    """``cause_sql`` in Python, for failures listed rather than queried (``serial``)."""
    for pattern, repl in NORMALISE:
        message = re.sub(pattern, repl, message)
    return message


def like_of(cause: str) -> str:
    """A LIKE pattern (escape character ``!``) that every message of this cause matches:
    its text with each placeholder a ``%``, and a ``%`` at the end (MariaDB's ``=``
    ignores trailing spaces). Cheap to test, it spares the regular expressions the
    messages of other causes."""
    parts = re.split("|".join(re.escape(repl[repl.index("<"):repl.index(">") + 1]) for _, repl in NORMALISE), cause)
    return "%".join(re.sub("([!%_])", "!\\1", part) for part in parts) + "%"


def literal(text: str) -> str:
    """A constant of ours as an SQL string (never text from outside: that is bound)."""
    return "'" + text.replace("'", "''") + "'"


@dataclass
class Group:
    """One cause of failures, over the selected tables."""

    cause: str
    count: int = 0
    tables: dict[str, int] = field(default_factory=dict)
    first: datetime.datetime | None = None
    last: datetime.datetime | None = None
    example: str = ""
    samples: list[dict] = field(default_factory=list)


def error_groups(jts: dict[str, JobTable]) -> list[Group]:
    """Failed keys grouped by cause: one GROUP BY per jobs table, a few sample keys each;
    the failures of a table without one (``serial``) as ``errors`` lists them."""
    groups: dict[str, Group] = {}
    for name, jt in jts.items():
        if jt.declared:
            _group_jobs(groups, name, jt)
        elif not jt.supported:
            for e in jt.errors():
                _add(groups, cause_of(e["error_message"]), name, 1, e["completed_time"], e["completed_time"],
                     e["error_message"], [{"table": name, "key": e["key"]}])
    return sorted(groups.values(), key=lambda g: -g.count)


def _group_jobs(groups: dict[str, Group], name: str, jt: JobTable) -> None:
    q, n = jt.q, len(jt.pk)
    cause = cause_sql(jt, f"j.{q('error_message')}")
    rows = jt._query(
        f"SELECT c, COUNT(*), MIN(t), MAX(t), MIN(m) FROM (SELECT {cause} AS c, j.{q('completed_time')} AS t, "
        f"j.{q('error_message')} AS m FROM {jt.name} AS j WHERE j.{q('status')} = 'error') AS x "
        f"GROUP BY c ORDER BY COUNT(*) DESC LIMIT {GROUP_LIMIT}").fetchall()
    picked = jt._query(
        f"SELECT * FROM (SELECT {jt._cols('j')}, {cause} AS c, ROW_NUMBER() OVER (PARTITION BY {cause} "
        f"ORDER BY {jt._cols('j')}) AS rn FROM {jt.name} AS j WHERE j.{q('status')} = 'error') AS x "
        f"WHERE x.rn <= {SAMPLES}").fetchall()
    samples: dict[str, list[dict]] = {}
    for r in picked:
        samples.setdefault(r[n], []).append({"table": name, "key": jt._decode(r[:n])})
    for c, count, first, last, example in rows:
        _add(groups, c, name, int(count), first, last, example, samples.get(c, []))


def _add(groups: dict[str, Group], cause: str, table: str, count: int, first: datetime.datetime | None,
         last: datetime.datetime | None, example: str, samples: list[dict]) -> None:
    """``count`` failures of ``table`` seen from ``first`` to ``last``, into their cause's group."""
    g = groups.setdefault(cause, Group(cause, example=example))
    g.count += count
    g.tables[table] = g.tables.get(table, 0) + count
    g.first = min((x for x in (g.first, first) if x is not None), default=None)
    g.last = max((x for x in (g.last, last) if x is not None), default=None)
    g.samples += samples[:SAMPLES - len(g.samples)]


def merged(*lists: list[Group]) -> list[Group]:
    """Groups of several ``error_groups`` calls (over other tables) as one list, in new
    groups (those given are left as they are: a snapshot's)."""
    groups: dict[str, Group] = {}
    for found in lists:
        for g in found:
            for table, count in g.tables.items():
                _add(groups, g.cause, table, count, g.first, g.last, g.example,
                     [s for s in g.samples if s["table"] == table])
    return sorted(groups.values(), key=lambda g: -g.count)


def group_keys(jt: JobTable, cause: str, limit: int | None = 200, stack: bool = True) -> list[dict]:
    """The failed keys of one cause in one table, with attempts, host, job id, log and stack."""
    if not jt.supported:
        found = [e for e in jt.errors(stack=stack) if cause_of(e["error_message"]) == cause]
        return found[:limit] if limit else found
    if not jt.declared:
        return []
    cols = ["error_message", "attempts", "host", "pid", "backend_job_id", "log_path", "completed_time"]
    if stack:
        cols.append("error_stack")
    message = f"j.{jt.q('error_message')}"
    rows = jt._query(
        f"SELECT {jt._cols('j')}, {', '.join(jt._col(c) for c in cols)} FROM {jt.name} AS j "
        f"WHERE j.{jt.q('status')} = 'error' AND {message} LIKE %s ESCAPE '!' AND {cause_sql(jt, message)} = %s "
        f"ORDER BY {jt._cols('j')}" + (f" LIMIT {int(limit)}" if limit else ""), [like_of(cause), cause]).fetchall()
    n = len(jt.pk)
    out = []
    for r in rows:
        item = {"key": jt._decode(r[:n]), **dict(zip(cols, r[n:]))}
        if stack and item.get("error_stack") is not None:
            item["error_stack"] = blob.unpack(bytes(item["error_stack"]))
        out.append(item)
    return out


def key_page(jt: JobTable, status: str | None, restriction: Restriction, after: Sequence | None,
             limit: int = PAGE) -> list[dict]:
    """One page of the jobs table's keys in primary-key order, after the key ``after``."""
    if not jt.declared:
        return []
    cond, args = jt._where(restriction, (f"j.{jt.q('status')} = %s", status))
    if after:
        row = "(" + ", ".join(["%s"] * len(jt.pk)) + ")"
        cond += f" AND ({jt._cols('j')}) > {row}"
        args += [jt._bind(c, v) for c, v in zip(jt.pk, after)]
    cols = ["status", "attempts", "host", "backend_job_id", "error_message"]
    rows = jt._query(
        f"SELECT {jt._cols('j')}, {', '.join(jt._col(c) for c in cols)} FROM {jt.name} AS j WHERE {cond} "
        f"ORDER BY {jt._cols('j')} LIMIT {int(limit)}", args).fetchall()
    n = len(jt.pk)
    return [{"key": jt._decode(r[:n]), "raw": list(r[:n]), **dict(zip(cols, r[n:]))} for r in rows]


def orphans(jts: dict[str, JobTable]) -> list[dict]:
    """Reserved keys per owner whose database connection is gone: what reconcile releases.
    One statement over every jobs table (the reserved rows, through the status index)."""
    declared = [(name, jt) for name, jt in jts.items() if jt.declared]
    if not declared:
        return []
    parts = []
    for i, (name, jt) in enumerate(declared):
        q = jt.q
        parts.append(  # grouped by position: a stock jobs table's backend_job_id is a constant
            f"SELECT {i} AS t, {q('host')} AS host, {q('pid')} AS pid, {q('connection_id')} AS cid, {q('user')} AS u, "
            f"{jt._col('backend_job_id', jt.name)} AS job, COUNT(*) AS n, MIN({q('reserved_time')}) AS since "
            f"FROM {jt.name} WHERE {q('status')} = 'reserved' GROUP BY 2, 3, 4, 5, 6")
    rows = sorted(declared[0][1]._query(" UNION ALL ".join(parts)).fetchall(), key=lambda r: int(r[0]))
    if not rows:
        return []
    live = LiveConnections(declared[0][1].conn)  # one look at the server's sessions
    alive = live.snapshot()
    return [{"table": declared[int(t)][0], "host": host, "pid": int(pid), "connection_id": int(cid), "user": user,
             "backend_job_id": job_id, "keys": int(count), "since": since, "gone": live.is_dead(int(cid), user, alive)}
            for t, host, pid, cid, user, job_id, count, since in rows]


def live_workers(jts: dict[str, JobTable]) -> dict[str, int]:
    """Per table: owners of reserved keys whose connection is alive (workers now making it)."""
    out: dict[str, int] = {}
    for o in orphans(jts):
        if not o["gone"]:
            out[o["table"]] = out.get(o["table"], 0) + 1
    return out


def can_write(jt: JobTable) -> str | None:
    """None when this account may change the keys' state of ``jt``'s table; else the
    privilege it lacks: UPDATE on its jobs table, or, for a table that can have no jobs
    table (``serial``), DELETE on the ledger's failures (what retry does). Asked of the
    database without changing anything (PostgreSQL: has_table_privilege; MariaDB: a
    statement that matches no row, refused as any such statement would be)."""
    if jt.declared:
        return _lacks(jt, jt.name, "UPDATE", f"UPDATE {jt.name} SET {jt.q('status')} = {jt.q('status')} WHERE 1 = 0")
    if not jt.supported:
        failures = ledger.key_failures()
        if failures is not None:
            name = failures().full_table_name
            return _lacks(jt, name, "DELETE", f"DELETE FROM {name} WHERE 1 = 0")
    return None


def _lacks(jt: JobTable, table: str, privilege: str, probe: str) -> str | None:
    """``privilege`` on ``table`` (MariaDB: ``probe`` is refused) where this account lacks it."""
    if jt.mysql:
        try:
            jt._query(probe)
        except Exception as err:  # AccessError, or pymysql's own for a table-level grant
            if "denied" in str(err).lower() or "1142" in str(err):
                return f"{privilege} on {table}"
            raise
        return None
    ok = jt._query("SELECT has_table_privilege(%s, %s)", [table, privilege]).fetchone()[0]
    return None if ok else f"{privilege} on {table}"


def log_of(item: dict, lines: int = 100) -> tuple[str, str]:
    """("tail", text) when this machine can read the key's log, else ("command", how to see it)."""
    path, job_id = item.get("log_path") or "", item.get("backend_job_id") or ""
    if path:
        try:
            with open(path, "rb") as f:
                f.seek(0, 2)
                f.seek(max(0, f.tell() - 64 * 1024))
                return "tail", b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
        except OSError:
            pass
    if job_id.startswith("kubernetes:"):
        ns, _, pod = job_id[len("kubernetes:"):].partition("/")
        return "command", f"kubectl logs -n {ns} {pod}"
    if path:
        return "command", f"ssh {item.get('host') or 'HOST'} tail -n {lines} {path}"
    if job_id:
        return "command", f"sacct -j {job_id} -o JobID,State,ExitCode,NodeList  # SLURM; or your scheduler's log"
    return "command", "no log path was recorded for this key"


def stack_text(value: Any) -> str:
    return "" if value is None else str(value)
