"""Airflow: a DAG file that users drop into their dags folder.

``dj-orchestrate airflow render`` writes one DAG per pipeline: a task group per
auto-populated table, upstream first, each an ``enqueue`` task (the table's missing
keys into its jobs table; returns the shard slots), then a ``check`` task that fails
the run when keys ended in error. Where a table's work runs is its mode: ``worker``
maps a ``work`` task over the slots (one ``dj-orchestrate work`` each, in the Airflow
worker); ``slurm``, ``dask`` and ``kubernetes`` have a ``submit`` task (``run --backend
B --no-wait``) and a ``wait`` task that defers to a trigger, which asks ``airflow
progress`` until the table's keys are made or the run's workers are gone, holding no
worker slot meanwhile. The tasks run ``dj_orchestrate.airflow_tasks`` in the Airflow
worker (and triggerer), which runs ``dj-orchestrate`` in the lab's Python.

The file is data and wiring only: it imports ``airflow.sdk`` and that small runtime,
never DataJoint or the pipeline, makes no database call at parse time, and holds no
credential (it names an Airflow connection, resolved on the worker at run time). The
jobs tables stay the truth; Airflow retries only relaunch workers.

Here: the ``[airflow]`` settings (``settings``), the rendering (``render``), and the
``enqueue``/``progress``/``check`` steps that the DAG's tasks run through the CLI, in
the lab's Python, without Airflow (``steps``).
"""

from .render import DagOptions, render
from .settings import (MODES, AirflowSettings, check_dag_id, check_mode, check_schedule, default_dag_id, load_config,
                       require_airflow)
from .steps import enqueue, progress, shard_count, unfinished

__all__ = ["MODES", "AirflowSettings", "DagOptions", "check_dag_id", "check_mode", "check_schedule", "default_dag_id",
           "enqueue", "load_config", "progress", "render", "require_airflow", "shard_count", "unfinished"]
