"""``dj-orchestrate dashboard``: the pipeline, its failures and its runs in a browser.

Importing this package needs nothing beyond dj-orchestrate's own requirements; the web
stack (the ``dashboard`` extra) is imported when the command runs. What it reads with the
CLI lives below it: ``reports``, ``queries``, ``durations`` (which workers write)."""

from __future__ import annotations

import os
import secrets

import click

VARIABLE = "DJO_DASHBOARD_TOKEN"  # the token the user chose (else a random one)


@click.command("dashboard")
@click.argument("pipeline_spec", metavar="PIPELINE")
@click.option("--table", "tables", multiple=True, metavar="NAME", help="Only these tables (repeatable).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (another exposes the dashboard).")
@click.option("--port", default=8050, show_default=True, type=int)
def command(pipeline_spec: str, tables: tuple[str, ...], host: str, port: int) -> None:
    """Serve a dashboard of the pipeline: its tables' progress and ETA, failures grouped by
    cause, runs and workers, each table's keys; retry, ignore and reconcile with the token
    printed at start (or DJO_DASHBOARD_TOKEN)."""
    from ..entry import friendly

    friendly(serve)(pipeline_spec, tables, host, port)


def serve(pipeline_spec: str, tables: tuple[str, ...], host: str, port: int) -> None:
    from ..errors import UsageError

    try:
        import uvicorn

        from .app import Dashboard, build
    except ImportError as err:
        raise UsageError(f"the dashboard needs {err.name}", "pip install 'dj-orchestrate[dashboard]'") from None
    from ..entry import open_pipeline

    target, infos, _ = open_pipeline(pipeline_spec, tables, None)
    token = os.environ.get(VARIABLE) or secrets.token_urlsafe(24)
    shown_token = f"${VARIABLE}" if os.environ.get(VARIABLE) else token  # a token the user chose is not echoed
    app = build(Dashboard(pipeline_spec, infos, token, target))
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"dashboard of {pipeline_spec} ({target.describe()}): http://{shown}:{port}/", err=True)
    click.echo(f"to act (retry, ignore, reconcile), open: http://{shown}:{port}/?token=" + shown_token, err=True)
    # no access log: the URL with the token would be written to it
    uvicorn.run(app, host=host, port=port, access_log=False, log_level="warning")
