"""What every backend shares: the run request, the worker command line, the driver's
level-by-level loop helpers."""

from __future__ import annotations

import shlex
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..db import Target
from ..jobs import JobTable, Restriction
from ..pipeline import TableInfo
from ..worker import Settings


@dataclass
class RunRequest:
    """Everything a backend needs to launch workers for one run."""

    pipeline: str
    tables: list[TableInfo]
    restriction: Restriction
    target: Target
    worker: Settings
    run_id: str
    log_dir: Path
    workers: int = 4
    shard_size: int | None = None
    shards: int | None = None
    wait: bool = True
    progress: bool = True
    key_json: str | None = None  # the --key restriction, for workers that enqueue


SUBMITTED = 3  # run() returned without waiting: the CLI exits 0 and says "submitted"


class Backend(ABC):
    """Launches workers for a run and reports how it ended (an exit code).

    ``ended_jobs`` answers, for reconcile, which of the given backend job ids are no
    longer running: a hint on top of the jobs table, never a replacement for it."""

    name: ClassVar[str]

    def check(self, tables: list[TableInfo], embedded: bool = False, wait: bool = False) -> None:
        """Refuse, before anything is written, a run this backend cannot do."""

    @abstractmethod
    def run(self, request: RunRequest) -> int:
        """Launch (and, with ``request.wait``, follow) the run: 0 ok, 1 keys failed,
        130 interrupted, SUBMITTED when it returned without waiting."""

    def describe(self, run: dict) -> str:
        """What the scheduler says about a run, for ``status`` (a hint, not the truth)."""
        return ""

    def ended_jobs(self, job_ids: set[str]) -> set[str]:
        return set()


def worker_command(request: RunRequest, tables: list[TableInfo], shard_index: int | None = None,
                   fixed_shard: bool = False) -> list[str]:
    """The ``dj-orchestrate work`` command line every backend runs, one per worker."""
    s = request.worker
    cmd = [sys.executable, "-m", "dj_orchestrate", "work", request.pipeline]
    for t in tables:
        cmd += ["--table", t.name]
    cmd += ["--run-id", request.run_id, "--max-batch", str(s.max_batch), "--grace", str(s.grace),
            "--retries", str(s.policy.retries), "--backoff", str(s.policy.backoff),
            "--max-attempts", str(s.policy.max_attempts)]
    if shard_index is not None:
        cmd += ["--shard-index", str(shard_index)]
    if fixed_shard:
        cmd += ["--fixed-shard"]
    return cmd


def render_command(cmd: list[str]) -> str:
    return " ".join(shlex.quote(c) for c in cmd)


def outcome(run_id: str) -> int:
    """1 when any worker of the run recorded a failed key, else 0."""
    from .. import ledger

    return 1 if any(s["keys_failed"] for s in ledger.shards_of(run_id)) else 0


def ready_keys(tables: list[TableInfo]) -> int:
    """Keys that a worker could claim right now."""
    return sum(JobTable(t.instance()).status_counts()["ready"] for t in tables)
