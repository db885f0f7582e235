"""A pipeline's auto-populated tables in dependency order and levels.

Every Computed/Imported table reachable from the pipeline's namespace is a candidate;
the order and the levels come from DataJoint's own dependency graph, custom
``key_source``s and the tables each ``make`` reads (``reads``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import networkx as nx

from ..errors import UsageError
from .reads import code_references


@dataclass(frozen=True)
class TableInfo:
    """One auto-populated table, its place in the dependency order, and its level.

    ``upstream``: the selected tables it must wait for (full names), whatever says so:
    a foreign key, a custom ``key_source``, or code in ``make``/``key_source`` that reads
    them (``hidden``: the class names of those only the code names). Schedulers order by
    ``upstream``. ``outside``: the tables its code reads that are not selected (they gate
    it all the same); ``dropped``: the class names of tables its code reads that were not
    made gates (a foreign-key descendant, or a cycle of gates: ``_sane_reads``)."""

    cls: type
    name: str
    full_name: str
    order: int
    level: int
    upstream: frozenset[str] = frozenset()
    hidden: frozenset[str] = frozenset()
    declared: int = 0
    reads: frozenset[str] = frozenset()
    outside: tuple[type, ...] = ()
    dropped: tuple[str, ...] = ()

    def instance(self) -> Any:
        return self.cls()


def auto_populated(module: ModuleType) -> dict[str, type]:
    """The pipeline's auto-populated table classes by full name, in the order the module
    defines them; no database call beyond DataJoint's own on import. Part tables are made
    by their master's ``make`` and are not listed on their own."""
    import datajoint as dj

    return {
        value.full_table_name: value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, (dj.Computed, dj.Imported))
        and value not in (dj.Computed, dj.Imported)
        and getattr(value, "database", None)
    }


def discover(module: ModuleType) -> list[TableInfo]:
    """All auto-populated tables of the pipeline (``auto_populated``), upstream first."""
    classes = auto_populated(module)
    if not classes:
        return []
    declared = {name: i for i, name in enumerate(classes)}
    conn = next(iter(classes.values())).connection
    conn.dependencies.load()
    topo = {name: i for i, name in enumerate(conn.dependencies.topo_sort())}
    ordered = [classes[n] for n in sorted(classes, key=lambda n: topo.get(n, len(topo)))]
    reads, dropped = _sane_reads(ordered)
    return _leveled(ordered, topo, declared, reads, dropped, classes)


def _sane_reads(classes: list[type]) -> tuple[dict[str, set[str]], dict[str, list[str]]]:
    """The auto-populated tables each table's code reads (``code_references``), less the
    ones that cannot be gates: a foreign-key descendant of the table (it needs the table's
    rows first), or a read that closes a cycle with the foreign keys and the reads kept so
    far (upstream tables first). Foreign-key order rules; the dropped ones are returned by
    class name, for one warning each."""
    deps = classes[0].connection.dependencies
    by_name = {c.full_table_name: c for c in classes}
    after: dict[str, set[str]] = {n: {a for a in ancestors(by_name[n]) if a in by_name and a != n} for n in by_name}
    reads: dict[str, set[str]] = {}
    dropped: dict[str, list[str]] = {}

    def waits_for(a: str, b: str) -> bool:  # a runs after b, through foreign keys and kept reads
        seen, todo = set(), [a]
        while todo:
            x = todo.pop()
            if x == b:
                return True
            if x not in seen:
                seen.add(x)
                todo += after[x]
        return False

    for c in classes:
        n = c.full_table_name
        reads[n], dropped[n] = set(), []
        descendants = nx.descendants(deps, n) | {n}
        for r in sorted(code_references(c) & set(by_name), key=list(by_name).index):
            if r in descendants or waits_for(r, n):
                dropped[n].append(by_name[r].__name__)
            else:
                reads[n].add(r)
                after[n].add(r)
    return reads, dropped


def _upstream(cls: type, names: set[str], reads: set[str]) -> tuple[set[str], set[str]]:
    """Tables among ``names`` this table waits for, and of those the ones no foreign key
    and no ``key_source`` shows: its foreign-key ancestors, the tables a custom
    ``key_source`` reads (a fan-in), and the tables its code reads."""
    from ..jobs import custom_key_source, key_source_of  # (here: importing jobs imports DataJoint)

    found = {a for a in ancestors(cls) if a in names}
    if custom_key_source(cls):  # DataJoint's own reads only the primary parents: ancestors already
        sql = key_source_of(cls)[0]
        found.update(n for n in names if n in sql)
    found.discard(cls.full_table_name)
    hidden = (reads & names) - found
    return found | hidden, hidden


def _leveled(classes: list[type], topo: dict[str, int], declared: dict[str, int],
             reads: dict[str, set[str]], dropped: dict[str, list[str]], known: dict[str, type]) -> list[TableInfo]:
    """Level = 1 + the highest level among upstream tables; listed level by level."""
    names = {c.full_table_name for c in classes}
    upstream, hidden = {}, {}
    for c in classes:
        upstream[c.full_table_name], hidden[c.full_table_name] = _upstream(c, names, reads[c.full_table_name])
    levels: dict[str, int] = {}
    while len(levels) < len(classes):
        ready = [n for n in names - set(levels) if upstream[n] <= set(levels)]
        if not ready:  # a cycle through key_source or make's reads: fall back to dependency order
            ready = sorted(names - set(levels), key=lambda n: topo.get(n, 0))[:1]
        for n in ready:
            levels[n] = 1 + max((levels[u] for u in upstream[n] if u in levels), default=-1)
    class_name = {c.full_table_name: c.__name__ for c in classes}
    infos = [TableInfo(c, c.__name__, c.full_table_name, topo.get(c.full_table_name, 0), levels[c.full_table_name],
                       frozenset(upstream[c.full_table_name]), frozenset(class_name[h] for h in hidden[c.full_table_name]),
                       declared.get(c.full_table_name, 0), frozenset(reads[c.full_table_name]),
                       tuple(known[r] for r in sorted(reads[c.full_table_name] - names - ancestors(c))),
                       tuple(dropped[c.full_table_name]))
             for c in classes]
    return sorted(infos, key=lambda t: (t.level, t.order))


def ancestors(cls: type) -> set[str]:
    """A table's foreign-key ancestors: a make that reads one reads rows its key already
    needs (key_source shows them), so such a read gates nothing, selected or not. With
    the table itself, as DataJoint's ``ancestors``, as a set: that one sorts them each
    time (on 200 tables, 1 s of every command)."""
    deps = cls.connection.dependencies
    deps.load(force=False)
    return nx.ancestors(deps, cls.full_table_name) | {cls.full_table_name}


def in_declared_order(tables: list[TableInfo]) -> list[TableInfo]:
    """``run --order declared``: one table at a time, in the order the module defines
    them, each after all before it, for pipelines whose scripts relied on that order
    (a make that reads tables in ways no code analysis sees)."""
    ordered = sorted(tables, key=lambda t: t.declared)
    return [dataclasses.replace(t, level=i, upstream=frozenset(u.full_name for u in ordered[:i]))
            for i, t in enumerate(ordered)]


def select(tables: list[TableInfo], names: tuple[str, ...] | list[str]) -> list[TableInfo]:
    """Tables named by class name, in dependency order; no names means all.
    Levels are recomputed among the selected tables only (upstream is not implied)."""
    if not tables:
        raise UsageError(
            "the pipeline defines no Computed or Imported tables",
            "check that the module declares its tables with @schema",
        )
    if not names:
        return tables
    known = {t.name: t for t in tables}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(
            f"unknown table {', '.join(map(repr, unknown))}",
            f"auto-populated tables in this pipeline: {', '.join(known)}",
        )
    chosen = [t for t in tables if t.name in set(names)]
    return _leveled([t.cls for t in chosen], {t.full_name: t.order for t in tables},
                    {t.full_name: t.declared for t in tables}, {t.full_name: set(t.reads) for t in tables},
                    {t.full_name: list(t.dropped) for t in tables}, {t.full_name: t.cls for t in tables})


def levels_of(tables: list[TableInfo]) -> list[list[TableInfo]]:
    """Group tables into dependency levels: a level depends only on earlier ones."""
    out: dict[int, list[TableInfo]] = {}
    for t in tables:
        out.setdefault(t.level, []).append(t)
    return [out[k] for k in sorted(out)]
