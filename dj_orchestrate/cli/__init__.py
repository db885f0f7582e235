"""The ``dj-orchestrate`` command.

Exit codes: 0 every attempted key succeeded; 1 some keys failed (they are recorded);
2 bad input or configuration (one line saying what and how to fix it; nothing written).
"""

from __future__ import annotations

import click

from .. import __version__
from ..dashboard import command as dashboard
from . import airflow, keys, running, schedulers


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="dj-orchestrate")
@click.option("--debug", is_flag=True, help="Show the traceback behind an error.")
def main(debug: bool) -> None:
    """Run DataJoint pipelines at cluster scale: plan, run, watch, and fix failed keys.

    PIPELINE is an importable module (my_lab.pipeline) or a path to a .py file. The
    database is DataJoint's own configuration (DJ_HOST, DJ_USER, DJ_PASS, DJ_BACKEND,
    datajoint.json); with none, an embedded PostgreSQL in ./.dj_orchestrate/pgdata.
    """


for command in (running.plan, running.run, running.serve_command, running.health, running.work, running.demo,
                keys.status, keys.errors, keys.retry, keys.ignore, keys.reconcile,
                schedulers.slurm, schedulers.k8s, airflow.airflow, dashboard):
    main.add_command(command)
