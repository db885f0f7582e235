"""The ``[airflow]`` settings (per table: where its work runs, sharding, the work task's
Airflow arguments) and the checks ``airflow render`` makes before it writes anything."""

from __future__ import annotations

import importlib.metadata
import re
from dataclasses import dataclass
from typing import ClassVar

from ...config import BackendConfig, Settings
from ...errors import UsageError
from .. import BACKENDS, get

EXTRA = "pip install 'dj-orchestrate[airflow]'"
MAX_MAP_LENGTH = 1024  # Airflow's default [core] max_map_length; the runtime also reads the worker's own
MODES = ("worker", *(name for name in BACKENDS if name != "local"))  # worker, or a backend a table is handed to
DAG_ID = re.compile(r"[A-Za-z0-9_.-]{1,250}")
CRON_PRESETS = ("@once", "@continuous", "@hourly", "@daily", "@weekly", "@monthly", "@quarterly", "@yearly")


@dataclass(frozen=True)
class AirflowSettings(Settings, section="airflow"):
    """Per-table Airflow settings: ``[airflow]`` in dj_orchestrate.toml, overridden by a
    table class's ``airflow`` dict, overridden by ``[airflow.tables.<Table>]``."""

    label: ClassVar[str] = "Airflow setting"

    pool: str | None = None  # the Airflow pool the table's work tasks draw from, e.g. "gpu"
    pool_slots: int = 1  # slots of that pool one work task takes
    max_active_tis_per_dag: int | None = None  # most work tasks of the table running at once
    retries: int = 2  # Airflow relaunches of a worker that died (key retries stay in the jobs table)
    retry_delay_s: int = 30
    shard_size: int = 1000  # keys per mapped work task
    max_shards: int = MAX_MAP_LENGTH  # most mapped work tasks per table: beyond it, shards grow
    python: str | None = None  # the lab's Python on the workers (default: the Airflow worker's own)
    mode: str = "worker"  # where work runs: worker (the Airflow worker itself), slurm, dask or kubernetes
    poll_s: int = 30  # seconds between the wait task's looks at the jobs table (modes other than worker)
    wait_timeout_s: int | None = None  # backend modes: fail the wait after this long (a scheduler that never answers)
    timeout: float | None = None  # seconds a make may take, per key (see dj_orchestrate.watchdog)

    def parsed(self, where: str) -> "AirflowSettings":
        if self.mode not in MODES:
            raise UsageError(f"mode {self.mode!r} in {where} is not a mode", f"valid modes: {', '.join(MODES)}")
        for name, low in (("pool_slots", 1), ("retries", 0), ("retry_delay_s", 0), ("shard_size", 1), ("max_shards", 1),
                          ("poll_s", 1)):
            if getattr(self, name) < low:
                raise UsageError(f"{name} in {where} must be at least {low}, got {getattr(self, name)}", f"e.g. {name} = {max(low, 2)}")
        if self.max_shards > MAX_MAP_LENGTH:
            raise UsageError(f"max_shards = {self.max_shards} in {where} exceeds Airflow's max_map_length ({MAX_MAP_LENGTH})",
                             f"use at most {MAX_MAP_LENGTH}: shards grow instead")
        if self.wait_timeout_s is not None and self.wait_timeout_s < 1:
            raise UsageError(f"wait_timeout_s in {where} must be at least 1", "e.g. wait_timeout_s = 86400 (a day)")
        if self.max_active_tis_per_dag is not None and self.max_active_tis_per_dag < 1:
            raise UsageError(f"max_active_tis_per_dag in {where} must be at least 1", "e.g. max_active_tis_per_dag = 4")
        return self


def load_config(path: str | None = None) -> BackendConfig[AirflowSettings]:
    """``[airflow]`` of the config file (see ``dj_orchestrate.config``)."""
    return BackendConfig.load(AirflowSettings, path)


# ------------------------------------------------------------ render-time checks
def require_airflow() -> None:
    """The DAG is for Airflow 3 (``airflow.sdk``): refuse to render one for nothing."""
    try:
        version = importlib.metadata.version("apache-airflow")
    except importlib.metadata.PackageNotFoundError:
        raise UsageError("apache-airflow is not installed, so the DAG could not be checked or run here", EXTRA) from None
    if int(version.split(".")[0]) < 3:
        raise UsageError(f"apache-airflow {version} is too old: the DAG uses airflow.sdk (Airflow 3)", EXTRA)


def check_schedule(schedule: str | None) -> None:
    """A cron expression or preset as Airflow reads it (croniter, Airflow's own parser)."""
    if schedule is None or schedule in CRON_PRESETS:
        return
    from croniter import croniter

    if not croniter.is_valid(schedule):
        raise UsageError(f"--schedule {schedule!r} is not a cron expression",
                         f'e.g. --schedule "0 2 * * *" (02:00 daily) or one of {", ".join(CRON_PRESETS)}')


def check_mode(mode: str) -> None:
    """``worker`` runs in the Airflow worker; the other modes hand work to a backend,
    which must be installed here: the error names its extra."""
    if mode != "worker":
        get(mode)


def default_dag_id(pipeline: str) -> str:
    """``my_lab.pipeline`` → ``my_lab_pipeline``; a file's stem for a path."""
    name = pipeline.rsplit("/", 1)[-1].removesuffix(".py") if pipeline.endswith(".py") else pipeline
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def check_dag_id(dag_id: str) -> str:
    if not DAG_ID.fullmatch(dag_id):
        raise UsageError(f"--dag-id {dag_id!r} is not an Airflow DAG id",
                         "use letters, digits, '_', '.' and '-' (at most 250), e.g. --dag-id nightly_ephys")
    return dag_id
