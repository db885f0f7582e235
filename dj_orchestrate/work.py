"""What a worker is told (``WorkSpec``) and how it starts (``main``): the one way in, for
``dj-orchestrate work``, a forked local worker, a SLURM array task and a Dask task's
child alike. A backend that starts a new process gives it ``WorkSpec.to_argv()``, the
``work`` command's arguments; ``from_argv`` reads them back as that command does."""

from __future__ import annotations

import dataclasses
import os
import signal
from dataclasses import dataclass, field
from typing import Any, Sequence

import click

from . import ledger, pipeline
from .entry import open_pipeline
from .errors import UsageError
from .jobs import JobTable
from .options import work_options, worker_settings
from .planner import decode_bound
from .watchdog import seconds_text
from .worker import Settings, Worker, record_identity


@dataclass(frozen=True)
class WorkSpec:
    """One worker's orders: the pipeline and the tables it serves (within ``key_json``),
    its run and shard (``fixed_shard``: claim only that shard's key range, as the ledger
    records it), whether it enqueues first (a pull worker started after its upstream),
    and how it works (``settings``: batches, grace, policy, timeouts, its backend job id
    and log)."""

    pipeline: str
    tables: tuple[str, ...]
    settings: Settings = field(default_factory=Settings)
    key_json: str | None = None
    run_id: str | None = None
    shard_index: int | None = None
    fixed_shard: bool = False
    enqueue: bool = False

    def replace(self, **changes: Any) -> "WorkSpec":
        """This spec with some fields, or some of its settings' (``log_path=...``), changed."""
        mine = {k: v for k, v in changes.items() if k in {f.name for f in dataclasses.fields(self)}}
        theirs = {k: v for k, v in changes.items() if k not in mine}
        if theirs:
            mine["settings"] = dataclasses.replace(mine.get("settings", self.settings), **theirs)
        return dataclasses.replace(self, **mine)

    def to_argv(self) -> list[str]:
        """The ``work`` command's arguments (``dj-orchestrate`` not included)."""
        s = self.settings
        cmd = ["work", self.pipeline]
        for name in self.tables:
            cmd += ["--table", name]
        if self.run_id:
            cmd += ["--run-id", self.run_id]
        cmd += ["--max-batch", str(s.max_batch), "--grace", str(s.grace),
                "--retries", str(s.policy.retries), "--backoff", str(s.policy.backoff),
                "--max-attempts", str(s.policy.max_attempts), "--order", s.order]
        for name in self.tables:  # per table: one worker may serve tables with different timeouts
            if (seconds := s.timeout_of(name)) is not None:
                cmd += ["--timeout", f"{name}={seconds_text(seconds)}"]
        if self.key_json:  # the workers enqueue downstream keys: within the same restriction
            cmd += ["--key", self.key_json]
        if self.shard_index is not None:
            cmd += ["--shard-index", str(self.shard_index)]
        if self.fixed_shard:
            cmd += ["--fixed-shard"]
        if self.enqueue:
            cmd += ["--enqueue"]
        if s.log_path:
            cmd += ["--log-path", s.log_path]
        if s.backend_job_id:
            cmd += ["--backend-job-id", s.backend_job_id]
        return cmd

    @classmethod
    def from_argv(cls, argv: Sequence[str]) -> "WorkSpec":
        """What ``to_argv`` wrote (``work`` first), read by the command's own options."""
        args = list(argv)
        if args[:1] != ["work"]:
            raise ValueError(f"not the arguments of `work`: {args[:2]}")
        command = click.command("work")(work_options(lambda **params: params))
        return cls.from_params(**command.make_context("work", args[1:]).params)

    @classmethod
    def from_params(cls, pipeline_spec: str, tables: tuple[str, ...], key_json: str | None, enqueue: bool,
                    run_id: str | None, shard_index: int | None, fixed_shard: bool, log_path: str,
                    backend_job_id: str | None, **policy: Any) -> "WorkSpec":
        """The ``work`` command's parameters, checked."""
        settings = worker_settings(**policy, backend_job_id=backend_job_id or "", log_path=log_path)
        return cls(pipeline_spec, tuple(tables), settings, key_json=key_json, run_id=run_id, shard_index=shard_index,
                   fixed_shard=fixed_shard, enqueue=enqueue)


def backend_job_id_from_env() -> str:
    """The scheduler's id of this process: a SLURM (array) job, a Kubernetes pod."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env.get('SLURM_ARRAY_TASK_ID', '')}"
    if env.get("SLURM_JOB_ID"):
        return env["SLURM_JOB_ID"]
    pod = env.get("POD_NAME") or env.get("HOSTNAME")  # a pod's hostname is its name
    if env.get("JOB_COMPLETION_INDEX") is not None and env.get("POD_NAMESPACE") and pod:
        return f"kubernetes:{env['POD_NAMESPACE']}/{pod}"
    return ""


def main(spec: WorkSpec) -> int:
    """Claim and make keys as ``spec`` says, until none is left for this worker. Returns
    the exit status: 0, or 128 + the signal that stopped it. Bad orders raise UsageError
    before anything is written (``entry.reported`` makes them one line, exit 2)."""
    settings = dataclasses.replace(spec.settings, backend_job_id=spec.settings.backend_job_id or backend_job_id_from_env(),
                                   log_path=spec.settings.log_path or os.environ.get("DJO_LOG_PATH", ""))
    _, infos, restriction = open_pipeline(spec.pipeline, spec.tables, spec.key_json)
    record_identity(spec.run_id, infos, pipeline.load(spec.pipeline))  # before anything is written to the pipeline's tables
    if settings.order == "declared":  # as the driver ordered them: each table after those declared before it
        infos = pipeline.in_declared_order(infos)
    if spec.enqueue:
        for t in infos:
            JobTable(t.instance()).enqueue(restriction)
    shard = None
    if spec.fixed_shard:
        if not (spec.run_id and spec.shard_index is not None and len(infos) == 1):
            raise UsageError("--fixed-shard needs --run-id, --shard-index and exactly one --table",
                             "or leave it out: the worker then claims whatever is pending")
        row = ledger.shard(spec.run_id, infos[0].name, spec.shard_index)
        if row is None:
            raise UsageError(f"no shard {spec.shard_index} of {infos[0].name} in run {spec.run_id}", "check the run id")
        shard = (decode_bound(row["lo"]), decode_bound(row["hi"]))
    tally = Worker(infos, settings, shard=shard, run_id=spec.run_id, shard_index=spec.shard_index,
                   restriction=restriction).run()
    stopped = f" (stopped by {signal.Signals(tally.stop_signal).name})" if tally.stop_signal else ""
    click.echo(f"worker done: {tally.done} made, {tally.failed} failed{stopped}")
    return 128 + tally.stop_signal if tally.stop_signal else 0
