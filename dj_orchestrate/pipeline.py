"""Load a pipeline and find its auto-populated tables in dependency order.

A pipeline is an importable module path (``my_lab.pipeline``) or a path to a ``.py``
file. Every Computed/Imported table reachable from its namespace is a candidate; the
order and the levels come from DataJoint's own dependency graph.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
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
    if spec.endswith(".py") or os.sep in spec:
        if not Path(spec).is_file():
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
    """Import the pipeline (this declares its schemas, as DataJoint always does)."""
    check_spec(spec)
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
        module_spec.loader.exec_module(module)
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


@dataclass(frozen=True)
class TableInfo:
    """One auto-populated table, its place in the dependency order, and its level."""

    cls: type
    name: str
    full_name: str
    order: int
    level: int

    def instance(self) -> Any:
        return self.cls()


def discover(module: ModuleType) -> list[TableInfo]:
    """All auto-populated tables of the pipeline, upstream first. Part tables are made
    by their master's ``make`` and are not listed on their own."""
    import datajoint as dj

    classes: dict[str, type] = {}
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and issubclass(value, (dj.Computed, dj.Imported))
            and value not in (dj.Computed, dj.Imported)
            and getattr(value, "database", None)
        ):
            classes[value.full_table_name] = value
    if not classes:
        return []
    conn = next(iter(classes.values())).connection
    conn.dependencies.load()
    topo = {name: i for i, name in enumerate(conn.dependencies.topo_sort())}
    return _leveled([classes[n] for n in sorted(classes, key=lambda n: topo.get(n, len(topo)))], topo)


def _upstream(cls: type, names: set[str]) -> set[str]:
    """Tables among ``names`` this table waits for: its foreign-key ancestors, and the
    tables a custom ``key_source`` reads (a fan-in that no foreign key shows)."""
    deps = cls.connection.dependencies
    found = {a for a in deps.ancestors(cls.full_table_name) if a in names}
    key_source = cls().key_source
    sql = (key_source() if isinstance(key_source, type) else key_source).make_sql()
    found.update(n for n in names if n in sql)
    found.discard(cls.full_table_name)
    return found


def _leveled(classes: list[type], topo: dict[str, int]) -> list[TableInfo]:
    """Level = 1 + the highest level among upstream tables; listed level by level."""
    names = {c.full_table_name for c in classes}
    upstream = {c.full_table_name: _upstream(c, names) for c in classes}
    levels: dict[str, int] = {}
    while len(levels) < len(classes):
        ready = [n for n in names - set(levels) if upstream[n] <= set(levels)]
        if not ready:  # a cycle through key_source: fall back to dependency order
            ready = sorted(names - set(levels), key=lambda n: topo.get(n, 0))[:1]
        for n in ready:
            levels[n] = 1 + max((levels[u] for u in upstream[n] if u in levels), default=-1)
    infos = [TableInfo(c, c.__name__, c.full_table_name, topo.get(c.full_table_name, 0), levels[c.full_table_name])
             for c in classes]
    return sorted(infos, key=lambda t: (t.level, t.order))


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
    return _leveled([t.cls for t in chosen], {t.full_name: t.order for t in tables})


def levels_of(tables: list[TableInfo]) -> list[list[TableInfo]]:
    """Group tables into dependency levels: a level depends only on earlier ones."""
    out: dict[int, list[TableInfo]] = {}
    for t in tables:
        out.setdefault(t.level, []).append(t)
    return [out[k] for k in sorted(out)]


def parse_keys(text: str | None) -> list[dict[str, Any]]:
    """``--key`` JSON: one object or a list of objects with scalar values. The values
    are data: they are bound as query parameters, never pasted into SQL."""
    if not text:
        return []
    try:
        value = json.loads(text)
    except ValueError as err:
        raise UsageError(
            f"--key is not valid JSON: {err}",
            """pass an object or a list of objects, e.g. --key '{"subject": 1, "session": 2}'""",
        ) from None
    keys = value if isinstance(value, list) else [value]
    for key in keys:
        if not isinstance(key, dict) or not key:
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


def check_key_attributes(keys: list[dict[str, Any]], tables: list[TableInfo]) -> list[dict[str, Any]]:
    """Check ``--key`` against the selected tables' key_source headings: an attribute no
    table knows is a typo, and a numeric attribute takes numbers only. Returns the keys
    with numeric strings converted."""
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


def _coerce(name: str, value: Any, attr: Any) -> Any:
    if not attr.numeric or not isinstance(value, str):
        return value
    try:
        return int(value) if value.strip().lstrip("-").isdigit() else float(value)
    except ValueError:
        raise UsageError(f"--key value for {name!r} must be a number, got {value!r}", f"e.g. --key '{{\"{name}\": 1}}'") from None
