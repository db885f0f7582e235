"""The command-line options that several commands share, and the worker settings they
become. Each default is read from the dataclass that owns it (``worker.Settings``,
``jobs.Policy``): declared once, whether a worker is started by ``work``, ``run``,
``serve`` or a backend."""

from __future__ import annotations

from typing import Any, Callable

import click

from .errors import UsageError
from .flow import ORDERS
from .jobs import Policy
from .worker import Settings

pipeline_arg = click.argument("pipeline_spec", metavar="PIPELINE")
table_opt = click.option("--table", "tables", multiple=True, metavar="NAME",
                         help="Table class name (repeatable). Upstream tables are not implied.")
key_opt = click.option("--key", "key_json", metavar="JSON", help="Restrict by a key dict or a list of them.")
json_opt = click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
config_opt = click.option("--config", "config_path", type=click.Path(dir_okay=False),
                          help="dj_orchestrate.toml (default: ./dj_orchestrate.toml, pyproject.toml)")


def max_attempts_opt(help: str) -> Callable:
    return click.option("--max-attempts", default=Policy.max_attempts, show_default=True, help=help)


def policy_options(f: Callable) -> Callable:
    """How workers make keys: what ``run`` and ``serve`` pass on to every worker they start."""
    f = click.option("--retries", default=Policy.retries, show_default=True, help="Retry a failing make this many times.")(f)
    f = click.option("--backoff", default=Policy.backoff, show_default=True, help="Seconds before the first retry; doubles.")(f)
    f = max_attempts_opt("Attempts a key may lose to dead workers before it becomes an error.")(f)
    f = click.option("--grace", default=Settings.grace, show_default=True,
                     help="Seconds the key in flight may finish after SIGTERM before it is rolled back.")(f)
    f = click.option("--max-batch", default=Settings.max_batch, show_default=True, help="Most keys one claim reserves.")(f)
    f = click.option("--timeout", multiple=True, metavar="[TABLE=]SECONDS",
                     help="A make running longer is stopped and its key becomes an error (retried under --retries); "
                          "TABLE=SECONDS for one table (repeatable). Default: none, or `timeout` in the config.")(f)
    f = click.option("--order", type=click.Choice(ORDERS), default=Settings.order, show_default=True,
                     help="Which ready key a worker takes first: upstream keys (most parallelism), downstream "
                          "work of made keys (results early); or no pipelining: levels (level by level), declared "
                          "(one table at a time in the order the module defines them, for makes that read tables "
                          "in ways not detected).")(f)
    return f


def work_options(f: Callable) -> Callable:
    """Every argument of ``work``: the command line each backend gives its workers
    (``work.WorkSpec``)."""
    for option in reversed([
        pipeline_arg, table_opt, key_opt,
        click.option("--enqueue", is_flag=True, help="First enqueue the tables' missing keys (downstream pull workers)."),
        click.option("--run-id", help="The run this worker belongs to (for the ledger)."),
        click.option("--shard-index", type=int, envvar="JOB_COMPLETION_INDEX", show_envvar=True,
                     help="This worker's shard (or pull-worker) number; default: a Kubernetes Indexed Job's index."),
        click.option("--fixed-shard", is_flag=True, help="Claim only the key range of the shard in the ledger."),
        click.option("--log-path", default="", help="Where this worker's output goes (recorded with errors)."),
        click.option("--backend-job-id", default=None, help="Scheduler job id (default: from SLURM/Kubernetes env)."),
        policy_options,
    ]):
        f = option(f)
    return f


def render_options(f: Callable) -> Callable:
    """What every ``<backend> render`` takes: the same pipeline, tables, keys and config
    as ``run``, and where to write."""
    for option in reversed([pipeline_arg, table_opt, key_opt, config_opt]):
        f = option(f)
    return f


def worker_settings(retries: int, backoff: float, max_attempts: int, grace: float, max_batch: int, order: str,
                    timeout: tuple[str, ...] = (), **extra: Any) -> Settings:
    """``policy_options`` as given, checked: a worker's settings."""
    for name, value in (("--retries", retries), ("--max-attempts", max_attempts - 1), ("--max-batch", max_batch - 1)):
        if value < 0:
            raise UsageError(f"{name} is too small", "use a positive number")
    return Settings(max_batch=max_batch, order=order, grace=grace, policy=Policy(retries, backoff, max_attempts),
                    timeout=dict(map(parse_timeout, timeout)), **extra)


def parse_timeout(text: str) -> tuple[str, float]:
    """``--timeout 30`` (every table: key "") or ``--timeout Table=30``."""
    table, _, seconds = text.rpartition("=")
    try:
        value = float(seconds)
    except ValueError:
        value = 0.0
    if not value > 0 or value == float("inf"):
        raise UsageError(f"--timeout {text!r}: the seconds must be a positive number", "e.g. --timeout 3600 or --timeout Sorting=7200")
    return table, value
