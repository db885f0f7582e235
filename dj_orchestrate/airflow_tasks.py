"""What the tasks of a rendered Airflow DAG run, in the Airflow worker's process.

Deliberately small and light (the standard library and ``airflow.sdk``, nothing of
DataJoint): the DAG file imports it at parse time. Each step is one ``dj-orchestrate``
command run as a subprocess in the lab's Python (the DAG's ``python``, else this
worker's own), so that the pipeline's packages never have to live in Airflow's
environment and a worker that crashes is a failed task, not a crashed Airflow worker.

The database credentials come from the Airflow connection the DAG names, resolved
here at run time into ``DJ_*`` variables of the subprocess only; without that
connection, the worker's own DataJoint configuration applies. Nothing here prints them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from airflow.sdk import Connection, conf, get_current_context
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowNotFoundException

BAD_INPUT = 2  # dj-orchestrate's exit code for bad input: retrying cannot help
BACKENDS = {"mysql": "mysql", "mariadb": "mysql", "postgres": "postgresql", "postgresql": "postgresql"}
GRACE = 30  # seconds a stopped worker gets to release its keys


def enqueue(pipeline: dict[str, Any], table: str, settings: dict[str, Any]) -> list[dict[str, Any]]:
    """Enqueue the table's missing keys (within the run's ``key`` param); one slot per
    shard, never more than this Airflow's ``max_map_length``. A table left out by the
    ``tables`` param gets none, and its work task is skipped."""
    params = get_current_context()["params"]
    if params.get("tables") and table not in params["tables"]:
        print(f"{table} is not among the tables of this run ({', '.join(params['tables'])}): nothing to do")
        return []
    limit = min(settings["max_shards"], conf.getint("core", "max_map_length", fallback=1024))
    out = _dj(pipeline, ["airflow", "enqueue", pipeline["pipeline"], "--table", table, *_key_args(params),
                         "--shard-size", str(settings["shard_size"]), "--max-shards", str(limit)])
    shards = json.loads(out)["shards"]
    return [{"index": i, "label": f"{table} shard {i + 1}/{shards}"} for i in range(shards)]


def work(pipeline: dict[str, Any], table: str, settings: dict[str, Any], slot: dict[str, Any]) -> None:
    """One worker for the table: claims pending keys until none are left. Its
    reservations carry this task's identity and log file. A retry first releases what
    the previous try's worker held (its connection is gone)."""
    ti = get_current_context()["ti"]
    python = settings.get("python")
    if ti.try_number > 1:
        _dj(pipeline, ["reconcile", pipeline["pipeline"], "--table", table], python)
    _dj(pipeline, ["work", pipeline["pipeline"], "--table", table, "--shard-index", str(slot["index"]),
                   "--backend-job-id", f"airflow:{ti.dag_id}/{ti.run_id}/{ti.task_id}/{ti.map_index}",
                   "--log-path", log_path(ti)], python)


def check(pipeline: dict[str, Any], tables: list[str]) -> None:
    """Fail the run when keys of its tables ended in error (naming them) or were not
    made; the keys stay recorded in the jobs tables."""
    params = get_current_context()["params"]
    chosen = [t for t in tables if not params.get("tables") or t in params["tables"]]
    table_args = [arg for t in chosen for arg in ("--table", t)]
    _dj(pipeline, ["airflow", "check", pipeline["pipeline"], *table_args, *_key_args(params)], fail_on=(1, BAD_INPUT))


def log_path(ti: Any) -> str:
    """The task's log file, as Airflow names it (``[logging] log_filename_template``)."""
    import jinja2

    template = conf.get("logging", "log_filename_template")
    try:
        name = jinja2.Template(template).render(ti=ti, try_number=ti.try_number)
    except Exception:  # a template with fields a running task does not have
        return ""
    return os.path.join(conf.get("logging", "base_log_folder"), name)


def database_env(conn_id: str) -> dict[str, str]:
    """``DJ_*`` for the subprocess from the Airflow connection; empty when there is no
    such connection (then DataJoint's own configuration on this worker applies)."""
    try:
        conn = Connection.get(conn_id)
    except AirflowNotFoundException:
        print(f"no Airflow connection {conn_id!r}: using this worker's DataJoint configuration (DJ_*, datajoint.json)")
        return {}
    backend = BACKENDS.get(conn.conn_type or "")
    if backend is None:
        raise AirflowFailException(f"Airflow connection {conn_id!r} is of type {conn.conn_type!r}; "
                                   "dj-orchestrate needs a mysql or postgres connection")
    env = {"DJ_BACKEND": backend, "DJ_HOST": conn.host or "", "DJ_USER": conn.login or "",
           "DJ_PASS": conn.password or "", "DJO_EMBEDDED_DIR": ""}
    if conn.port:
        env["DJ_PORT"] = str(conn.port)
    if "use_tls" in conn.extra_dejson:
        env["DJ_USE_TLS"] = str(conn.extra_dejson["use_tls"]).lower()
    return env


def _key_args(params: dict[str, Any]) -> list[str]:
    key = params.get("key")
    return ["--key", json.dumps(key)] if key else []


def _dj(pipeline: dict[str, Any], args: list[str], python: str | None = None, fail_on: tuple[int, ...] = (BAD_INPUT,)) -> str:
    """Run ``dj-orchestrate ARGS`` in the lab's Python; its stdout is echoed to the task
    log and returned, its stderr goes to the task log directly. An exit code in
    ``fail_on`` fails the task for good; any other failure is Airflow's to retry. The
    subprocess is stopped (it then releases its keys) when the task is."""
    command = [python or pipeline.get("python") or sys.executable, "-m", "dj_orchestrate", *args]
    env = {**os.environ, **database_env(pipeline["conn_id"])}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    lines = []
    try:
        for line in proc.stdout:
            print(line, end="", flush=True)
            lines.append(line)
        code = proc.wait()
    finally:
        if proc.poll() is None:  # the task was stopped: stop the worker, which releases its keys
            proc.terminate()
            try:
                proc.wait(GRACE)
            except subprocess.TimeoutExpired:
                proc.kill()
    output = "".join(lines)
    if code in fail_on:
        raise AirflowFailException(output.strip() or f"dj-orchestrate {args[0]} exited with status {code}")
    if code:
        raise AirflowException(f"dj-orchestrate {args[0]} exited with status {code}; see the lines above")
    return output
