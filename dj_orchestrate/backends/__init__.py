"""Backends launch workers; they never claim keys themselves (see ``jobs``).

Each backend is a module or a package on the shared base (``base``), registered below
once: its class, the pip extra its imports need, and its settings class, which declares
its config section's keys and its command-line options (importable without the extra).
Adding a backend touches its package and this registry.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Callable, NamedTuple

from ..config import Flag, Settings
from ..errors import UsageError
from .base import Backend


class Entry(NamedTuple):
    backend: str  # module:class
    extra: str | None  # the pip extra its imports need
    settings: str  # module:class, importable without the extra


BACKENDS = {
    "local": Entry("dj_orchestrate.backends.local:LocalBackend", None, "dj_orchestrate.backends.local:LocalSettings"),
    "slurm": Entry("dj_orchestrate.backends.slurm.backend:SlurmBackend", "slurm",
                   "dj_orchestrate.backends.slurm.settings:SlurmResources"),
    "dask": Entry("dj_orchestrate.backends.dask.backend:DaskBackend", "dask",
                  "dj_orchestrate.backends.dask.settings:DaskSettings"),
    "kubernetes": Entry("dj_orchestrate.backends.kubernetes.backend:KubernetesBackend", "kubernetes",
                        "dj_orchestrate.backends.kubernetes.settings:KubernetesSettings"),
}


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def settings(name: str) -> type[Settings]:
    """A backend's settings class (its config section's keys, its options)."""
    return _load(BACKENDS[name].settings)


def flags() -> list[tuple[str, Flag]]:
    """Every backend's command-line options, in the registry's order."""
    return [(name, f) for name in BACKENDS for f in settings(name).flags()]


def lazy(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A package's ``__getattr__`` that imports each name's module (``where``) when the
    name is first used: the package's settings then import without the backend's extra."""
    def attribute(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{package}.{where[name]}"), name)
    return attribute


def names() -> str:
    """``local, slurm, dask or kubernetes``: the valid names, for help texts."""
    *first, last = BACKENDS
    return f"{', '.join(first)} or {last}"


def get(name: str) -> type[Backend]:
    """The backend class by name; the error lists the valid names, or names the extra
    to install when the backend's packages are missing."""
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}", f"valid backends: {', '.join(BACKENDS)}")
    path, extra, _ = BACKENDS[name]
    try:
        return _load(path)
    except ModuleNotFoundError as err:
        if extra is None or (err.name or "").startswith("dj_orchestrate"):
            raise
        raise UsageError(f"the {name} backend needs {err.name!r}, which is not installed",
                         f"pip install 'dj-orchestrate[{extra}]'") from None


def maker(job_id: str) -> str | None:
    """Which backend made a reservation's ``backend_job_id``: ``<backend>:<its id>``
    (``dask:…``, ``kubernetes:…``), or SLURM's bare ``123`` / ``123_4``."""
    prefix, sep, _ = job_id.partition(":")
    if sep:
        return prefix if prefix in BACKENDS else None
    return "slurm" if re.fullmatch(r"\d+(_\d+)?", job_id) else None


def ended_jobs(job_ids: set[str]) -> set[str]:
    """Reconcile's hint: which of these backend job ids have ended, each asked of the
    backend that made it (imported only then). A backend whose packages are missing
    gives no hint: the database's own answer (is the owner's connection alive) stands."""
    by_backend: dict[str, set[str]] = {}
    for job_id in job_ids:
        name = maker(job_id)
        if name:
            by_backend.setdefault(name, set()).add(job_id)
    ended: set[str] = set()
    for name, ids in by_backend.items():
        try:
            ended |= get(name).ended_jobs(ids)
        except UsageError:
            continue
    return ended


def hint(tables: list) -> set[str]:
    """Reconcile's hint for these tables (instances): the backend job ids of their
    reserved keys whose jobs have ended."""
    from ..jobs import JobTable
    from .follow import ended_holders

    return ended_holders([JobTable(t) for t in tables], ended_jobs)
