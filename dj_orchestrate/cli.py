"""The ``dj-orchestrate`` command.

Exit codes: 0 every attempted key succeeded; 1 some keys failed (they are recorded);
2 bad input or configuration (one line saying what and how to fix it; nothing written).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import click

from . import db
from .entry import report
from .errors import UsageError

db.quiet_datajoint()  # before DataJoint is imported: its config warnings are not ours to show
try:
    db.import_datajoint()  # it validates DJ_* as it is imported
except UsageError as _err:
    report(_err, "--debug" in sys.argv)
    sys.exit(_err.exit_code)

from . import __version__, backends, ledger, pipeline, reports, runs, serve  # noqa: E402
from .backends.base import check_identity  # noqa: E402
from .config import read as read_config, timeouts  # noqa: E402
from .entry import friendly, open_pipeline  # noqa: E402
from .jobs import JobTable, Policy, Restriction, reconcile_all  # noqa: E402
from .options import (json_opt, key_opt, max_attempts_opt, pipeline_arg, policy_options, render_options,  # noqa: E402
                      table_opt, work_options)
from .runs import identity_of, per_table, prepare, render_request, warn_unknown_tables  # noqa: E402
from .work import WorkSpec, main as work_main  # noqa: E402
from .worker import Settings  # noqa: E402


def emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


def render_table(rows: list[dict], columns: list[str]) -> str:
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) if rows else len(c) for c in columns}
    lines = ["  ".join(c.ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns) for r in rows]
    return "\n".join(lines)


# ------------------------------------------------------------------ commands
@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dj-orchestrate")
@click.option("--debug", is_flag=True, help="Show the traceback behind an error.")
def main(debug: bool) -> None:
    """Run DataJoint pipelines at cluster scale: plan, run, watch, and fix failed keys.

    PIPELINE is an importable module (my_lab.pipeline) or a path to a .py file. The
    database is DataJoint's own configuration (DJ_HOST, DJ_USER, DJ_PASS, DJ_BACKEND,
    datajoint.json); with none, an embedded PostgreSQL in ./.dj_orchestrate/pgdata.
    """


@main.command()
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


@main.command()
@pipeline_arg
@click.option("--backend", help="local, slurm, dask or kubernetes: every table's, but those [run.tables.X] backend routes elsewhere "
              "(default: [run] backend, else local).")
@click.option("--workers", default=4, show_default=True, help="Worker processes (local) or array parallelism.")
@table_opt
@key_opt
@click.option("--shard-size", type=int, help="Keys per shard (array task).")
@click.option("--shards", type=int, help="Shards per table instead of --shard-size.")
@click.option("--wait/--no-wait", default=None, help="Follow until done (default: local and a dask --cluster wait, slurm and dask --scheduler return).")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Backend config (dj_orchestrate.toml).")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.option("--scheduler", help="dask: the scheduler's address (default: [dask] scheduler, DASK_SCHEDULER_ADDRESS).")
@click.option("--cluster", help="dask: start a cluster for this run instead: local, slurm (dask-jobqueue) or cuda (dask-cuda).")
@click.option("--image", help="kubernetes: the worker image (default: [kubernetes] image).")
@click.option("--namespace", help="kubernetes: the namespace (default: [kubernetes] namespace, then the context's).")
@click.option("--secret", help="kubernetes: the Secret with the database credentials (default: [kubernetes] secret).")
@policy_options
@json_opt
@friendly
def run(pipeline_spec: str, backend: str | None, workers: int, tables: tuple[str, ...], key_json: str | None,
        shard_size: int | None, shards: int | None, wait: bool | None, config_path: str | None,
        no_progress: bool, scheduler: str | None, cluster: str | None, image: str | None, namespace: str | None,
        secret: str | None, as_json: bool, **policy: Any) -> None:
    """Reconcile, then compute every missing key of the selected tables.

    Tables that the config routes to different backends ([run.tables.X] backend) are made
    by one run per backend, each started when its tables have keys ready."""
    options = dict(scheduler=scheduler, cluster=cluster, image=image, namespace=namespace, secret=secret)
    ended = runs.run(pipeline_spec, tables, key_json, backend, workers, shard_size, shards, wait, config_path,
                     not (no_progress or as_json), options, policy)
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


@main.command("serve")
@pipeline_arg
@click.option("--backend", help="Every table's backend, but those [run.tables.X] backend routes elsewhere "
                                "(default: [run] backend, else local).")
@click.option("--workers", default=4, show_default=True, help="Worker processes (local) or array parallelism, per run.")
@table_opt
@key_opt
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


@main.command()
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


@main.command()
@work_options
@friendly
def work(**params: Any) -> None:
    """Claim and make keys (what every backend launches). Pull mode unless --fixed-shard."""
    sys.exit(work_main(WorkSpec.from_params(**params)))


@main.command()
@pipeline_arg
@table_opt
@key_opt
@json_opt
@friendly
def status(pipeline_spec: str, tables: tuple[str, ...], key_json: str | None, as_json: bool) -> None:
    """Per table: total, done, pending, reserved, error, ignore, ETA and keys made in the last
    hour; the pipeline's servers and recent runs."""
    target, infos, restriction = open_pipeline(pipeline_spec, tables, key_json)
    rows = reports.status_rows(infos, restriction)
    servers = reports.server_rows(pipeline.identity(pipeline.load(pipeline_spec))[1])
    if as_json:
        emit_json({"tables": rows, "servers": servers})
        return
    for r in rows:
        r["progress"] = f"{100 * r['done'] / r['total']:.0f}%" if r["total"] else "-"
    click.echo(render_table(rows, ["table", "total", "done", "pending", "reserved", "error", "ignore", "progress", "eta",
                                   "made_last_hour"]))
    runs = ledger.recent_runs(*identity_of(pipeline_spec))
    for r in runs:
        if r["backend"] != "local" and r["state"] in ("submitted", "running"):
            r["backend_info"] = backends.get(r["backend"]).from_config().describe(r) or r["backend_info"]
    if servers:
        click.echo("\nservers:")
        click.echo(render_table(servers, ["server", "role", "started", "last_beat", "beat_age_s"]))
    if runs:
        click.echo("\nrecent runs:")
        click.echo(render_table(runs, ["run_id", "backend", "state", "started", "shards", "keys_done", "keys_failed", "backend_info"]))


@main.command()
@pipeline_arg
@table_opt
@key_opt
@click.option("--match", help="Only errors whose message contains this text.")
@click.option("--stack", is_flag=True, help="Show the full stack trace.")
@json_opt
@friendly
def errors(pipeline_spec: str, tables: tuple[str, ...], key_json: str | None, match: str | None,
           stack: bool, as_json: bool) -> None:
    """Failed keys: table, key, message, attempts, host, backend job id, log path."""
    _, infos, restriction = open_pipeline(pipeline_spec, tables, key_json)
    found = reports.error_rows(infos, restriction, match, stack)
    if as_json:
        emit_json(found)
        return
    if not found:
        click.echo("no errors")
        return
    for e in found:
        where = "  ".join(f"{k}={e[k]}" for k in ("host", "backend_job_id", "log_path") if e.get(k))
        click.echo(f"{e['table']} {json.dumps(e['key'], default=str)}  attempts={e['attempts']}  {where}")
        click.echo(f"    {e['error_message']}")
        if stack and e.get("error_stack"):
            click.echo("    " + str(e["error_stack"]).rstrip().replace("\n", "\n    "))
    click.echo(f"\n{len(found)} failed keys; `dj-orchestrate retry` puts them back in the queue")


@main.command()
@pipeline_arg
@table_opt
@key_opt
@click.option("--match", help="Only errors whose message contains this text.")
@json_opt
@friendly
def retry(pipeline_spec: str, tables: tuple[str, ...], key_json: str | None, match: str | None, as_json: bool) -> None:
    """Move failed and ignored keys back to pending, with a fresh attempt budget."""
    _, infos, restriction = open_pipeline(pipeline_spec, tables, key_json)
    prepare(infos, declare=False)
    moved = {t.name: JobTable(t.instance()).retry(restriction, match) for t in infos}
    if as_json:
        emit_json(moved)
    else:
        click.echo(f"{sum(moved.values())} keys back to pending ({per_table(moved)})")


@main.command()
@pipeline_arg
@table_opt
@click.option("--key", "key_json", required=True, metavar="JSON", help="The keys to ignore.")
@json_opt
@friendly
def ignore(pipeline_spec: str, tables: tuple[str, ...], key_json: str, as_json: bool) -> None:
    """Mark keys to be skipped (status ignore) until retried: pending, failed and not yet
    queued keys; keys already done or being made are left alone."""
    _, infos, restriction = open_pipeline(pipeline_spec, tables, key_json)
    prepare(infos)
    marked = {t.name: JobTable(t.instance()).ignore(restriction) for t in infos}
    if as_json:
        emit_json(marked)
    else:
        click.echo(f"{sum(marked.values())} keys now ignored ({per_table(marked)}); `dj-orchestrate retry` releases them")


@main.command()
@pipeline_arg
@table_opt
@key_opt
@max_attempts_opt("Attempts before a key becomes an error.")
@json_opt
@friendly
def reconcile(pipeline_spec: str, tables: tuple[str, ...], key_json: str | None, max_attempts: int, as_json: bool) -> None:
    """Release keys reserved by workers that are gone (their connection no longer exists)."""
    _, infos, restriction = open_pipeline(pipeline_spec, tables, key_json)
    tables_ = [t.instance() for t in infos]
    r = reconcile_all(tables_, Policy(max_attempts=max_attempts), backends.hint(tables_), restriction)
    outcome = {"back_to_pending": r["released"] + r["charged"] - r["errors"], "charged_an_attempt": r["charged"],
               "already_done": r["completed"], "became_errors": r["errors"]}
    if as_json:
        emit_json(outcome)
    else:
        click.echo(f"{outcome['back_to_pending']} keys back to pending ({r['charged'] - r['errors']} charged an attempt), "
                   f"{outcome['already_done']} already done, {outcome['became_errors']} became errors "
                   f"(at --max-attempts {max_attempts})")


def command_line(ctx: click.Context, skip: tuple[str, ...] = ()) -> str:
    """The command as it was typed, options at their defaults and ``skip`` left out:
    the header of a generated file, saying how to make it again."""
    words: list[str] = []
    parent = ctx
    while parent.parent is not None:
        words.insert(0, parent.info_name or "")
        parent = parent.parent
    words.insert(0, "dj-orchestrate")
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if param.name in skip or value in (None, False, ()) or value == param.default:
            continue
        if isinstance(param, click.Argument):
            words.append(value)
            continue
        for item in (value if param.multiple else [value]):
            words += [param.opts[0]] + ([] if param.is_flag else [str(item)])
    return " ".join(shlex.quote(w) for w in words)


@main.group()
def slurm() -> None:
    """SLURM helpers."""


@slurm.command("render")
@render_options
@click.option("--out", "out_dir", default="slurm-jobs", show_default=True, type=click.Path(file_okay=False))
@friendly
def slurm_render(pipeline_spec: str, tables: tuple[str, ...], key_json: str | None, config_path: str | None,
                 out_dir: str) -> None:
    """Write the sbatch scripts and a submit.sh, for review or for a login node without Python."""
    from .backends.slurm import SlurmBackend

    backend = SlurmBackend.from_config(config_path)
    request = render_request(pipeline_spec, tables, key_json, out_dir)
    request.worker.timeout = timeouts({}, backend.config, request.tables)
    warn_unknown_tables(backend.config, pipeline_spec)
    for path in backend.render(request, Path(out_dir)):
        click.echo(str(path))


def _kubernetes() -> Any:
    """The Kubernetes backend module; without its package, the error names the extra."""
    return sys.modules[backends.get("kubernetes").__module__]


@main.group()
def k8s() -> None:
    """Kubernetes helpers."""


@k8s.command("render")
@render_options
@click.option("--out", "out_dir", default="k8s", show_default=True, type=click.Path(file_okay=False))
@click.option("--image", help="The worker image (default: [kubernetes] image).")
@click.option("--namespace", help="The namespace (default: [kubernetes] namespace, else default).")
@click.option("--secret", help="The Secret with the database credentials (default: [kubernetes] secret).")
@click.option("--serve", "always_on", is_flag=True,
              help="Also write OUT/serve/: a Deployment running `dj-orchestrate serve --backend kubernetes` "
                   "(its config in a ConfigMap), its ServiceAccount, and a Role for Jobs in the namespace only.")
@friendly
def k8s_render(pipeline_spec: str, tables: tuple[str, ...], key_json: str | None, config_path: str | None,
               out_dir: str, image: str | None, namespace: str | None, secret: str | None, always_on: bool) -> None:
    """Write the manifests that run the pipeline with `kubectl apply -f OUT`: the
    conductor and its RBAC, and one Indexed Job per table; with --serve, those that
    keep it computed as data arrives (`kubectl apply -f OUT/serve`). Writes nothing to
    the database. They target Kubernetes 1.35 (the oldest minor release upstream
    maintains), or cluster_version in [kubernetes] (1.28 at the oldest)."""
    backend = _kubernetes().KubernetesBackend.from_config(config_path, image=image, namespace=namespace, secret=secret)
    request = render_request(pipeline_spec, tables, key_json, out_dir)
    request.worker.timeout = timeouts({}, backend.config, request.tables)
    warn_unknown_tables(backend.config, pipeline_spec)
    paths = backend.render(request, Path(out_dir))
    if always_on:
        paths += backend.render_serve(request, Path(out_dir) / "serve", read_config(config_path)[0],
                                      serve.serve_settings(config_path).interval, tables)
    major, minor = backend.render_version()
    click.echo(f"manifests for Kubernetes {major}.{minor} (older cluster: set cluster_version in [kubernetes])")
    for path in paths:
        click.echo(str(path))


@k8s.command("conduct")
@click.option("--run", "run_label", required=True, help="The run whose suspended Jobs to release.")
@click.option("--jobs", "expected", required=True, type=int, help="How many table Jobs the run has.")
@click.option("--namespace", envvar="POD_NAMESPACE", help="Default: the pod's namespace.")
@friendly
def k8s_conduct(run_label: str, expected: int, namespace: str | None) -> None:
    """(In the cluster.) Release each suspended Job of a run once the Jobs it waits for
    have finished; exit when none is left suspended. Needs no database."""
    k8s_backend = _kubernetes()
    k8s_backend.conduct(k8s_backend.Api.connect(namespace=namespace), run_label, expected)
    click.echo(f"every Job of run {run_label} is released")


@k8s.command("cancel")
@click.argument("run_id")
@click.option("--namespace", help="Default: the context's namespace.")
@friendly
def k8s_cancel(run_id: str, namespace: str | None) -> None:
    """Delete a run's Jobs: their workers get SIGTERM and release their keys."""
    k8s_backend = _kubernetes()
    try:
        deleted = k8s_backend.cancel(k8s_backend.Api.connect(namespace=namespace), run_id)
    except k8s_backend.API_ERRORS as err:
        raise UsageError(f"the Kubernetes API refused: {err}", "check your context and your rights in the namespace") from None
    click.echo(f"deleted {len(deleted)} Job(s)" + (f": {', '.join(deleted)}" if deleted else ""))


@main.command()
@click.option("--workers", default=4, show_default=True)
@click.option("--sessions", default=24, show_default=True, help="Sessions to seed.")
@click.option("--seed-only", is_flag=True,
              help="Only declare the pipeline and add its sessions, keeping what is there; run nothing "
                   "(the init step of docker-compose.yml).")
@friendly
def demo(workers: int, sessions: int, seed_only: bool) -> None:
    """Create, seed and run the example pipeline on the embedded database; show the results."""
    import datajoint as dj

    from .backends.local import LocalBackend

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
    runs.start(LocalBackend(), spec, infos, Restriction(), target, Settings(), pipeline.identity(module), workers=workers)
    click.echo("")
    rows = [{"table": t.name, **JobTable(t.instance()).counts()} for t in infos]
    click.echo(render_table(rows, ["table", "total", "done", "missing", "error"]))
    failed = [{"table": t.name, **e} for t in infos for e in JobTable(t.instance()).errors()]
    click.echo(f"\n{len(failed)} keys failed on purpose:")
    for e in failed:
        click.echo(f"  {e['table']} {json.dumps(e['key'], default=str)}: {e['error_message']}")
    command = command_name()
    click.echo(f"\nnext: {command} status {spec}   |   {command} errors {spec} --stack")


def command_name() -> str:
    """How the user can run dj-orchestrate: by name when it is on PATH, else by the path
    of the script beside this Python (after `make demo`, .venv/bin is not on PATH)."""
    import shutil

    script = Path(sys.executable).parent / "dj-orchestrate"
    if shutil.which("dj-orchestrate") or not script.exists():
        return "dj-orchestrate"
    return os.path.relpath(script) if not os.path.relpath(script).startswith("..") else str(script)


@main.group()
def airflow() -> None:
    """Airflow: render the pipeline as a DAG (and the steps its tasks run)."""


@airflow.command("render")
@render_options
@click.option("--out", "out_dir", default="dags", show_default=True, type=click.Path(file_okay=False),
              help="The dags folder to write the DAG file into.")
@click.option("--dag-id", help="The DAG's id and file name (default: from the pipeline, my_lab.pipeline -> my_lab_pipeline).")
@click.option("--schedule", help='Cron expression or preset, e.g. "0 2 * * *" or @daily (default: triggered only).')
@click.option("--conn-id", default="datajoint_default", show_default=True,
              help="The Airflow connection (mysql or postgres) the tasks take the database credentials from.")
@click.option("--mode", type=click.Choice(["worker", "slurm", "dask", "kubernetes"]),
              help="Where work runs (default: [airflow] mode, else worker): worker runs `dj-orchestrate work` in the "
                   "Airflow worker; slurm, dask and kubernetes submit each table to that backend (its settings from "
                   "--config) and wait in the triggerer, holding no worker slot.")
@click.option("--python", help="The lab's Python on the Airflow workers (default: [airflow] python, else the worker's own).")
@click.option("--check", "check_only", is_flag=True, help="Write nothing; exit 1 when the file on disk is not what render writes.")
@friendly
def airflow_render(pipeline_spec: str, tables: tuple[str, ...], key_json: str | None, config_path: str | None,
                   out_dir: str, dag_id: str | None, schedule: str | None, conn_id: str, mode: str | None,
                   python: str | None, check_only: bool) -> None:
    """Write one DAG file for the pipeline into the dags folder (or --check it)."""
    import dataclasses

    from .backends import airflow as af

    af.require_airflow()
    af.check_schedule(schedule)
    config = af.load_config(config_path)
    config.defaults = dataclasses.replace(config.defaults, **{k: v for k, v in (("mode", mode), ("python", python)) if v})
    af.check_mode(config.defaults.mode)
    request = render_request(pipeline_spec, tables, key_json, out_dir)
    warn_unknown_tables(config, pipeline_spec)
    for info in request.tables:
        af.check_mode(config.for_table(info).mode)
    dag_id = af.check_dag_id(dag_id or af.default_dag_id(request.pipeline))
    options = af.DagOptions(dag_id, schedule, conn_id, command_line(click.get_current_context(), skip=("out_dir", "check_only")))
    text = af.render(request, config, options)
    path = Path(out_dir) / f"{re.sub(r'[^A-Za-z0-9_]', '_', dag_id)}.py"
    if check_only:
        if not path.is_file() or path.read_text() != text:
            click.echo(f"{path} is {'stale' if path.is_file() else 'missing'}: render it again without --check", err=True)
            sys.exit(1)
        click.echo(f"{path} is up to date")
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    click.echo(str(path))


@airflow.command("enqueue")
@pipeline_arg
@click.option("--table", required=True, metavar="NAME", help="The table whose missing keys to enqueue.")
@key_opt
@click.option("--shard-size", default=1000, show_default=True, help="Keys per shard.")
@click.option("--max-shards", default=1024, show_default=True, help="Most shards; beyond it, shards grow.")
@friendly
def airflow_enqueue(pipeline_spec: str, table: str, key_json: str | None, shard_size: int, max_shards: int) -> None:
    """(Run by the DAG's enqueue tasks.) Enqueue a table's missing keys; print its shards as JSON."""
    from .backends import airflow as af

    _, infos, restriction = open_pipeline(pipeline_spec, (table,), key_json)
    emit_json({"table": table, **af.enqueue(infos[0], restriction, shard_size, max_shards)})


@airflow.command("progress")
@pipeline_arg
@click.option("--table", required=True, metavar="NAME", help="The table to look at.")
@click.option("--run", "run_id", required=True, help="The run that submit started.")
@key_opt
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="Backend config (dj_orchestrate.toml).")
@friendly
def airflow_progress(pipeline_spec: str, table: str, run_id: str, key_json: str | None, config_path: str | None) -> None:
    """(Run by the DAG's wait triggers.) Reconcile the table, then print as JSON its keys'
    counts and whether it is finished: no key left, or the run's workers are gone."""
    from .backends import airflow as af

    _, infos, restriction = open_pipeline(pipeline_spec, (table,), key_json)
    run = ledger.run_row(run_id)
    if run is None:
        raise UsageError(f"no run {run_id} in the ledger", "pass the run id that `run --no-wait --json` printed")
    check_identity(run_id, infos, f"give the {run['backend']} workers the variables that name the pipeline's schemas")
    ended = backends.get(run["backend"]).from_config(config_path).run_ended(run)  # before the keys are counted
    reconcile_all(tables := [t.instance() for t in infos], Policy(), backends.hint(tables))
    emit_json(af.progress(infos[0], restriction, run_id, ended))


@airflow.command("check")
@pipeline_arg
@table_opt
@key_opt
@friendly
def airflow_check(pipeline_spec: str, tables: tuple[str, ...], key_json: str | None) -> None:
    """(Run by the DAG's check task.) Exit 1, naming them, when keys failed or were not made."""
    from .backends import airflow as af

    _, infos, restriction = open_pipeline(pipeline_spec, tables, key_json)
    lines = af.unfinished(infos, restriction)
    if lines:
        click.echo("\n".join(lines + [f"{len(lines)} problem(s); `dj-orchestrate errors {pipeline_spec}` lists the failed keys"]))
        sys.exit(1)
    click.echo(f"every key of {', '.join(t.name for t in infos)} is made")


from .dashboard import command as _dashboard  # noqa: E402

main.add_command(_dashboard)
