"""One jobs table's names and key, and the SQL fragments every statement on it is built from.

Keys travel as the raw values the database returned and are always bound as parameters.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import sys
import uuid
from typing import Any, Iterator, Sequence

from .dialect import dialect_of
from .model import Restriction

# Per process and table class: its key_source and jobs key. Computing them costs catalog
# queries each (every key_source loads its parents' headings afresh), paid by every
# command and worker start for every JobTable built; the answers do not change while a
# process runs.
_KEY_SOURCE: dict[type, tuple[str, tuple[str, ...]]] = {}
_JOBS_KEY: dict[type, list[str]] = {}


def key_source_of(cls: type) -> tuple[str, tuple[str, ...]]:
    """DataJoint's own SQL of a table class's key_source, and the attributes it yields."""
    if cls not in _KEY_SOURCE:
        ks = _of_parent_classes(cls)
        if ks is None:  # (not ``or``: a query expression's truth is a query for its rows)
            ks = cls().key_source
        if inspect.isclass(ks):
            ks = ks()
        _KEY_SOURCE[cls] = (ks.make_sql(), tuple(ks.heading.names))
    return _KEY_SOURCE[cls]


def custom_key_source(cls: type) -> bool:
    """Whether the user's class defines ``key_source``. Building one costs a heading load
    per parent (7 catalog queries each), for every table, on every command."""
    return any("key_source" in k.__dict__ for k in cls.__mro__ if not k.__module__.startswith("datajoint"))


@functools.lru_cache(maxsize=None)
def _classes_of(module: str) -> dict[str, type]:
    """The table classes a module defines, by full table name: read once per module (on
    200 tables, a read per table cost 2 s in DataJoint's attribute lookups)."""
    return {v.full_table_name: v for v in vars(sys.modules.get(module, object)).values()
            if isinstance(v, type) and getattr(v, "database", None) and hasattr(v, "full_table_name")}


def _of_parent_classes(cls: type) -> Any:
    """DataJoint's default key_source (the join of the primary parents, each renamed as
    its foreign key says), built as DataJoint builds it but from the parents' classes in
    the table's module, whose headings a process loads once, instead of a fresh
    ``FreeTable`` per parent (a heading load each: 7 catalog queries, for every table of
    every command and worker). None where it cannot be: a custom key_source, or a parent
    the module does not define (then DataJoint's own)."""
    if custom_key_source(cls):
        return None
    known = _classes_of(cls.__module__)
    parents = cls().parents(primary=True, foreign_key_info=True)
    if not parents or any(name not in known for name, _ in parents):
        return None
    ks = None
    for name, props in parents:
        renamed = {attr: ref for attr, ref in props["attr_map"].items() if attr != ref}
        part = known[name]().proj(**renamed) if props["aliased"] else known[name]().proj()
        ks = part if ks is None else ks * part
    return ks


class TableSQL:
    """One table's jobs table: its names, its key, how keys are bound and decoded, and the
    conditions the statements share. ``dialect``: its database's SQL where the two differ."""

    def __init__(self, table: Any, conn: Any = None) -> None:
        """``conn``: the connection its statements run on, where not the table's own (the
        dashboard reads on a second one, beside the one its pages use)."""
        self.table = table
        self.conn = conn or table.connection
        self.dialect = dialect_of(self.conn)
        self.mysql = self.dialect.mysql
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

    def _union(self, parts: Sequence[tuple[str, Sequence]], weight: int, one_snapshot: bool = False) -> list[tuple]:
        """The rows of the UNION ALL of these (statement, arguments) parts, each of
        ``weight`` subqueries, in as few statements as the dialect's ``union_limit`` allows:
        many tables' probes in a round trip or a few, not one each. ``one_snapshot``: where
        that takes more than one statement, they read the database as one statement would."""
        per = max(1, self.dialect.union_limit // weight)
        chunks = [parts[i:i + per] for i in range(0, len(parts), per)]
        with self._snapshot() if one_snapshot and len(chunks) > 1 else contextlib.nullcontext():
            return [row for chunk in chunks
                    for row in self._query(" UNION ALL ".join(p[0] for p in chunk), [a for p in chunk for a in p[1]]).fetchall()]

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[None]:
        """A read-only transaction on one snapshot (within a transaction already open, that one's)."""
        if self.conn._in_transaction:
            yield
            return
        self._query(self.dialect.spell("snapshot"))
        try:
            yield
        finally:
            with contextlib.suppress(Exception):  # (read only: nothing to keep; an error above is the one to report)
                self._query("COMMIT")

    def _cols(self, alias: str | None = None, names: Sequence[str] | None = None) -> str:
        prefix = f"{alias}." if alias else ""
        return ", ".join(prefix + self.q(c) for c in (names or self.pk))

    def _match(self, a: str, b: str) -> str:
        return " AND ".join(f"{a}.{self.q(c)} = {b}.{self.q(c)}" for c in self.pk)

    def _where(self, restriction: Restriction, *given: tuple[str, Any]) -> tuple[str, list]:
        """``restriction``'s condition on the jobs table as ``j``, and each ``(condition,
        value)`` whose value is given (the condition's one ``%s`` bound to it)."""
        cond, args = restriction.sql("j", self.pk, self.q, self._bind)
        for sql, value in given:
            if value:
                cond += f" AND {sql}"
                args.append(value)
        return cond, args

    def _bind(self, name: str, value: Any) -> Any:
        if isinstance(value, uuid.UUID) or (name in self.uuid_cols and isinstance(value, str)):
            return self.dialect.uuid(value)
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
        """The jobs table for a statement on listed keys or a key range (see ``by_key``)."""
        return self.dialect.by_key(self.name)

    def _interval(self, seconds: float) -> str:
        return self.conn.adapter.interval_expr(max(0, int(round(seconds))), "second")

    @property
    def key_source(self) -> tuple[str, tuple[str, ...]]:
        return key_source_of(type(self.table))

    def reads(self, other: "TableSQL") -> bool:
        """Whether this table's key_source reads ``other``: then a key of ``other`` made
        can add keys here (a fan-in's only once every part it needs is there)."""
        return other.target in self.key_source[0]

    def _key_source(self, restriction: Restriction, after: "tuple[TableSQL, Sequence[tuple]] | None" = None) -> tuple[str, list]:
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
