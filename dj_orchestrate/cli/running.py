"""The commands that make keys: plan, run, serve, health, work and the demo."""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Callable

import click

from .. import backends, db, pipeline, reports, runs
from ..entry import friendly, open_pipeline
from ..jobs import JobTable, Restriction
from ..options import json_opt, key_opt, pipeline_arg, policy_options, table_opt, work_options
from ..work import WorkSpec, main as work_main
from ..worker import Settings
from .flags import pop_flags, run_flags
from .output import command_name, emit_json, render_table


@click.command()
@pipeline_arg
@table_opt
@key_opt
@click.option("--shard-size", type=int, help="Keys per shard (default 1000).")
@click.option("--shards", type=int, help="Split each table into this many shards instead.")
@json_opt
@friendly
def plan(pipeline_spec: str, tables: tuple[str, ...], key_json: str | None, shard_size: int | None,
         shards: int | None, as_json: bool) -> None:
    """Dry run: per table, what is done, missing, failed, in how many shards, and its ETA. Writes nothing."""
    target, infos, restriction = open_pipeline(pipeline_spec, tables, key_json, warn=True)
    plans = reports.plan_rows(infos, restriction, shard_size, shards)
    rows = reports.plan_json(infos, plans)
    if as_json:
        emit_json(rows)
        return
    rows = [{**r, "in key_source": r["total"]} for r in rows]
    click.echo(render_table(rows, ["table", "level", "in key_source", "done", "missing", "error", "ignore", "reserved", "shards",
                                   "eta"]))
    click.echo(f"\n{sum(p.missing for p in plans)} keys to make in {sum(p.shards for p in plans)} shards "
               f"({target.describe()}). Downstream counts grow as upstream tables fill.")


def routed(backend_help: str, workers_help: str) -> Callable[[Callable], Callable]:
    """What ``run`` and ``serve`` share: the pipeline, its backend (where [run.tables.X]
    routes no table elsewhere), the workers per run, the tables and keys."""
    def decorate(f: Callable) -> Callable:
        for option in reversed([pipeline_arg, click.option("--backend", help=backend_help),
                                click.option("--workers", default=4, show_default=True, help=workers_help),
                                table_opt, key_opt]):
            f = option(f)
        return f
    return decorate


@click.command()
@routed(f"{backends.names()}: every table's, but those [run.tables.X] backend routes elsewhere "
        "(default: [run] backend, else local).", "Worker processes (local) or array parallelism.")
@click.option("--shard-size", type=int, help="Keys per shard (array task).")
@click.option("--shards", type=int, help="Shards per table instead of --shard-size.")
@click.option("--wait/--no-wait", default=None, help="Follow until done (default: local and a dask --cluster wait, slurm and dask --scheduler return).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Backend config (dj_orchestrate.toml).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@run_flags
@policy_options
@json_opt
@friendly
def run(pipeline_spec: str, backend: str | None, workers: int, tables: tuple[str, ...], key_json: str | None,
        shard_size: int | None, shards: int | None, wait: bool | None, config_path: str | None,
        no_progress: bool, as_json: bool, **params: Any) -> None:
    """Reconcile, then compute every missing key of the selected tables.

    Tables that the config routes to different backends ([run.tables.X] backend) are made
    by one run per backend, each started when its tables have keys ready."""
    options = pop_flags(params)  # the rest: the workers' policy
    ended = runs.run(pipeline_spec, tables, key_json, backend, workers, shard_size, shards, wait, config_path,
                     not (no_progress or as_json), options, params)
    one = {"run_id": ended.run_id} if ended.run_id is not None else {"runs": ended.runs}
    if as_json:
        emit_json({**one, "state": ended.state, "tables": ended.tables})
    else:
        click.echo(render_table(ended.tables, ["table", "total", "done", "missing", "pending", "reserved", "error", "ignore"]))
        if ended.run_id is not None:
            click.echo(f"run {ended.run_id}: {ended.state}" + ("; see `dj-orchestrate errors`" if ended.state == "errors" else ""))
        else:
            click.echo(f"runs {', '.join(r['run_id'] for r in ended.runs) or 'none'}: {ended.state}")
    sys.exit(ended.code)


@click.command("serve")
@routed("Every table's backend, but those [run.tables.X] backend routes elsewhere (default: [run] backend, else local).",
        "Worker processes (local) or array parallelism, per run.")
@click.option("--interval", type=float, help="Seconds between looks for new work (default: [serve] interval, else 60).")
@click.option("--max-idle", type=float, help="Exit 0 after this many seconds with nothing to do (default: never).")
@click.option("--until", help="Exit 0 at this time: HH:MM or an ISO date-time (an allocation's end, a cron window's).")
@click.option("--http", metavar="[HOST:]PORT", help="Also serve the dashboard there (HOST default 127.0.0.1; see `dashboard`).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Config file (dj_orchestrate.toml).")
@policy_options
@friendly
def serve_command(pipeline_spec: str, backend: str | None, workers: int, tables: tuple[str, ...], key_json: str | None,
                  interval: float | None, max_idle: float | None, until: str | None, http: str | None,
                  config_path: str | None, **policy: Any) -> None:
    """Keep the pipeline computed as data arrives, until stopped (SIGTERM: exit 0).

    Every --interval it enqueues the selected tables' new keys and starts a run of the
    tables of each backend that has keys ready and no run going. Failed keys are not
    retried in a loop (--retries, --max-attempts hold). Several servers of one pipeline
    may run (a restart, a standby): one leads, the others wait to take over."""
    sys.exit(runs.serve_pipeline(pipeline_spec, tables, key_json, backend, workers, interval, max_idle, until, http,
                                 config_path, policy))


@click.command()
@pipeline_arg
@friendly
def health(pipeline_spec: str) -> None:
    """Exit 0 when a `serve` of the pipeline on this host beat within 3 of its intervals
    (a container's healthcheck), else 1."""
    import platform

    db.connect()
    _, schemas = pipeline.identity(pipeline.load(pipeline_spec))
    mine = [r for r in reports.server_rows(schemas) if r["host"] == platform.node()[:255]]
    alive = [r for r in mine if r["role"] != "lost" and r["beat_age_s"] <= reports.LOST_AFTER * r["interval_s"]]
    if alive:
        click.echo(f"{alive[0]['server']} {alive[0]['role']}, beat {alive[0]['beat_age_s']}s ago")
        return
    click.echo(f"no serve of {pipeline_spec} on this host beat recently" + (f" (last: {mine[-1]['beat_age_s']}s ago)" if mine else ""))
    sys.exit(1)


@click.command()
@work_options
@friendly
def work(**params: Any) -> None:
    """Claim and make keys (what every backend launches). Pull mode unless --fixed-shard."""
    sys.exit(work_main(WorkSpec.from_params(**params)))



@click.command()
@click.option("--workers", default=4, show_default=True)
@click.option("--sessions", default=24, show_default=True, help="Sessions to seed.")
@click.option("--seed-only", is_flag=True,
              help="Only declare the pipeline and add its sessions, keeping what is there; run nothing "
                   "(the init step of docker-compose.yml).")
@friendly
def demo(workers: int, sessions: int, seed_only: bool) -> None:
    """Create, seed and run the example pipeline on the embedded database; show the results."""
    import datajoint as dj

    from ..backends.local import LocalBackend

    target = db.connect()
    click.echo(f"database: {target.describe()}")
    name = os.environ.get("DJO_DEMO_SCHEMA", "djo_demo")
    if not seed_only:
        dj.Schema(name).drop(prompt=False)  # a fresh demo every time
    sys.modules.pop("dj_orchestrate.examples.demo", None)
    spec = "dj_orchestrate.examples.demo"
    module = pipeline.load(spec)
    module.seed(sessions)
    if seed_only:
        click.echo(f"{name}: {len(module.Session())} sessions; next: dj-orchestrate run {spec}")
        return
    infos = pipeline.discover(module)
    click.echo(f"pipeline {spec}: " + ", ".join(f"{t.name} (level {t.level})" for t in infos))
    *_, rows = runs.start(LocalBackend(), spec, infos, Restriction(), target, Settings(), pipeline.identity(module),
                          workers=workers)
    click.echo("")
    click.echo(render_table(rows, ["table", "total", "done", "missing", "error"]))
    failed = [{"table": t.name, **e} for t in infos for e in JobTable(t.instance()).errors()]
    click.echo(f"\n{len(failed)} keys failed on purpose:")
    for e in failed:
        click.echo(f"  {e['table']} {json.dumps(e['key'], default=str)}: {e['error_message']}")
    command = command_name()
    click.echo(f"\nnext: {command} status {spec}   |   {command} errors {spec} --stack")
