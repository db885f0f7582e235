"""The SLURM and Kubernetes helpers: render, and the conductor's commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from .. import backends, serve
from ..config import read as read_config, timeouts
from ..entry import friendly
from ..errors import UsageError
from ..options import render_options
from ..runs import render_request, warn_unknown_tables
from .flags import render_flags


@click.group()
def slurm() -> None:
    """SLURM helpers."""


@slurm.command("render")
@render_options
@click.option("--out", "out_dir", default="slurm-jobs", show_default=True, type=click.Path(file_okay=False))
@friendly
def slurm_render(pipeline_spec: str, tables: tuple[str, ...], key_json: str | None, config_path: str | None,
                 out_dir: str) -> None:
    """Write the sbatch scripts and a submit.sh, for review or for a login node without Python."""
    from ..backends.slurm import SlurmBackend

    backend = SlurmBackend.from_config(config_path)
    request = render_request(pipeline_spec, tables, key_json, out_dir)
    request.worker.timeout = timeouts({}, backend.config, request.tables)
    warn_unknown_tables(backend.config, pipeline_spec)
    for path in backend.render(request, Path(out_dir)):
        click.echo(str(path))


def _kubernetes() -> Any:
    """The Kubernetes backend package; without its client package, the error names the extra."""
    backends.get("kubernetes")
    from ..backends import kubernetes

    return kubernetes


@click.group()
def k8s() -> None:
    """Kubernetes helpers."""


@k8s.command("render")
@render_options
@click.option("--out", "out_dir", default="k8s", show_default=True, type=click.Path(file_okay=False))
@render_flags("kubernetes")
@click.option("--serve", "always_on", is_flag=True,
              help="Also write OUT/serve/: a Deployment running `dj-orchestrate serve --backend kubernetes` "
                   "(its config in a ConfigMap), its ServiceAccount, and a Role for Jobs in the namespace only.")
@friendly
def k8s_render(pipeline_spec: str, tables: tuple[str, ...], key_json: str | None, config_path: str | None,
               out_dir: str, always_on: bool, **flags: str | None) -> None:
    """Write the manifests that run the pipeline with `kubectl apply -f OUT`: the
    conductor and its RBAC, and one Indexed Job per table; with --serve, those that
    keep it computed as data arrives (`kubectl apply -f OUT/serve`). Writes nothing to
    the database. They target Kubernetes 1.35 (the oldest minor release upstream
    maintains), or cluster_version in [kubernetes] (1.28 at the oldest)."""
    backend = _kubernetes().KubernetesBackend.from_config(config_path, **flags)
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
