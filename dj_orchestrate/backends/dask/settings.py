"""``[dask]`` and ``[dask.slurm]`` of the config file: what a run asks of the cluster, and
per table what a table asks for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ...config import BackendConfig, Flag, Settings, flag
from ...errors import UsageError
from ..slurm.settings import slurm_minutes

CLUSTERS = ("local", "slurm", "cuda")
CLUSTER_WIDE = ("scheduler", "connect_timeout", "worker_resources", "forward_env", "slurm")


@dataclass(frozen=True)
class DaskSlurm(Settings):
    """``[dask.slurm]``: the dask-jobqueue ``SLURMCluster`` that ``--cluster slurm`` starts.
    Each SLURM job is one Dask worker; ``lifetime`` (default: ``walltime`` less 5
    minutes) retires it before the walltime kill, staggered so jobs do not end together."""

    label: ClassVar[str] = "Dask SLURM setting"

    queue: str | None = None  # the partition
    account: str | None = None
    cores: int = 1  # threads per job: pull slots each job offers
    memory: str = "4GB"
    walltime: str = "01:00:00"
    max_jobs: int = 4  # the most SLURM jobs at once; fewer when there are fewer slots
    job_extra_directives: tuple[str, ...] = ()  # e.g. "--gres=gpu:1", "--qos=long"
    job_script_prologue: tuple[str, ...] = ()  # shell lines before the worker: module load, venv
    lifetime: str | None = None  # e.g. "55m"; Dask's own time format
    lifetime_stagger: str = "2m"
    interface: str | None = None  # network interface the scheduler and workers listen on
    log_directory: str | None = None  # default: the run's log folder

    def parsed(self, where: str) -> "DaskSlurm":
        slurm_minutes(self.walltime)
        if self.cores < 1 or self.max_jobs < 1:
            raise UsageError(f"cores and max_jobs in {where} must be at least 1", "e.g. max_jobs = 4")
        return self

    def worker_lifetime(self) -> str:
        if self.lifetime:
            return self.lifetime
        minutes = slurm_minutes(self.walltime)
        return f"{max(minutes // 2, minutes - 5) * 60}s"


@dataclass(frozen=True)
class DaskSettings(Settings, section="dask"):
    """``[dask]``, and per table ``[dask.tables.X]`` or a class's ``dask = {...}``
    (only ``resources``, ``pull_workers`` and ``timeout``; the rest are one per cluster)."""

    label: ClassVar[str] = "Dask setting"

    extra_flags: ClassVar[tuple[Flag, ...]] = (
        Flag("cluster", "start a cluster for this run instead: local, slurm (dask-jobqueue) or cuda (dask-cuda)."),)

    scheduler: str | None = flag(None, "the scheduler's address (default: [dask] scheduler, DASK_SCHEDULER_ADDRESS).")
    connect_timeout: float = 5.0  # seconds to reach the scheduler before giving up (exit 2)
    resources: dict[str, Any] = field(default_factory=dict)  # per table, e.g. { GPU = 1 }
    pull_workers: int = 0  # tasks per table group and level; 0: one per worker thread that can run it
    worker_resources: dict[str, Any] = field(default_factory=dict)  # what --cluster local/slurm workers offer
    forward_env: tuple[str, ...] = ()  # more variables (glob patterns) sent to the workers besides DJ_*, DJO_*
    slurm: dict[str, Any] = field(default_factory=dict)  # [dask.slurm], see DaskSlurm
    timeout: float | None = None  # seconds a make may take, per key (see dj_orchestrate.watchdog)

    def parsed(self, where: str) -> "DaskSettings":
        for name in ("resources", "worker_resources"):
            bad = {k: v for k, v in getattr(self, name).items()
                   if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0}
            if bad:
                raise UsageError(f"{name} in {where} must map resource names to positive numbers, got {bad!r}",
                                 f"e.g. {name} = {{ GPU = 1 }}")
        if self.pull_workers < 0:
            raise UsageError(f"pull_workers in {where} must not be negative", "e.g. pull_workers = 4 (0: one per worker thread)")
        if self.slurm:
            DaskSlurm.build(self.slurm, where[:-1] + ".slurm]" if where.endswith("]") else f"{where} slurm")
        return self

    def slurm_settings(self) -> DaskSlurm:
        return DaskSlurm.build(self.slurm, "[dask.slurm]")


def load_config(path: str | None = None) -> BackendConfig[DaskSettings]:
    """``[dask]`` of the config file. A table section may only set what a table can ask for."""
    config = BackendConfig.load(DaskSettings, path)
    for name, values in config.tables.items():
        wide = sorted(set(values) & set(CLUSTER_WIDE))
        if wide:
            raise UsageError(f"{wide[0]} in {config.source} [dask.tables.{name}] is a setting of the whole cluster",
                             "set it in [dask]; a table may set resources and pull_workers")
    return config
