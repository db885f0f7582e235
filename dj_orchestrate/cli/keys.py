"""The commands that look at keys and fix them: status, errors, retry, ignore, reconcile."""

from __future__ import annotations

import json

import click

from .. import backends, ledger, pipeline, reports
from ..entry import friendly, open_pipeline
from ..jobs import JobTable, Policy, reconcile_all
from ..options import json_opt, key_opt, max_attempts_opt, pipeline_arg, table_opt
from ..runs import identity_of, per_table, prepare
from .output import emit, emit_json, render_table


@click.command()
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


@click.command()
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


@click.command()
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
    emit(as_json, moved, f"{sum(moved.values())} keys back to pending ({per_table(moved)})")


@click.command()
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
    emit(as_json, marked, f"{sum(marked.values())} keys now ignored ({per_table(marked)}); `dj-orchestrate retry` releases them")


@click.command()
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
