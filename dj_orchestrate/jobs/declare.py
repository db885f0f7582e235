"""Declaring a jobs table: DataJoint's own declaration, then dj-orchestrate's columns and
(PostgreSQL) the claim index; and what columns a jobs table has now."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Sequence

from datajoint.errors import AccessError

from ..errors import UsageError
from .model import EXTRA_COLUMNS
from .sql import TableSQL

# Per process and table class: its jobs table's columns once complete, and whether this
# process has ensured that jobs table (catalog queries each; columns are never dropped).
_COLUMNS: dict[type, frozenset[str]] = {}
_ENSURED: set[type] = set()
COLUMNS_SQL = "SELECT table_name, column_name FROM information_schema.columns WHERE table_schema = %s AND table_name IN ({})"


@contextlib.contextmanager
def _declaring(action: str, privilege: str) -> Iterator[None]:
    """A declaration that another process may make first (then it is made), and that the
    database may refuse for lack of a privilege: say which, exit 2."""
    try:
        yield
    except AccessError as err:
        detail = next((str(a) for a in err.args[1:2] if a), str(err)).splitlines()[0]
        raise UsageError(
            f"the database user may not {action} ({detail})",
            f"grant the {privilege} privilege on that schema, or run this once as a user who has it",
        ) from None
    except Exception as err:  # another process made it first (workers that start together race)
        if "uplicate" not in str(err) and "exists" not in str(err):
            raise


class Declared(TableSQL):
    """A jobs table that may not exist yet, or lack dj-orchestrate's columns."""

    @property
    def supported(self) -> bool:
        """DataJoint keys a jobs table by the primary-key attributes that come from
        foreign keys; a table with none (a custom ``key_source`` over its own attributes)
        cannot have one: it is made under a lock instead (``serial``)."""
        return bool(self.pk)

    def _serial(self) -> Any:
        """This table as ``serial`` serves it, for one that cannot have a jobs table."""
        from ..serial import SerialTable

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
            found = columns_of([self])[0]
            if cls not in _COLUMNS:  # (not complete: not remembered)
                return found
        return _COLUMNS[cls]

    def _remember(self, found: frozenset[str]) -> bool:
        """Remember the columns found, once complete; whether they were."""
        if found and set(EXTRA_COLUMNS) <= found:
            _COLUMNS[type(self.table)] = found
            return True
        return False

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
            with _declaring(f"create the jobs table {self.name}", "CREATE"):
                _ = self.table.jobs  # DataJoint declares ~~table on first access
            have = self.columns
        for column, types in EXTRA_COLUMNS.items():
            if column not in have:
                with _declaring(f"add the column {column!r} to {self.name}", "ALTER"):
                    self._query(f"ALTER TABLE {self.name} ADD COLUMN {self.q(column)} {self.dialect.column_type(types)}")
        index = self.dialect.claim_index(self)
        if index is not None and not _indexed([(self, index[0])]):
            with _declaring(f"create an index on {self.name}", "owner (CREATE INDEX)"):
                self._query(index[1])
        _COLUMNS[type(self.table)] = frozenset(have | set(EXTRA_COLUMNS))  # (complete now: no need to ask again)
        _ENSURED.add(type(self.table))


def _catalog(sql: str, names: Sequence[tuple[TableSQL, str]]) -> list[tuple[str, tuple]]:
    """(schema, row) of the catalog query ``sql`` (its ``IN ({})`` filled with these
    names) in one query per schema: a catalog query per table cost 7 ms on PostgreSQL,
    and a UNION ALL of them as much again in planning."""
    by_schema: dict[str, list[str]] = {}
    for jt, name in names:
        by_schema.setdefault(jt.schema, []).append(name)
    return [(schema, row) for schema, wanted in by_schema.items()
            for row in names[0][0]._query(sql.format(", ".join(["%s"] * len(wanted))), [schema, *wanted]).fetchall()]


def columns_of(jts: Sequence[Declared]) -> list[frozenset[str]]:
    """The columns each of these jobs tables has now (empty: not declared); those
    complete are remembered (``columns`` then asks no more)."""
    found: dict[tuple[str, str], set[str]] = {}
    for schema, (table, column) in _catalog(COLUMNS_SQL, [(jt, jt.jobs_name) for jt in jts]):
        found.setdefault((schema, table), set()).add(column)
    have = [frozenset(found.get((jt.schema, jt.jobs_name), ())) for jt in jts]
    for jt, columns in zip(jts, have):
        jt._remember(columns)
    return have


def read_columns(jts: Sequence[Any]) -> list[frozenset[str]]:
    """The columns of those of these jobs tables not known yet, read at once: before a
    statement over many tables asks each whether it is declared. Returns each one's
    columns now (empty: not declared, or none possible), which a caller may use instead
    of asking ``columns`` again: of a table not declared or declared by stock DataJoint
    nothing is remembered, and ``columns`` reads the catalog again."""
    can = [isinstance(jt, Declared) and jt.supported for jt in jts]
    todo = [jt for jt, c in zip(jts, can) if c and type(jt.table) not in _COLUMNS]
    found = dict(zip(map(id, todo), columns_of(todo))) if todo else {}
    return [found[id(jt)] if id(jt) in found else _COLUMNS.get(type(jt.table), frozenset()) if c else frozenset()
            for jt, c in zip(jts, can)]


def _indexed(names: Sequence[tuple[TableSQL, str]]) -> set[tuple[str, str]]:
    """(schema, name) of the claim indexes of these that exist."""
    return {(schema, row[0]) for schema, row in _catalog(names[0][0].dialect.indexes, names)} if names else set()


def ensure_all(jts: Sequence[Any], declare: bool = True) -> None:
    """``ensure`` each of these jobs tables (with ``declare`` false: only those that
    exist), reading all of their columns and, on PostgreSQL, all of their claim indexes
    in a catalog query per schema, instead of a statement or two per table: the start of
    every command and worker on a wide pipeline. Only what is missing is then declared,
    one by one."""
    todo = [jt for jt in jts if isinstance(jt, Declared) and jt.supported and type(jt.table) not in _ENSURED]
    if not todo:
        return
    indexes = [jt.dialect.claim_index(jt) for jt in todo]
    indexed = _indexed([(jt, index[0]) for jt, index in zip(todo, indexes) if index is not None])
    for jt, have, index in zip(todo, columns_of(todo), indexes):
        if type(jt.table) in _COLUMNS and (index is None or (jt.schema, index[0]) in indexed):
            _ENSURED.add(type(jt.table))
        elif declare or have:
            jt.ensure()
