"""The backends' own options, read from their settings (``config.flag``): declared once,
in the backend's package, for its config section, ``run`` and its render command."""

from __future__ import annotations

from typing import Any, Callable

import click

from .. import backends
from ..config import Flag


def _option(flag: Flag, help: str) -> Callable:
    return click.option(f"--{flag.name.replace('_', '-')}", help=help)


def run_flags(f: Callable) -> Callable:
    """Every backend's options of ``run``, each help prefixed by its backend's name."""
    for name, flag in reversed(backends.flags()):
        f = _option(flag, f"{name}: {flag.help}")(f)
    return f


def render_flags(backend: str) -> Callable[[Callable], Callable]:
    """The options of ``backend``'s render command: those its settings give a render help."""
    def decorate(f: Callable) -> Callable:
        for flag in reversed(backends.settings(backend).flags()):
            if flag.render:
                f = _option(flag, flag.render)(f)
        return f
    return decorate


def pop_flags(params: dict[str, Any]) -> dict[str, Any]:
    """The backends' options out of a command's parameters (the rest stay)."""
    return {flag.name: params.pop(flag.name) for _, flag in backends.flags() if flag.name in params}
