"""Load a pipeline and find its auto-populated tables in dependency order.

A pipeline is an importable module path (``my_lab.pipeline``) or a path to a ``.py``
file. Every Computed/Imported table reachable from its namespace is a candidate; the
order and the levels come from DataJoint's own dependency graph.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import json
import os
import re
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from .errors import UsageError


def resolve_spec(spec: str) -> str:
    """The spec a worker on another host or cwd can load: absolute path for files."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        return str(path.resolve())
    return spec


def check_spec(spec: str) -> None:
    """Reject a pipeline that cannot exist before anything connects or writes."""
    path = Path(spec)
    if path.is_dir() and (os.sep in spec or not (path / "__init__.py").is_file()):  # (a package is a module)
        raise UsageError(
            f"pipeline {spec} is a directory, not a .py file",
            "pass the pipeline's .py file, or its module name (e.g. my_lab.pipeline) from the directory above",
        )
    if spec.endswith(".py") or os.sep in spec:
        if not path.is_file():
            raise UsageError(
                f"pipeline file not found: {spec}",
                "pass a path to an existing .py file or an importable module (e.g. my_lab.pipeline)",
            )
        return
    if not all(part.isidentifier() for part in spec.split(".")):
        raise UsageError(
            f"not a module path or .py file: {spec!r}",
            "pass an importable module (e.g. my_lab.pipeline) or a path to a .py file",
        )


def load(spec: str) -> ModuleType:
    """Import the pipeline (this declares its schemas, as DataJoint always does). An error
    while importing it is the user's to fix: one line naming it, not our traceback."""
    check_spec(spec)
    try:
        return _import(spec)
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(f"cannot load pipeline {spec}: {_describe(err)}",
                         "fix the error in the pipeline (dj-orchestrate --debug ... shows the traceback)") from err


def _describe(err: BaseException) -> str:
    """The exception and where in the user's code it happened, in one line."""
    if isinstance(err, SyntaxError):
        return f"SyntaxError: {err.msg} ({err.filename}, line {err.lineno})"
    where = traceback.extract_tb(err.__traceback__)
    place = f" ({where[-1].filename}, line {where[-1].lineno})" if where else ""
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}{': ' + text if text else ''}{place}"


def _import(spec: str) -> ModuleType:
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        path = path.resolve()
        sys.path.insert(0, str(path.parent))
        name = path.stem
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as err:
        if err.name and spec.startswith(err.name):
            raise UsageError(
                f"cannot import pipeline {spec!r}: no module named {err.name!r}",
                "run from the directory that contains it, set PYTHONPATH, or pass a path to a .py file",
            ) from None
        raise


def identity(module: ModuleType) -> tuple[str, list[str]]:
    """What makes two runs runs of the same pipeline: the module's file (a module name
    and a path to its file are the same pipeline) and the schemas its tables live in
    (the same file against another schema is another pipeline)."""
    import datajoint as dj

    schemas = {value.database for value in vars(module).values()
               if isinstance(value, type) and issubclass(value, dj.Table) and getattr(value, "database", None)}
    return str(Path(module.__file__).resolve()) if getattr(module, "__file__", None) else module.__name__, sorted(schemas)


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


MAKE_METHODS = ("make", "make_fetch", "make_compute", "make_insert", "key_source")


def code_references(cls: type) -> set[str]:
    """Tables that the user's ``make`` (three-part too) and ``key_source`` read, resolved
    as Python resolves the names (``_loads``): a global ``G`` or ``mod.G`` is that module's
    table; an attribute (``E.G``, ``self.G``, ``Master.Part``) is that attribute, found on
    the table or class it follows. A part table stands for its master (a table's own parts
    are the table itself); a make that reads another table depends on it, foreign key or not."""
    import datajoint as dj

    found: set[str] = set()
    for klass in cls.__mro__:
        if klass.__module__.startswith("datajoint"):
            continue
        for attr in MAKE_METHODS:
            member = klass.__dict__.get(attr)
            func = getattr(member, "fget", None) or getattr(member, "__func__", None) or member
            code = getattr(func, "__code__", None)
            if code is None:
                continue
            this = code.co_varnames[0] if code.co_argcount else None  # self (or cls)
            for chain in _loads(code, this):
                value: Any = cls if chain[0] is None else func.__globals__.get(chain[0], _MISSING)
                for name in chain[1:]:  # through modules and classes only: an instance's attribute is data
                    if not isinstance(value, (type, ModuleType)):
                        break
                    value = getattr(value, name, _MISSING)
                if isinstance(value, type) and issubclass(value, dj.Part) and getattr(value, "master", None):
                    value = value.master
                if isinstance(value, type) and issubclass(value, dj.Table) and getattr(value, "database", None):
                    found.add(value.full_table_name)
    found.discard(cls.full_table_name)
    return found


_MISSING = object()
_ATTRS = ("LOAD_ATTR", "LOAD_METHOD")


def _loads(code: Any, this: str | None) -> list[tuple[str | None, ...]]:
    """The name chains a code object (and every code object nested in it: comprehensions,
    lambdas, inner functions) loads: a global load (``G``) or ``this`` (``self``, as None)
    and the attributes read from it in a row (``E.G`` -> ('E', 'G'); ``self.G.H`` ->
    (None, 'G', 'H')). Read from the bytecode (``dis``), where a global and an attribute of
    the same name are different instructions."""
    import dis

    chains: list[list] = []
    current: list | None = None
    for ins in dis.get_instructions(code):
        if ins.opname in _ATTRS and current is not None:
            current.append(ins.argval)
            continue
        current = None
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            current = [ins.argval]
        elif this is not None and ins.opname in ("LOAD_FAST", "LOAD_DEREF", "LOAD_CLOSURE") and ins.argval == this:
            current = [None]
        elif this is not None and ins.opname == "LOAD_FAST_LOAD_FAST" and ins.argval[1] == this:
            current = [None]
        if current is not None:
            chains.append(current)
    out = [tuple(c) for c in chains]
    for const in code.co_consts:
        if hasattr(const, "co_code"):
            out += _loads(const, this if this not in const.co_varnames[:const.co_argcount] else None)
    return out


def _custom_key_source(cls: type) -> bool:
    """Whether the user's class defines ``key_source``. Building one costs a heading load
    per parent (7 catalog queries each), for every table, on every command."""
    return any("key_source" in k.__dict__ for k in cls.__mro__ if not k.__module__.startswith("datajoint"))


def _sane_reads(classes: list[type]) -> tuple[dict[str, set[str]], dict[str, list[str]]]:
    """The auto-populated tables each table's code reads (``code_references``), less the
    ones that cannot be gates: a foreign-key descendant of the table (it needs the table's
    rows first), or a read that closes a cycle with the foreign keys and the reads kept so
    far (upstream tables first). Foreign-key order rules; the dropped ones are returned by
    class name, for one warning each."""
    deps = classes[0].connection.dependencies
    by_name = {c.full_table_name: c for c in classes}
    after: dict[str, set[str]] = {n: {a for a in deps.ancestors(n) if a in by_name and a != n} for n in by_name}
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
        descendants = set(deps.descendants(n))
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
    deps = cls.connection.dependencies
    found = {a for a in deps.ancestors(cls.full_table_name) if a in names}
    if _custom_key_source(cls):  # DataJoint's own reads only the primary parents: ancestors already
        from .jobs import key_source_of

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
    needs (key_source shows them), so such a read gates nothing, selected or not."""
    return set(cls.connection.dependencies.ancestors(cls.full_table_name))


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


def parse_keys(text: str | None) -> list[dict[str, Any]] | None:
    """``--key`` JSON: one object or a list of objects with scalar values; None when no
    ``--key`` was given (every key). An empty list selects no key. The values are data:
    they are bound as query parameters, never pasted into SQL."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as err:
        raise UsageError(
            f"--key is not valid JSON: {err}",
            """pass an object or a list of objects, e.g. --key '{"subject": 1, "session": 2}'""",
        ) from None
    keys = value if isinstance(value, list) else [value]
    for key in keys:
        if key == {}:
            raise UsageError("--key {} names no attribute: it would select every key",
                             "leave --key out to mean every key, or name the key's attributes")
        if not isinstance(key, dict):
            raise UsageError(
                f"--key must be an object or a list of objects, got {json.dumps(key)}",
                """e.g. --key '{"session": 2}' or --key '[{"session": 1}, {"session": 2}]'""",
            )
        for name, val in key.items():
            if not isinstance(val, (str, int, float, bool)) or isinstance(val, bool):
                raise UsageError(
                    f"--key value for {name!r} must be a string or a number, got {json.dumps(val)}",
                    "restrict by primary-key attribute values only",
                )
    return keys


def check_key_attributes(keys: list[dict[str, Any]] | None, tables: list[TableInfo]) -> list[dict[str, Any]] | None:
    """Check ``--key`` against the selected tables' key_source headings: an attribute no
    table knows is a typo, a numeric attribute takes numbers only, an integer attribute
    integers in its type's range (else the key would silently match nothing). Returns
    the keys with numeric strings converted."""
    if not keys:
        return keys
    attrs: dict[str, Any] = {}
    for t in tables:
        heading = t.instance().key_source.heading
        attrs.update({name: heading[name] for name in heading.names})
    unknown = sorted({name for key in keys for name in key} - set(attrs))
    if unknown:
        raise UsageError(
            f"--key names unknown attribute {', '.join(map(repr, unknown))}",
            f"attributes of the selected tables' keys: {', '.join(sorted(attrs))}",
        )
    return [{name: _coerce(name, value, attrs[name]) for name, value in key.items()} for key in keys]


# SQL integer types (MySQL and PostgreSQL spellings) and their signed bit widths
_INT_BITS = {"tinyint": 8, "smallint": 16, "int2": 16, "mediumint": 24, "int": 32, "integer": 32, "int4": 32,
             "bigint": 64, "int8": 64, "serial": 32, "bigserial": 64}


def _int_range(attr: Any) -> tuple[int, int] | None:
    match = re.match(r"\s*([a-z0-9]+)(?:\(\d+\))?(\s+unsigned)?", str(attr.sql_type or attr.type).lower())
    bits = _INT_BITS.get(match.group(1)) if match else None
    if bits is None:
        return None
    if match.group(2):
        return 0, 2**bits - 1
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def _coerce(name: str, value: Any, attr: Any) -> Any:
    if not attr.numeric:
        return value
    example = f"e.g. --key '{{\"{name}\": 1}}'"
    if isinstance(value, str):
        try:
            value = int(value) if value.strip().lstrip("-").isdigit() else float(value)
        except ValueError:
            raise UsageError(f"--key value for {name!r} must be a number, got {value!r}", example) from None
    bounds = _int_range(attr)
    if bounds is None:
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise UsageError(f"--key value for {name!r} must be an integer ({attr.type}), got {value!r}", example)
        value = int(value)
    if not bounds[0] <= value <= bounds[1]:
        raise UsageError(f"--key value for {name!r} is out of range for {attr.type}: {value}",
                         f"{name} takes integers from {bounds[0]} to {bounds[1]}")
    return value
