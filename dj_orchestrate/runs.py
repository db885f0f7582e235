"""What ``run``, ``demo`` and ``serve`` do between their options and their output: check
and prepare the pipeline's tables, record a run in the ledger, launch it on its backend
(or start one run per backend route), and say how it ended.

The commands (``cli``) parse options and print; everything here is shared by them."""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from . import backends, ledger, pipeline, serve
from .backends.base import SUBMITTED, Backend, RunRequest
from .backends.follow import Mismatch, left_message
from .config import BackendConfig, timeouts
from .db import Target
from .entry import open_pipeline
from .errors import UsageError
from .flow import waiting
from .jobs import Restriction, counts_of, ensure_all, jobs_of, reconcile_all
from .options import worker_settings
from .worker import Settings


@dataclass
class Ended:
    """How a ``run`` ended: its exit status, its state, each table's counts, and the run
    (or, when its tables went to several backends, the runs) it started."""

    code: int
    state: str
    tables: list[dict[str, Any]]
    run_id: str | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)


def log_dir(run_id: str) -> Path:
    return Path(os.environ.get("DJO_LOG_DIR", ".dj_orchestrate/logs")).resolve() / run_id


def identity_of(spec: str) -> tuple[tuple[str, list[str]], set[str]]:
    """The pipeline's identity for the ledger, and the specs older runs of it were recorded with."""
    module = pipeline.load(spec)
    ident = pipeline.identity(module)
    return ident, {spec, pipeline.resolve_spec(spec), ident[0], module.__name__}


def prepare(infos: list[pipeline.TableInfo], declare: bool = True) -> None:
    """Before a command writes any key: the jobs tables declared (or, with ``declare``
    false, only those that exist: stock DataJoint's), with dj-orchestrate's columns. A
    privilege the database user lacks then stops it before it changed any key."""
    ensure_all(jobs_of(infos), declare)


def per_table(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none matched"


def counts(infos: list[pipeline.TableInfo], restriction: Restriction) -> list[dict[str, Any]]:
    """Each table's keys by status, as a run's summary shows them."""
    return [{"table": t.name, **c} for t, c in zip(infos, counts_of(jobs_of(infos), restriction))]


def left_in(summary: list[dict[str, Any]]) -> dict[str, int]:
    """Per table of a run's ``counts``, keys still missing or pending: after every worker
    is gone, keys that no worker claimed (they saw another database or schema, or none
    could start)."""
    return {c["table"]: c["missing"] for c in summary if c["missing"]}


def launch(backend: Backend, request: RunRequest) -> tuple[int, str, list[dict[str, Any]]]:
    """Run it, and record in the ledger how the run ended: never "done" while keys that
    no worker claimed are left (exit 1, state "incomplete"). Also each table's counts
    (``counts``), which say both what is left and the run's summary: read once."""
    try:
        code = backend.run(request)
    except Mismatch:
        ledger.finish_run(request.run_id, "mismatch")
        raise
    ended = request.wait and code in (0, 1)
    summary = counts(request.tables, request.restriction)
    left = left_in(summary) if ended else {}
    # what keys wait for (the no-progress guard: also a fan-in's, which key_source hides), else that nobody claimed them
    waits = waiting(request.tables, request.restriction) if ended else []
    for line in waits or ([left_message(request.run_id, left, request.tables)] if left else []):
        click.echo(f"dj-orchestrate: {line}", err=True)
    state = "incomplete" if left else {0: "done", 1: "errors", 130: "interrupted", SUBMITTED: "submitted"}.get(code, "failed")
    ledger.finish_run(request.run_id, state)
    return (1 if left else code), state, summary


def start(backend: Backend, spec: str, infos: list[pipeline.TableInfo], restriction: Restriction, target: Target,
          settings: Settings, identity: tuple[str, list[str]],
          **request: Any) -> tuple[str, int, str, list[dict[str, Any]]]:
    """Record a new run of these tables in the ledger and ``launch`` it: its id, exit
    status, state and each table's counts. ``request``: the rest of its ``RunRequest``
    (workers, wait, ...)."""
    run_id = ledger.new_run(spec, backend.name, [t.name for t in infos], identity=identity)
    code, state, summary = launch(backend, RunRequest(pipeline=spec, tables=infos, restriction=restriction, target=target,
                                                      worker=settings, run_id=run_id, log_dir=log_dir(run_id), **request))
    return run_id, code, state, summary


def run(pipeline_spec: str, tables: tuple[str, ...], key_json: str | None, backend: str | None, workers: int,
        shard_size: int | None, shards: int | None, wait: bool | None, config_path: str | None, progress: bool,
        options: dict[str, Any], policy: dict[str, Any]) -> Ended:
    """``run``: reconcile, then compute every missing key of the selected tables, on one
    backend, or by one run per backend when the config routes tables to several.
    ``options``: the backend's own (scheduler, image, ...); ``policy``: the workers'."""
    settings = worker_settings(**policy)
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}", "e.g. --workers 8")
    if backend is not None:
        backends.get(backend).create(config_path, **options)  # (its options checked before connecting)
    target, infos, restriction = open_pipeline(pipeline_spec, tables, key_json, warn=True)
    routes = serve.routes(infos, backend, config_path)
    if len(routes) > 1:
        return run_routes(pipeline_spec, routes, infos, restriction, key_json, config_path, workers, wait, options,
                          settings, policy)
    backend = routes[0].backend if routes else backend or "local"
    backend_obj = backends.get(backend).create(config_path, **options)
    if settings.order == "declared":
        infos = pipeline.in_declared_order(infos)
    settings.timeout = timeouts(settings.timeout, getattr(backend_obj, "config", None), infos)
    wait = backend_obj.default_wait() if wait is None else wait
    backend_obj.check(infos, bool(target.embedded), wait)
    spec = pipeline.resolve_spec(pipeline_spec)
    identity, _ = identity_of(pipeline_spec)
    ledger.tables()
    prepare(infos, declare=False)  # undeclared ones are declared as their keys are enqueued
    reconcile_all(instances := [t.instance() for t in infos], settings.policy, backends.hint(instances))
    run_id, code, state, summary = start(backend_obj, spec, infos, restriction, target, settings, identity,
                                         workers=workers, shard_size=shard_size, shards=shards, wait=wait,
                                         progress=progress, key_json=key_json)
    return Ended(0 if code == SUBMITTED else code, state, summary, run_id=run_id)


def worker_args(policy: dict[str, Any]) -> list[str]:
    """``run``'s worker options as given (``policy_options``), for the runs a server starts."""
    out: list[str] = []
    for name, value in policy.items():
        values = value if isinstance(value, tuple) else (value,)
        out += [a for v in values for a in (f"--{name.replace('_', '-')}", str(v))]
    return out


def supervisor(pipeline_spec: str, routes: list[serve.Route], restriction: Restriction, key_json: str | None,
               config_path: str | None, workers: int, settings: Settings, policy: dict[str, Any],
               name: str, interval: float = 1.0) -> serve.Supervisor:
    options = serve.Options(pipeline=pipeline.resolve_spec(pipeline_spec), key_json=key_json, config_path=config_path,
                            workers=workers, worker_args=worker_args(policy), log_dir=log_dir(name))
    return serve.Supervisor(routes, restriction, options, settings.policy, interval)


def run_routes(pipeline_spec: str, routes: list[serve.Route], infos: list[pipeline.TableInfo], restriction: Restriction,
               key_json: str | None, config_path: str | None, workers: int, wait: bool | None, options: dict[str, Any],
               settings: Settings, policy: dict[str, Any]) -> Ended:
    """``run`` over several backends: one run per route, each started once its tables
    have keys ready, until none has; then the same end as any run."""
    given = [name for name, value in options.items() if value]
    where = "; ".join(map(str, routes))
    if given:
        raise UsageError(f"--{given[0]} belongs to one backend, and these tables go to several ({where})",
                         "set it in that backend's section of the config file")
    if wait is False:
        raise UsageError(f"--no-wait: these tables go to several backends ({where}), started one after another",
                         "leave --no-wait out, or select the tables of one backend")
    prepare(infos, declare=False)
    ledger.tables()
    sup = supervisor(pipeline_spec, routes, restriction, key_json, config_path, workers, settings, policy,
                     f"routes-{os.getpid()}")
    try:
        while sup.tick():
            time.sleep(1)
    except KeyboardInterrupt:
        sup.stop(settings.grace)
    summary = counts(infos, restriction)
    left = left_in(summary)
    for line in waiting(infos, restriction) or ([f"{sum(left.values())} keys left ({per_table(left)})"] if left else []):
        click.echo(f"dj-orchestrate: {line}", err=True)
    failed = any(r["exit"] != 0 for r in sup.results)
    state = "incomplete" if left else "errors" if failed else "done"
    return Ended(1 if left or failed else 0, state, summary, runs=sup.results)


def serve_pipeline(pipeline_spec: str, tables: tuple[str, ...], key_json: str | None, backend: str | None,
                   workers: int, interval: float | None, max_idle: float | None, until: str | None, http: str | None,
                   config_path: str | None, policy: dict[str, Any]) -> int:
    """``serve``: check everything, then keep the pipeline computed until stopped; the exit status."""
    settings = worker_settings(**policy)
    defaults = serve.serve_settings(config_path)
    interval = defaults.interval if interval is None else interval
    max_idle = defaults.max_idle if max_idle is None else max_idle
    if not interval > 0:
        raise UsageError(f"--interval must be a positive number of seconds, got {interval:g}", "e.g. --interval 60")
    end = serve.parse_until(until) if until else None
    address = serve.parse_http(http) if http else None
    if backend is not None:
        backends.get(backend)
    target, infos, restriction = open_pipeline(pipeline_spec, tables, key_json, warn=True)
    routes = serve.routes(infos, backend, config_path)
    for route in routes:
        backends.get(route.backend).create(config_path).check(route.tables, bool(target.embedded), True)
    prepare(infos)
    ledger.tables()
    sup = supervisor(pipeline_spec, routes, restriction, key_json, config_path, workers, settings, policy,
                     f"serve-{os.getpid()}", interval)
    _, schemas = pipeline.identity(pipeline.load(pipeline_spec))
    dashboard = None
    if address:
        argv = [sys.executable, "-m", "dj_orchestrate", "dashboard", sup.options.pipeline, "--host", address[0],
                "--port", str(address[1])]
        dashboard = serve.Sidecar(argv + [a for t in tables for a in ("--table", t)])
    server = serve.Server(sup, infos[0].cls.connection, schemas, interval=interval, grace=settings.grace,
                          max_idle=max_idle, until=end, dashboard=dashboard)
    return server.run()


def warn_unknown_tables(config: BackendConfig, spec: str) -> None:
    """One line on stderr for each ``[<section>.tables.X]`` that names no table of the
    pipeline (a typo: its settings would silently apply to nothing). The pipeline is
    imported already (render read it): only its class names are needed, not its order."""
    names = [cls.__name__ for cls in pipeline.auto_populated(pipeline.load(spec)).values()]
    for name in config.unknown_tables(set(names)):
        click.echo(f"dj-orchestrate: warning: [{config.section}.tables.{name}] in {config.source} names no table of "
                   f"{spec}; its tables: {', '.join(names)}", err=True)


def render_request(pipeline_spec: str, tables: tuple[str, ...], key_json: str | None, out_dir: str) -> RunRequest:
    """The run a render describes. Reads the pipeline's tables and counts, writes nothing
    to the database; the pipeline is named as a worker elsewhere can load it."""
    target, infos, restriction = open_pipeline(pipeline_spec, tables, key_json)
    spec = pipeline_spec if not pipeline_spec.endswith(".py") else pipeline.resolve_spec(pipeline_spec)
    return RunRequest(pipeline=spec, tables=infos, restriction=restriction, target=target, worker=Settings(), run_id="",
                      log_dir=Path(out_dir) / "logs", key_json=key_json)
