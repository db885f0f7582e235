"""How the commands print: tables, JSON, and the command line that made a file."""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any

import click


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def emit(as_json: bool, value: Any, line: str) -> None:
    """A command's answer: ``value`` as JSON with --json, else ``line`` for people."""
    if as_json:
        emit_json(value)
    else:
        click.echo(line)


def render_table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)



def command_line(ctx: click.Context, skip: tuple[str, ...] = ()) -> str:
    """The command as it was typed, options at their defaults and ``skip`` left out:
    the header of a generated file, saying how to make it again."""
    words: list[str] = []
    parent = ctx
    while parent.parent is not None:
        words.insert(0, parent.info_name or "")
        parent = parent.parent
    words.insert(0, "dj-orchestrate")
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in skip or value in (None, False, ()) or value == param.default:
            continue
        if isinstance(param, click.Argument):
            words.append(value)
            continue
        for item in (value if param.multiple else [value]):
            words += [param.opts[0]] + ([] if param.is_flag else [str(item)])
    return " ".join(shlex.quote(w) for w in words)


def command_name() -> str:
    """How the user can run dj-orchestrate: by name when it is on PATH, else by the path
    of the script beside this Python (after `make demo`, .venv/bin is not on PATH)."""
    import shutil

    script = Path(sys.executable).parent / "dj-orchestrate"
    if shutil.which("dj-orchestrate") or not script.exists():
        return "dj-orchestrate"
    return os.path.relpath(script) if not os.path.relpath(script).startswith("..") else str(script)
