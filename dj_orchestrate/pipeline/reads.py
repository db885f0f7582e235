"""Which tables a table's ``make`` and ``key_source`` code reads, found in its bytecode:
a make that reads another table depends on it, foreign key or not."""

from __future__ import annotations

from types import ModuleType
from typing import Any

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
