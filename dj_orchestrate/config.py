"""One config file for every backend: ``dj_orchestrate.toml`` (or ``--config FILE``), else
``[tool.dj_orchestrate]`` in ``pyproject.toml``.

Each backend declares its settings as a frozen dataclass (a :class:`Settings`) and names
its section (``[local]``, ``[slurm]``, ``[dask]``, ``[kubernetes]``, ``[airflow]``); ``[run]``
routes tables to backends and ``[serve]`` holds ``serve``'s defaults. Loading, type
checks, unknown-key errors that list the valid keys, and per-table overrides live here
once, so a backend module only says what its keys mean. A table's settings are, from
weakest to strongest: the section's defaults, the table class's own attribute named
after the section (``slurm = {...}``, ``dask = {"resources": {"GPU": 1}}``), then
``[<section>.tables.<Table>]``. Every backend's section has ``timeout`` (see ``timeouts``).
"""

from __future__ import annotations

import dataclasses
import json
import re
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from .errors import UsageError

CONFIG_FILE = "dj_orchestrate.toml"
SECTIONS: set[str] = set()  # the top-level sections, each declared by its Settings subclass

S = TypeVar("S", bound="Settings")


def read(path: str | None) -> tuple[dict[str, Any], str]:
    """The whole config (``{}`` when there is none) and where it came from. A top-level
    section no settings class declares is a typo, and says so (each backend's package
    declares its own: ``class SlurmResources(Settings, section="slurm")``; the commands
    import every one of them, as the options they make)."""
    candidates = [Path(path)] if path else [Path(CONFIG_FILE), Path("pyproject.toml")]
    for candidate in candidates:
        if not candidate.is_file():
            if path:
                raise UsageError(f"config file not found: {path}", f"create it, e.g. from slurm/{CONFIG_FILE}.example")
            continue
        try:
            data = tomllib.loads(candidate.read_text())
        except tomllib.TOMLDecodeError as err:
            raise UsageError(f"{candidate} is not valid TOML: {err}", "fix the file's syntax") from None
        if candidate.name == "pyproject.toml":
            data = data.get("tool", {}).get("dj_orchestrate", {})
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise UsageError(f"unknown section {', '.join(f'[{u}]' for u in unknown)} in {candidate}",
                             f"valid sections: {', '.join(f'[{s}]' for s in sorted(SECTIONS))}")
        return data, str(candidate)
    return {}, "defaults"


def dumps(data: dict[str, dict[str, Any]]) -> str:
    """A config (as ``read`` returns it) as TOML again: what a rendered Kubernetes
    ConfigMap hands the pods. Each section and each ``[<section>.tables.<Table>]`` under
    a header, their values inline (strings, numbers, booleans, lists and tables)."""
    blocks = []
    for name, section in data.items():
        tables = section.get("tables", {})
        blocks.append(_block([name], {k: v for k, v in section.items() if k != "tables"}))
        blocks += [_block([name, "tables", table], values) for table, values in tables.items()]
    return "\n".join(blocks)


def _block(path: list[str], values: dict[str, Any]) -> str:
    return "".join([f"[{'.'.join(map(_key, path))}]\n", *(f"{_key(k)} = {_value(v)}\n" for k, v in values.items())])


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _value(value: Any) -> str:
    """JSON's strings, numbers and booleans are TOML's; lists and tables differ in their punctuation."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + " }" if value else "{}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(_value, value)) + "]"
    return json.dumps(value, ensure_ascii=False)


@dataclass(frozen=True)
class Flag:
    """A backend's command-line option: ``run --NAME``, its help after ``<backend>: ``,
    and where ``render`` is set, its render command's option with that help."""

    name: str
    help: str
    render: str | None = None


def flag(default: Any, help: str, render: str | None = None) -> Any:
    """A settings field that is also a command-line option (``Flag``): declared once."""
    return field(default=default, metadata={"flag": (help, render)})


@dataclass(frozen=True)
class Settings:
    """Base of a backend's settings. Subclasses are frozen dataclasses whose fields have
    defaults and plain types (str, int, float, bool, ``X | None``, ``tuple[str, ...]``,
    ``dict[str, ...]``, ``tuple[dict, ...]``); ``label`` names them in messages."""

    label: ClassVar[str] = "setting"
    section: ClassVar[str] = ""  # its top-level section of the config file ("": part of one, e.g. [dask.slurm])
    extra_flags: ClassVar[tuple[Flag, ...]] = ()  # options of `run` that are no config key (dask's --cluster)

    def __init_subclass__(cls, section: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if section:
            cls.section = section
            SECTIONS.add(section)

    @classmethod
    def flags(cls) -> tuple[Flag, ...]:
        """The backend's command-line options: its fields declared with ``flag``, then ``extra_flags``."""
        return tuple(Flag(f.name, *f.metadata["flag"]) for f in dataclasses.fields(cls) if "flag" in f.metadata) + cls.extra_flags

    @classmethod
    def build(cls: type[S], values: dict[str, Any], where: str) -> S:
        """Settings from a TOML table, every key and type checked (a mistake names the
        key, the place and, for an unknown key, every valid one)."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise UsageError(f"unknown {cls.label} {', '.join(map(repr, unknown))} in {where}",
                             f"valid keys: {', '.join(names)}")
        hints = typing.get_type_hints(cls)
        clean = {name: _check(name, value, hints[name], where) for name, value in values.items()}
        settings = dataclasses.replace(cls(), **clean).parsed(where)
        timeout = getattr(settings, "timeout", None)
        if timeout is not None and not 0 < timeout < float("inf"):
            raise UsageError(f"timeout in {where} must be a positive number of seconds, got {timeout!r}", "e.g. timeout = 3600")
        return settings

    def merged(self: S, values: dict[str, Any], where: str) -> S:
        """These settings with ``values`` on top (checked as a whole afterwards)."""
        override = type(self).build(values, where)
        return dataclasses.replace(self, **{k: getattr(override, k) for k in values})

    def parsed(self: S, where: str) -> S:
        """Checks of single values beyond their type (a time format, a directive's
        syntax); a subclass raises UsageError naming ``where``."""
        return self

    def validated(self: S, where: str) -> S:
        """Checks across keys, on a table's resolved settings only (a table may override
        one key and inherit the other)."""
        return self


def _check(name: str, value: Any, hint: Any, where: str) -> Any:
    """``value`` as the field's type wants it, or a UsageError with an example."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):  # X | None
        inner = [a for a in args if a is not type(None)]
        return _check(name, value, inner[0], where) if len(inner) == 1 else value
    if origin is tuple:  # tuple[str, ...] / tuple[dict, ...] from a TOML list
        item = args[0] if args else Any
        if not isinstance(value, list) or not all(_is(v, item) for v in value):
            kind = "tables" if item is dict or typing.get_origin(item) is dict else "strings"
            raise UsageError(f"{name} in {where} must be a list of {kind}, got {value!r}", f'e.g. {name} = [...]')
        return tuple(value)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise UsageError(f"{name} in {where} must be a table, got {value!r}", f'e.g. {name} = {{ key = "value" }}')
        return dict(value)
    if not _is(value, hint):
        example = {int: "2", float: "1.5", bool: "true", str: '"..."'}.get(hint, "...")
        article = "an" if hint is int else "a"
        kind = {int: "integer", float: "number", bool: "boolean", str: "string"}.get(hint, str(hint))
        raise UsageError(f"{name} in {where} must be {article} {kind}, got {value!r}", f"e.g. {name} = {example}")
    return float(value) if hint is float else value


def _is(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if hint is dict or typing.get_origin(hint) is dict:
        return isinstance(value, dict)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


@dataclass
class BackendConfig(Generic[S]):
    """One backend's section: defaults, per-table overrides, and where they came from."""

    section: str
    defaults: S
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)
    source: str = "defaults"

    @classmethod
    def load(cls, settings: type[S], path: str | None = None) -> "BackendConfig[S]":
        section = settings.section
        data, source = read(path)
        values = dict(data.get(section, {}))
        tables = values.pop("tables", {})
        if not isinstance(tables, dict) or not all(isinstance(v, dict) for v in tables.values()):
            raise UsageError(f"[{section}.tables] in {source} must hold one table per class name",
                             f"e.g. [{section}.tables.SpikeSorting]")
        config = cls(section, settings.build(values, f"{source} [{section}]"), tables, source)
        for name, table_values in tables.items():
            settings.build(table_values, f"{source} [{section}.tables.{name}]")
        return config

    def for_table(self, info: Any) -> S:
        """What one table asks for: defaults < the class's attribute < [section.tables.X]."""
        resolved = self.defaults
        own = getattr(info.cls, self.section, None)
        if isinstance(own, dict):
            resolved = resolved.merged(own, f"{info.name}.{self.section}")
        if info.name in self.tables:
            resolved = resolved.merged(self.tables[info.name], f"{self.source} [{self.section}.tables.{info.name}]")
        return resolved.validated(f"the {self.section} settings of {info.name} ({self.source})")

    def unknown_tables(self, names: set[str]) -> list[str]:
        """``[section.tables.X]`` entries that name no table of the pipeline (typos)."""
        return sorted(set(self.tables) - names)


def timeouts(given: dict[str, float], config: BackendConfig | None, infos: list[Any]) -> dict[str, float]:
    """Each table's make timeout, in seconds (tables without one left out): the command
    line's ``--timeout TABLE=N``, else its ``--timeout N``, else the backend's config for
    that table. The command line wins: it is what the user asked for this run."""
    out = {}
    for info in infos:
        seconds = given.get(info.name, given.get(""))
        if seconds is None and config is not None:
            seconds = getattr(config.for_table(info), "timeout", None)
        if seconds is not None:
            out[info.name] = seconds
    return out
