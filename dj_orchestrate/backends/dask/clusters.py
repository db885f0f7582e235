"""The clusters ``--cluster`` starts for a run: a local one, dask-cuda's, or SLURM jobs
through dask-jobqueue."""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator

import distributed

from ...errors import UsageError
from ..base import RunRequest
from .settings import DaskSettings


def start(kind: str | None, defaults: DaskSettings, request: RunRequest) -> Any:
    """The cluster ``--cluster <kind>`` starts for this run (None without one: a scheduler was given)."""
    if kind == "local":
        return distributed.LocalCluster(
            n_workers=request.workers, threads_per_worker=1, processes=True, dashboard_address=":0",
            resources=dict(defaults.worker_resources) or None, silence_logs=40)
    if kind == "cuda":
        LocalCUDACluster = cluster_class(kind)
        resources = {"GPU": 1, **defaults.worker_resources}
        return LocalCUDACluster(dashboard_address=":0", resources=resources, silence_logs=40)
    if kind == "slurm":
        return slurm_cluster(defaults, request)
    return None


def slurm_cluster(defaults: DaskSettings, request: RunRequest) -> Any:
    SLURMCluster = cluster_class("slurm")
    s = defaults.slurm_settings()
    args = ["--lifetime", s.worker_lifetime(), "--lifetime-stagger", s.lifetime_stagger]
    if defaults.worker_resources:
        args += ["--resources", ",".join(f"{k}={v}" for k, v in defaults.worker_resources.items())]
    cluster = SLURMCluster(
        cores=s.cores, processes=1, memory=s.memory, walltime=s.walltime, queue=s.queue, account=s.account,
        job_name=f"djo-{request.run_id}", job_extra_directives=list(s.job_extra_directives),
        job_script_prologue=list(s.job_script_prologue), worker_extra_args=args, interface=s.interface,
        log_directory=s.log_directory or str(request.log_dir / "slurm"), python=sys.executable,
        scheduler_options={"dashboard_address": ":0"})
    return cluster


def cluster_class(kind: str) -> Any:
    """The class that ``--cluster <kind>`` starts, or which extra to install for it."""
    if kind == "local":
        return distributed.LocalCluster
    module, name, package, extra = {"slurm": ("dask_jobqueue", "SLURMCluster", "dask-jobqueue", "dask"),
                                     "cuda": ("dask_cuda", "LocalCUDACluster", "dask-cuda", "cuda")}[kind]
    try:
        return getattr(__import__(module), name)
    except ModuleNotFoundError:
        raise UsageError(f"--cluster {kind} needs {package}, which is not installed",
                         f"pip install 'dj-orchestrate[{extra}]'") from None


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """distributed logs every connection and closing comm; the user wants our words."""
    import logging

    loggers = [logging.getLogger(n) for n in ("distributed", "tornado", "asyncio")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)
