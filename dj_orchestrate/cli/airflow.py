"""Airflow: render the DAG, and the steps its tasks run."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import click

from .. import backends, ledger
from ..backends import airflow as af
from ..backends.follow import check_identity
from ..entry import friendly, open_pipeline
from ..errors import UsageError
from ..jobs import Policy, reconcile_all
from ..options import key_opt, pipeline_arg, render_options, table_opt
from ..runs import render_request, warn_unknown_tables
from .output import command_line, emit_json


@click.group()
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
@click.option("--mode", type=click.Choice(af.MODES),
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
    _, infos, restriction = open_pipeline(pipeline_spec, tables, key_json)
    lines = af.unfinished(infos, restriction)
    if lines:
        click.echo("\n".join(lines + [f"{len(lines)} problem(s); `dj-orchestrate errors {pipeline_spec}` lists the failed keys"]))
        sys.exit(1)
    click.echo(f"every key of {', '.join(t.name for t in infos)} is made")
