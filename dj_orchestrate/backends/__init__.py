"""Backends launch workers; they never claim keys themselves (see ``jobs``).

Each backend is one short module (or, for ``dask``, a package) on the shared base:
``local`` (processes on this machine) and ``slurm`` (array jobs via submitit), plus those
registered below.
"""

from __future__ import annotations

import importlib
import re

from ..errors import UsageError
from .base import Backend

# name: (module:class, the pip extra its imports need)
BACKENDS = {
    "local": ("dj_orchestrate.backends.local:LocalBackend", None),
    "slurm": ("dj_orchestrate.backends.slurm.backend:SlurmBackend", "slurm"),
    "dask": ("dj_orchestrate.backends.dask.backend:DaskBackend", "dask"),
    "kubernetes": ("dj_orchestrate.backends.kubernetes.backend:KubernetesBackend", "kubernetes"),
}


def get(name: str) -> type[Backend]:
    """The backend class by name; the error lists the valid names, or names the extra
    to install when the backend's packages are missing."""
    if name not in BACKENDS:
        raise UsageError(f"unknown backend {name!r}", f"valid backends: {', '.join(BACKENDS)}")
    path, extra = BACKENDS[name]
    module, _, cls = path.partition(":")
    try:
        return getattr(importlib.import_module(module), cls)
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

    ids = {j for t in tables for j in JobTable(t).reserved_backend_ids()}
    return ended_jobs(ids) if ids else set()
