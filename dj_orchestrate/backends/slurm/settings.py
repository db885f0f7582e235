"""``[slurm]`` of the config file: per-table resources, and their one translation to
sbatch's parameters."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, ClassVar

from ...config import BackendConfig, Settings
from ...errors import UsageError

EXTRA_DIRECTIVE = re.compile(r"--[A-Za-z][A-Za-z0-9-]*(=.*)?")
# Arrays of a run are submitted with a begin time this far ahead (--begin) and released
# together once SLURM accepted them all. Not --hold: SLURM accepts a held job that no node
# can ever run (its feasibility is checked only on release), while --begin keeps the check.
GATE = "now+600"


@dataclass(frozen=True)
class SlurmResources(Settings, section="slurm"):
    """Per-table SLURM resources: ``[slurm]`` in dj_orchestrate.toml, overridden by a
    table class's ``slurm`` dict, overridden by ``[slurm.tables.<Table>]``."""

    label: ClassVar[str] = "SLURM resource"

    partition: str | None = None
    time: str | int = "01:00:00"  # minutes, MM:SS, HH:MM:SS or D-HH:MM:SS
    mem: str | None = None  # e.g. "4G"
    cpus_per_task: int = 1
    gpus: int | None = None  # GPUs per node (--gpus-per-node)
    gres: str | None = None  # e.g. "gpu:a100:1"
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    array_parallelism: int = 32  # the %N throttle of each array
    pull_workers: int = 4  # array tasks for tables whose keys appear only upstream
    signal_delay_s: int = 90  # USR2 this long before the time limit
    extra: tuple[str, ...] = ()  # more #SBATCH directives, e.g. "--exclusive", "--mail-type=END"
    setup: tuple[str, ...] = ()  # shell lines before the worker: module load, venv activation
    timeout: float | None = None  # seconds a make may take, per key (see dj_orchestrate.watchdog)

    def parsed(self, where: str) -> "SlurmResources":
        bad = [v for v in self.extra if not EXTRA_DIRECTIVE.fullmatch(v)]
        if bad:
            raise UsageError(f"extra in {where}: {bad[0]!r} is not a long sbatch option",
                             'write each as "--name" or "--name=value", e.g. "--mail-type=END"')
        negative = [f.name for f in dataclasses.fields(self) if isinstance(getattr(self, f.name), int) and getattr(self, f.name) < 0]
        if negative:
            raise UsageError(f"{negative[0]} in {where} must be a non-negative integer, got {getattr(self, negative[0])!r}",
                             f"e.g. {negative[0]} = 2")
        self.minutes()  # the time format
        return self

    def validated(self, where: str) -> "SlurmResources":
        """Checks across keys: a time SLURM reads, and a USR2 notice that comes after the
        task started (else every task would be stopped and requeued as soon as it runs)."""
        if self.signal_delay_s >= self.minutes() * 60:
            raise UsageError(f"signal_delay_s = {self.signal_delay_s} in {where} is not shorter than time = {self.time!r}",
                             "the time-limit notice must come after the task starts: lower signal_delay_s or raise time")
        if self.array_parallelism < 1 or self.pull_workers < 1:
            raise UsageError(f"array_parallelism and pull_workers in {where} must be at least 1", "e.g. pull_workers = 4")
        return self

    def minutes(self) -> int:
        return slurm_minutes(self.time)

    def submitit_parameters(self, job_name: str, dependency: str | None = None, gate: bool = False) -> dict[str, Any]:
        """The one translation to sbatch parameters (submitit's SlurmExecutor names).
        ``gate``: start no earlier than GATE from now (``--begin``), until released."""
        extra: dict[str, Any] = {"begin": GATE} if gate else {}
        for directive in self.extra:
            key, _, value = directive.lstrip("-").partition("=")
            extra[key] = value if value else True
        params = dict(job_name=job_name, time=self.minutes(), cpus_per_task=self.cpus_per_task,
                      array_parallelism=self.array_parallelism, signal_delay_s=self.signal_delay_s,
                      stderr_to_stdout=True, wckey="dj-orchestrate", setup=list(self.setup) or None, additional_parameters=extra or None,
                      partition=self.partition, mem=self.mem, gpus_per_node=self.gpus, gres=self.gres,
                      account=self.account, qos=self.qos, constraint=self.constraint, dependency=dependency)
        return {k: v for k, v in params.items() if v is not None}


def slurm_minutes(time_: str | int) -> int:
    """SLURM's time formats (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S) in whole minutes."""
    days, _, rest = str(time_).strip().rpartition("-")
    parts = rest.split(":")
    if not re.fullmatch(r"\d*", days) or not all(p.isdigit() for p in parts) or len(parts) > 3:
        raise UsageError(f"time {time_!r} is not a SLURM time", 'use minutes, "HH:MM:SS" or "D-HH:MM:SS"')
    values = [int(p) for p in parts]
    if days:  # D-H, D-H:M, D-H:M:S
        h, m, sec = (values + [0, 0])[:3]
        seconds = int(days) * 86400 + h * 3600 + m * 60 + sec
    else:  # M, M:S, H:M:S
        seconds = [lambda m: m * 60, lambda m, s_: m * 60 + s_, lambda h, m, s_: h * 3600 + m * 60 + s_][len(values) - 1](*values)
    return max(1, -(-seconds // 60))


def load_config(path: str | None = None) -> BackendConfig[SlurmResources]:
    """``[slurm]`` of the config file (see ``dj_orchestrate.config``)."""
    return BackendConfig.load(SlurmResources, path)

