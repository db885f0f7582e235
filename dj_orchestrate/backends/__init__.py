"""Backends launch workers; they never claim keys themselves (see ``jobs``).

Each backend is one short module on the shared base: ``local`` (processes on this
machine) and ``slurm`` (array jobs via submitit).
"""

from __future__ import annotations

import importlib

from ..errors import UsageError
from .base import Backend

BACKENDS = {"local": "dj_orchestrate.backends.local:LocalBackend", "slurm": "dj_orchestrate.backends.slurm:SlurmBackend"}


def get(name: str) -> type[Backend]:
    """The backend class by name; the error lists the valid names."""
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}", f"valid backends: {', '.join(BACKENDS)}")
    module, _, cls = BACKENDS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
