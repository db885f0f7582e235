"""What the tasks of a rendered Airflow DAG run, in the Airflow worker's process.

Deliberately small and light (the standard library and ``airflow.sdk``, nothing of
DataJoint): the DAG file imports it at parse time. Each step is one ``dj-orchestrate``
command run as a subprocess in the lab's Python (the DAG's ``python``, else this
worker's own), so that the pipeline's packages never have to live in Airflow's
environment and a worker that crashes is a failed task, not a crashed Airflow worker.

In a backend mode (slurm, dask, kubernetes) ``submit`` hands the table's keys to that
backend and ``WaitForTable`` defers to ``TableProgress``, a trigger that asks
``dj-orchestrate airflow progress`` from the triggerer, so that no worker slot is held
while the backend's workers make the keys.

The database credentials come from the Airflow connection the DAG names, resolved
here at run time (in the worker or the triggerer) into ``DJ_*`` variables of the
subprocess only; without that connection, the worker's own DataJoint configuration
applies. Nothing here prints them, and the trigger's serialised arguments hold none.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import os
import subprocess
import sys
import time
from typing import Any, AsyncIterator

from airflow.sdk import BaseOperator, Connection, conf, get_current_context
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowNotFoundException, AirflowSkipException
from airflow.triggers.base import BaseTrigger, TriggerEvent

BAD_INPUT = 2  # dj-orchestrate's exit code for bad input: retrying cannot help
BACKENDS = {"mysql": "mysql", "mariadb": "mysql", "postgres": "postgresql", "postgresql": "postgresql"}
GRACE = 30  # seconds a stopped worker gets to release its keys
BACKSTOP = 60  # seconds past its own deadline a trigger has to fire before Airflow's deferral timeout does


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
                   "--log-path", log_path(ti), *_timeout_args(settings)], python)


def submit(pipeline: dict[str, Any], table: str, settings: dict[str, Any], slots: list[dict[str, Any]]) -> str:
    """A backend mode's launch: ``run --backend MODE --no-wait`` for the table (within
    the run's ``key`` param), which returns once the backend accepted the workers. The
    run id, for the wait step. No slots (nothing to make, or a table left out): skipped."""
    if not slots:
        raise AirflowSkipException(f"{table}: nothing to make")
    params = get_current_context()["params"]
    out = _dj(pipeline, ["run", pipeline["pipeline"], "--table", table, "--backend", settings["mode"], "--no-wait",
                         "--json", "--shard-size", str(settings["shard_size"]), *_key_args(params),
                         *_timeout_args(settings), *_config_args(pipeline)], settings.get("python"))
    return json.loads(out)["run_id"]


class WaitForTable(BaseOperator):
    """A backend mode's wait: defers at once to ``TableProgress`` (the Airflow worker is
    free while the backend makes the keys) and fails when the run's workers ended with
    keys of the table not made, or when ``wait_timeout_s`` has passed (the workers go
    on). Failed keys do not fail it: ``check`` names them."""

    template_fields = ("run",)

    def __init__(self, *, pipeline: dict[str, Any], table: str, settings: dict[str, Any], run: Any, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.pipeline, self.table, self.settings, self.run = pipeline, table, settings, run

    def execute(self, context: Any) -> None:
        key = context["params"].get("key")
        timeout = self.settings.get("wait_timeout_s")  # else it waits as long as the scheduler may take
        deadline = time.time() + timeout if timeout else None  # absolute: the same after the triggerer restarts
        # Both: the trigger fails the wait at its deadline with a message saying what to do (`dags test`,
        # which runs it inline, knows no other); Airflow's timeout, a little later, is the backstop a real
        # scheduler enforces when the trigger cannot fire (a triggerer down, a progress call that hangs).
        self.defer(trigger=TableProgress(self.pipeline, self.table, self.run, json.dumps(key) if key else None,
                                         self.settings["poll_s"], self.settings.get("python"), deadline),
                   method_name="finish", timeout=datetime.timedelta(seconds=timeout + BACKSTOP) if timeout else None)

    def finish(self, context: Any, event: dict[str, Any]) -> None:
        if "refused" in event:
            raise AirflowFailException(event["refused"])
        if "timeout" in event:
            left = "an unknown number of" if event["left"] is None else event["left"]
            raise AirflowFailException(
                f"{self.table}: waited wait_timeout_s = {self.settings['wait_timeout_s']} s for run {self.run} and "
                f"{left} keys are still not made (its workers go on): raise wait_timeout_s in "
                f"[airflow.tables.{self.table}] or [airflow] and render the DAG again, or see `dj-orchestrate status`")
        print(f"{self.table} (run {self.run}): {event['done']} made, {event['error']} failed, {event['ignore']} ignored, "
              f"{event['left']} left")
        if event["left"]:
            raise AirflowFailException(f"{self.table}: {event['left']} keys not made: the workers of run {self.run} ended "
                                       "(`dj-orchestrate status` shows the run, `dj-orchestrate errors` the failed keys)")


class TableProgress(BaseTrigger):
    """Runs in the triggerer: ``dj-orchestrate airflow progress`` every ``poll_s``
    seconds until the table is finished (see ``backends.airflow.steps.progress``), or until
    ``deadline`` (epoch seconds, if any) has passed: then a ``timeout`` event with the
    keys left at the last answer. Its arguments, which Airflow stores, are the DAG's
    own values, the run id and the deadline: the credentials are resolved from the
    connection each time it starts."""

    def __init__(self, pipeline: dict[str, Any], table: str, run: str, key: str | None = None, poll_s: float = 30,
                 python: str | None = None, deadline: float | None = None) -> None:
        super().__init__()
        self.pipeline, self.table, self.run_id, self.key, self.poll_s, self.python = pipeline, table, run, key, poll_s, python
        self.deadline = deadline

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{__name__}.{type(self).__name__}",
                {"pipeline": self.pipeline, "table": self.table, "run": self.run_id, "key": self.key,
                 "poll_s": self.poll_s, "python": self.python, "deadline": self.deadline})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        command = _command(self.pipeline, ["airflow", "progress", self.pipeline["pipeline"], "--table", self.table,
                                           "--run", self.run_id, *(["--key", self.key] if self.key else []),
                                           *_config_args(self.pipeline)], self.python)
        env = {**os.environ, **_connection_env(self.pipeline["conn_id"], await _aconnection(self.pipeline["conn_id"]))}
        left = None  # keys left at the last answer
        while True:
            proc = await asyncio.create_subprocess_exec(*command, stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE, env=env)
            out, err = await proc.communicate()
            if proc.returncode == 0:
                state = json.loads(out)
                if state["finished"]:
                    yield TriggerEvent(state)
                    return
                left = state["left"]
                self.log.info("%s: %d made, %d left; the run's workers %s", self.table, state["done"], state["left"],
                              {True: "ended", False: "run", None: "did not answer"}[state["workers_ended"]])
            elif proc.returncode == BAD_INPUT:  # asking again cannot help
                yield TriggerEvent({"refused": err.decode(errors="replace").strip()})
                return
            else:  # a database or scheduler that does not answer now may later
                self.log.warning("dj-orchestrate airflow progress exited with status %d: %s", proc.returncode,
                                 err.decode(errors="replace").strip()[-1000:])
            if self.deadline is not None and time.time() >= self.deadline:
                yield TriggerEvent({"timeout": self.deadline, "left": left})
                return
            # the last look is at the deadline, not up to poll_s after it
            await asyncio.sleep(self.poll_s if self.deadline is None else min(self.poll_s, self.deadline - time.time()))


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
        conn = None
    return _connection_env(conn_id, conn)


async def _aconnection(conn_id: str) -> Connection | None:
    """The connection, as the triggerer's event loop may ask for it (None: no such one)."""
    try:
        return await Connection.async_get(conn_id)
    except AirflowNotFoundException:
        return None


def _connection_env(conn_id: str, conn: Connection | None) -> dict[str, str]:
    """``DJ_*`` from a connection (found in the worker or the triggerer alike)."""
    if conn is None:
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
    extra = json.loads(conn.extra or "{}")  # (not extra_dejson: its masking call blocks in the triggerer's loop)
    if "use_tls" in extra:
        env["DJ_USE_TLS"] = str(extra["use_tls"]).lower()
    return env


def _timeout_args(settings: dict[str, Any]) -> list[str]:
    """The table's ``timeout`` from ``[airflow]``, for its worker (or its backend's run)."""
    return ["--timeout", str(settings["timeout"])] if settings.get("timeout") else []


def _key_args(params: dict[str, Any]) -> list[str]:
    key = params.get("key")
    return ["--key", json.dumps(key)] if key else []


def _config_args(pipeline: dict[str, Any]) -> list[str]:
    """The config file the DAG was rendered with (the backends' settings), if any."""
    return ["--config", pipeline["config"]] if pipeline.get("config") else []


def _command(pipeline: dict[str, Any], args: list[str], python: str | None = None) -> list[str]:
    """``dj-orchestrate ARGS`` in the lab's Python (the table's, the DAG's, else this one)."""
    return [python or pipeline.get("python") or sys.executable, "-m", "dj_orchestrate", *args]


def _dj(pipeline: dict[str, Any], args: list[str], python: str | None = None, fail_on: tuple[int, ...] = (BAD_INPUT,)) -> str:
    """Run ``dj-orchestrate ARGS`` in the lab's Python; its stdout is echoed to the task
    log and returned, its stderr goes to the task log directly. An exit code in
    ``fail_on`` fails the task for good; any other failure is Airflow's to retry. The
    subprocess is stopped (it then releases its keys) when the task is."""
    env = {**os.environ, **database_env(pipeline["conn_id"])}
    proc = subprocess.Popen(_command(pipeline, args, python), stdout=subprocess.PIPE, text=True, env=env)
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
