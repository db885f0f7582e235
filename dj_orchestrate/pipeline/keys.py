"""``--key``: the JSON parsed, and checked against the selected tables' key attributes
(names, numbers, integer ranges)."""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import UsageError
from .tables import TableInfo


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
