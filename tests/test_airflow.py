"""The Airflow DAG on real Airflow 3 (the ``airflow`` extra), its metadata on SQLite:
``airflow db migrate`` into a temporary AIRFLOW_HOME once per session, then
``airflow dags test`` as a user runs it. Every Airflow command is its own process.

``dags test`` runs a DAG's tasks one after the other in one process, and a deferred
task's trigger inline: a run of the demo pipeline costs a Python start per task, so
there are only three (MariaDB, PostgreSQL, and a run restricted by the DAG's params, on
MariaDB); the backend modes run the two-table chain pipeline, once per mode and database
(slurm on both, dask on PostgreSQL).
"""

from __future__ import annotations

import atexit
import datetime
import importlib.util
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

import pytest
from conftest import DATABASES, PIPELINES, ROOT, jobs_rows, makes, require, seed, service, wait_for
from test_dask import dask_cluster  # noqa: F401  (a real scheduler and workers, for --mode dask)
from test_slurm import cluster  # noqa: F401  (the SLURM cluster fixture, for --mode slurm)

DEMO = "dj_orchestrate.examples.demo"
CHAIN = str(PIPELINES / "chain.py")
DAG_ID = "dj_orchestrate_examples_demo"
DEMO_TABLES = ("Preprocess", "Behavior", "SpikeSorting", "QualityMetrics", "SessionSummary")
AIRFLOW = importlib.util.find_spec("airflow") is not None


@pytest.fixture(autouse=True)
def _airflow_installed() -> None:
    require(AIRFLOW, "apache-airflow (pip install 'dj-orchestrate[airflow]')")


class Airflow:
    """One AIRFLOW_HOME (SQLite metadata) and how to run ``airflow`` in it."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.dags = home / "dags"
        self.dags.mkdir(exist_ok=True)

    def env(self, extra: dict | None = None) -> dict:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("DJ_", "DJO_", "AIRFLOW"))}
        return {**base, "AIRFLOW_HOME": str(self.home), "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "false", "PYTHONPATH": os.pathsep.join([str(ROOT), str(PIPELINES)]),
                **(extra or {})}

    def run(self, *args: str, env: dict | None = None, timeout: float = 1000) -> subprocess.CompletedProcess:
        """A hang guard only: a `dags test` of the demo takes minutes on a loaded 2-core machine."""
        return subprocess.run([sys.executable, "-m", "airflow", *args], env=self.env(env), capture_output=True,
                              text=True, timeout=timeout, cwd=self.home)

    def python(self, code: str, env: dict | None = None) -> dict:
        """Run ``code`` in a fresh Python with this AIRFLOW_HOME; its last stdout line is JSON."""
        out = subprocess.run([sys.executable, "-c", code], env=self.env(env), capture_output=True, text=True,
                             timeout=120, cwd=self.home)
        assert out.returncode == 0, out.stdout + out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in (self.home / "logs").rglob("*") if p.is_file())


@service("airflow")
def migrated() -> Airflow:
    """An AIRFLOW_HOME with its metadata database made (minutes on a loaded machine:
    before the first test, see conftest.service), removed when the tests end."""
    af = Airflow(Path(tempfile.mkdtemp(prefix="djo-airflow-")))
    atexit.register(shutil.rmtree, af.home, ignore_errors=True)
    out = af.run("db", "migrate", timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return af


@pytest.fixture(scope="session")
def airflow() -> Airflow:
    return migrated()


PARSE = """
import json, sys, time
from airflow.dag_processing.dagbag import DagBag
DagBag(dag_folder=sys.argv[1])  # warm: Airflow's own lazy imports, as in a running DAG processor
start, cpu = time.perf_counter(), time.process_time()
bag = DagBag(dag_folder=sys.argv[1])
seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
from airflow.sdk import conf
ARGS = ("pool", "pool_slots", "max_active_tis_per_dag", "retries", "trigger_rule")
tasks = {dag_id: {t.task_id: {"type": type(t).__name__, "upstream": sorted(t.upstream_task_ids),
                              **{a: str(getattr(getattr(t, a), "value", getattr(t, a))) for a in ARGS}} for t in dag.tasks}
         for dag_id, dag in bag.dags.items()}
params = {dag_id: {k: p.schema for k, p in dag.params.items()} for dag_id, dag in bag.dags.items()}
print(json.dumps({"errors": bag.import_errors, "seconds": seconds, "cpu": cpu, "tasks": tasks, "params": params,
                  "modules": sorted(sys.modules), "max_map_length": conf.getint("core", "max_map_length")}, default=str))
"""


def parse(airflow: Airflow, path: Path) -> dict:
    """Load ``path`` in a DagBag with the database unreachable (DJ_HOST points at a closed port)."""
    return airflow.python(PARSE.replace("sys.argv[1]", repr(str(path))),
                          env={"DJ_HOST": "127.0.0.1", "DJ_PORT": "1", "DJ_USER": "nobody"})


def render(db, *args: str, env: dict | None = None):
    return db.cli("airflow", "render", *args, env={"DJO_DEMO_SCHEMA": db.schema, **(env or {})})


# ---------------------------------------------------------------- rendering
def test_checked_in_dag_is_a_fresh_render_and_check_finds_stale_files(db, tmp_path):
    """dags/ at the repository root is what render writes for the demo pipeline; --check
    writes nothing and exits 1 for a stale or missing file."""
    fresh = render(db, DEMO, "--out", str(ROOT / "dags"), "--check")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert "up to date" in fresh.stdout

    missing = render(db, DEMO, "--out", str(tmp_path), "--check")
    assert missing.returncode == 1 and "missing" in missing.stderr and not list(tmp_path.iterdir())
    written = render(db, DEMO, "--out", str(tmp_path), "--schedule", "0 2 * * *", "--dag-id", "nightly")
    assert written.returncode == 0, written.stderr
    path = tmp_path / "nightly.py"
    assert written.stdout.strip() == str(path)
    text = path.read_text()
    assert 'schedule="0 2 * * *"' in text and "--schedule '0 2 * * *'" in text  # and how to make it again
    path.write_text(text.replace("0 2 * * *", "0 3 * * *"))
    stale = render(db, DEMO, "--out", str(tmp_path), "--schedule", "0 2 * * *", "--dag-id", "nightly", "--check")
    assert stale.returncode == 1 and "stale" in stale.stderr
    assert "0 3 * * *" in path.read_text()  # --check wrote nothing


def test_dag_structure_pools_and_params_from_the_config(db, airflow, tmp_path):
    """The demo pipeline's DAG as Airflow loads it: a group per table wired by the foreign
    keys (a fan-in included), mapped work tasks, the check task last; the pool, its slots,
    concurrency and retries from ``[airflow]`` / ``[airflow.tables.X]``; the trigger form's
    params."""
    config = tmp_path / "dj_orchestrate.toml"
    config.write_text('[airflow]\nmax_active_tis_per_dag = 4\nretries = 1\n\n'
                      '[airflow.tables.SpikeSorting]\npool = "gpu"\npool_slots = 2\n')
    out = render(db, DEMO, "--out", str(tmp_path / "dags"), "--config", str(config))
    assert out.returncode == 0, out.stderr
    text = (tmp_path / "dags" / f"{DAG_ID}.py").read_text()
    assert "airflow pools set gpu <slots>" in text  # the docstring says which pools to create

    parsed = parse(airflow, tmp_path / "dags" / f"{DAG_ID}.py")
    assert parsed["errors"] == {}
    tasks = parsed["tasks"][DAG_ID]
    assert sorted(tasks) == sorted([f"{t}.{step}" for t in DEMO_TABLES for step in ("enqueue", "work")] + ["check"])
    upstream = {name: tasks[name]["upstream"] for name in tasks if name.endswith(".enqueue")}
    assert upstream == {"Preprocess.enqueue": [], "Behavior.enqueue": [], "SpikeSorting.enqueue": ["Preprocess.work"],
                        "QualityMetrics.enqueue": ["SpikeSorting.work"],
                        "SessionSummary.enqueue": ["Behavior.work", "QualityMetrics.work"]}  # the fan-in
    assert tasks["check"]["upstream"] == ["SessionSummary.work"] and tasks["check"]["trigger_rule"] == "all_done"
    for t in DEMO_TABLES:
        work = tasks[f"{t}.work"]
        assert work["type"].endswith("MappedOperator") and work["upstream"] == [f"{t}.enqueue"]
        assert (work["max_active_tis_per_dag"], work["retries"]) == ("4", "1")
        expected_pool = ("gpu", "2") if t == "SpikeSorting" else ("default_pool", "1")
        assert (work["pool"], work["pool_slots"]) == expected_pool, t
    params = parsed["params"][DAG_ID]
    assert params["key"]["type"] == ["null", "object", "array"]
    assert sorted(params["tables"]["items"]["enum"]) == sorted(DEMO_TABLES)


@pytest.mark.parametrize("args, message", [
    (["--schedule", "0 25 * * *"], "is not a cron expression"),
    (["--table", "Nope"], "unknown table 'Nope'"),
    (["--dag-id", "no spaces"], "is not an Airflow DAG id"),
])
def test_render_bad_input_one_line_exit_2_nothing_written(db, tmp_path, args, message):
    out = render(db, DEMO, "--out", str(tmp_path / "dags"), *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "dags").exists()


def test_mode_without_its_backend_names_the_extra(tmp_path, monkeypatch):
    """``--mode dask`` where distributed is missing (hidden here: this environment has
    it): one line naming the extra, exit 2, nothing written, before any database call."""
    from click.testing import CliRunner

    from dj_orchestrate.cli import main

    for name in [m for m in sys.modules if (m + ".").startswith("dj_orchestrate.backends.dask.")]:
        monkeypatch.delitem(sys.modules, name)  # the dask package and its modules: imported afresh
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now fails as if absent
    out = CliRunner().invoke(main, ["airflow", "render", DEMO, "--out", str(tmp_path / "d"), "--mode", "dask"])
    assert out.exit_code == 2, out.output
    assert "the dask backend needs 'distributed'" in out.output and "pip install 'dj-orchestrate[dask]'" in out.output
    assert len(out.output.strip().splitlines()) <= 2 and not (tmp_path / "d").exists()


def test_render_unknown_pipeline(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dj_orchestrate", "airflow", "render", "no_such.pipeline", "--out", str(tmp_path / "d")],
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT), **DATABASES["mysql"]}, cwd=tmp_path)
    assert out.returncode == 2 and "no_such" in out.stderr and not (tmp_path / "d").exists()


def test_render_without_airflow_names_the_extra(tmp_path, monkeypatch):
    """Missing apache-airflow, simulated (this environment has it): the installed
    distribution's lookup is made to fail as it does where the package is absent."""
    import importlib.metadata

    from click.testing import CliRunner

    from dj_orchestrate.cli import main

    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", absent)
    out = CliRunner().invoke(main, ["airflow", "render", DEMO, "--out", str(tmp_path / "d")])
    assert out.exit_code == 2
    assert "apache-airflow is not installed" in out.output and "pip install 'dj-orchestrate[airflow]'" in out.output
    assert not (tmp_path / "d").exists()


def test_tests_and_the_compose_image_run_the_same_airflow():
    """The Airflow these tests ran on is the one docker/airflow/Dockerfile builds FROM and
    the ``dev`` extra pins, so a DAG that passes here runs in `docker compose --profile
    airflow`."""
    import importlib.metadata

    image = re.search(r"^FROM apache/airflow:(\S+)", (ROOT / "docker/airflow/Dockerfile").read_text(), re.M).group(1)
    assert re.search(rf'^dev = \["apache-airflow=={re.escape(image)}"', (ROOT / "pyproject.toml").read_text(), re.M)
    assert importlib.metadata.version("apache-airflow") == image


def test_shards_stay_within_max_map_length():
    from dj_orchestrate.backends.airflow import shard_count

    assert shard_count(0, 1000, 1024) == 0
    assert shard_count(2500, 1000, 1024) == 3
    assert shard_count(10_000_000, 1000, 1024) == 1024  # shards grow instead


# ------------------------------------------------------------- 50 tables
def wide_pipeline(n: int) -> str:
    """A generated pipeline: Root, then T00..T{n-1}, each after the one before and every
    fifth also after the one three back (a fan-in)."""
    parts = ["import os", "import datajoint as dj", 'schema = dj.Schema(os.environ["DJO_TEST_SCHEMA"])',
             textwrap.dedent('''
             @schema
             class Root(dj.Manual):
                 definition = """
                 root_id : int32
                 """''')]
    for i in range(n):
        parents = ["Root"] if i == 0 else [f"T{i - 1:02d}"] + ([f"T{i - 3:02d}"] if i % 5 == 0 and i >= 3 else [])
        refs = "".join(f"    -> {p}\n" for p in parents)
        parts.append(f'\n@schema\nclass T{i:02d}(dj.Computed):\n    definition = """\n{refs}    ---\n    v : int32\n    """\n\n'
                     f'    def make(self, key):\n        self.insert1({{**key, "v": 1}})\n')
    return "\n".join(parts) + "\n"


@pytest.mark.slow
def test_fifty_table_dag_parses_fast_without_database_and_maps_within_limit(db, airflow, tmp_path):
    path = tmp_path / "wide.py"
    path.write_text(wide_pipeline(50))
    out = render(db, str(path), "--out", str(tmp_path / "dags"))
    assert out.returncode == 0, out.stderr
    dag_file = tmp_path / "dags" / "wide.py"

    parsed = parse(airflow, dag_file)
    assert parsed["errors"] == {}
    tasks = parsed["tasks"]["wide"]
    assert len(tasks) == 50 * 2 + 1
    assert all(tasks[f"T{i:02d}.work"]["type"].endswith("MappedOperator") for i in range(50))
    # the parse's own cost: CPU seconds, as wall time on this shared test machine also
    # counts the waits for a core that other processes hold
    assert parsed["cpu"] < 1.0, (parsed["cpu"], parsed["seconds"])
    assert "datajoint" not in parsed["modules"] and "wide" not in parsed["modules"]  # nor the pipeline
    assert "max_shards\": 1024" in dag_file.read_text() and parsed["max_map_length"] >= 1024

    # the DAG's enqueue step caps its shards, whatever the key count
    from dj_orchestrate import pipeline

    sys.modules.pop("wide", None)
    pipeline.load(str(path)).Root.insert(({"root_id": i} for i in range(1500)))
    step = db.cli("airflow", "enqueue", str(path), "--table", "T00", "--shard-size", "1")
    assert step.returncode == 0, step.stderr
    assert json.loads(step.stdout) == {"table": "T00", "enqueued": 1500, "pending": 1500, "shards": 1024}


# ------------------------------------------------------------ end to end
def load_demo(schema: str, name: str):
    """The demo pipeline against ``schema``, as a module of its own."""
    os.environ["DJO_DEMO_SCHEMA"] = schema
    spec = importlib.util.spec_from_file_location(name, ROOT / "dj_orchestrate" / "examples" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rows(module) -> dict[str, list]:
    tables = {name: getattr(module, name) for name in DEMO_TABLES}
    tables["SpikeSorting.Unit"] = module.SpikeSorting.Unit
    return {name: sorted((sorted(r.items()) for r in t.to_dicts()), key=str) for name, t in tables.items()}


def reconnect_if_lost() -> None:
    """This process's connection sat idle through a `dags test`: on a shared machine the
    server may have restarted meanwhile (other suites' fault tests do)."""
    import datajoint as dj

    from dj_orchestrate.db import is_lost

    if is_lost(None, dj.conn()):
        dj.conn().connect()


def made(output: str) -> tuple[int, int]:
    """Keys made and failed, summed over every worker's last line."""
    found = re.findall(r"worker done: (\d+) made, (\d+) failed", output)
    return sum(int(m) for m, _ in found), sum(int(f) for _, f in found)


@pytest.fixture
def database_access(db):
    """How the Airflow tasks reach ``db``, with a sentinel password that must appear nowhere:
    on MariaDB through an Airflow connection (a user made for it; the worker's own DJ_*
    point nowhere, so only the connection can work), on PostgreSQL (trust) through the
    worker's own DJ_* when the connection does not exist."""
    import datajoint as dj

    sentinel = f"Sentinel-{uuid.uuid4().hex}"
    if db.backend == "postgresql":
        yield sentinel, {**DATABASES["postgresql"], "DJ_PASS": sentinel, "DJ_USE_TLS": "false"}
        return
    conn = dj.conn()
    user = f"djo_af_{uuid.uuid4().hex[:6]}"
    conn.query(f"CREATE USER '{user}'@'%%' IDENTIFIED BY %s", args=(sentinel,))
    conn.query(f"GRANT ALL PRIVILEGES ON *.* TO '{user}'@'%%'")
    connection = {"conn_type": "mysql", "host": "127.0.0.1", "port": 3306, "login": user, "password": sentinel,
                  "extra": {"use_tls": False}}
    yield sentinel, {"AIRFLOW_CONN_DATAJOINT_DEFAULT": json.dumps(connection),
                     "DJ_HOST": "127.0.0.1", "DJ_PORT": "1", "DJ_USER": "nobody", "DJ_BACKEND": "mysql"}
    conn.query(f"DROP USER '{user}'@'%%'")


@pytest.mark.slow
@pytest.mark.timeout(2400)
# once, on MariaDB (its database access is the Airflow connection): the slowest test of the
# suite; the claims it races on are tested on both databases elsewhere
@pytest.mark.parametrize("db", ["mysql"], indirect=True)
def test_dags_test_runs_the_demo_pipeline_end_to_end(db, airflow, database_access):
    """Multi-level, a part table, a fan-in and two failing keys, through `airflow dags
    test`, while a colleague's stock populate(reserve_jobs=True) makes Behavior beside it:
    the rows of a plain populate(), each key made once (by the DAG or the colleague),
    nothing left reserved, the failed keys recorded with the Airflow task's identity and
    log file; then a run restricted by the DAG's params makes only the keys and tables it
    names."""
    sentinel, access = database_access
    env = {"DJO_DEMO_SCHEMA": db.schema, "DJO_LEDGER_SCHEMA": db.ledger, "DJO_DEMO_WORK_SECONDS": "0", **access}
    demo = load_demo(db.schema, f"demo_{db.schema}")
    demo.seed(24)
    out = render(db, DEMO, "--out", str(airflow.dags))
    assert out.returncode == 0, out.stderr
    dag_file = airflow.dags / f"{DAG_ID}.py"

    colleague = subprocess.Popen(
        [sys.executable, "-c", "import json, dj_orchestrate.examples.demo as demo; "
                               "print(json.dumps(demo.Behavior.populate(reserve_jobs=True, suppress_errors=True)['success_count']))"],
        env={**db.env, "DJO_DEMO_SCHEMA": db.schema, "DJO_DEMO_WORK_SECONDS": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        run = airflow.run("dags", "test", DAG_ID, env=env)
    finally:
        by_colleague, err = colleague.communicate(timeout=300)
    assert colleague.returncode == 0, err
    output = run.stdout + run.stderr
    assert run.returncode == 1, output[-3000:]  # the check task fails the run, naming the failed keys
    assert 'Preprocess {"session_id": 7} failed: OSError' in output and '{"session_id": 19}' in output
    reconnect_if_lost()

    reference = load_demo(f"{db.schema}_ref", f"demo_ref_{db.schema}")
    try:
        reference.seed(24)
        for name in DEMO_TABLES:
            getattr(reference, name).populate(suppress_errors=True)
        expected = rows(reference)
    finally:
        reference.schema.drop(prompt=False)
    assert rows(demo) == expected
    by_colleague = int(by_colleague.strip().splitlines()[-1])
    assert made(output) == (sum(len(expected[t]) for t in DEMO_TABLES) - by_colleague, 2)  # each key made once

    jobs = {name: jobs_rows(getattr(demo, name)) for name in DEMO_TABLES}
    assert not [r for rs in jobs.values() for r in rs if r["status"] == "reserved"]
    failed = [r for rs in jobs.values() for r in rs if r["status"] == "error"]
    assert sorted(r["session_id"] for r in failed) == [7, 19]
    for r in failed:
        assert re.fullmatch(rf"airflow:{DAG_ID}/manual__[^/]+/Preprocess\.work/0", r["backend_job_id"]), r["backend_job_id"]
        assert r["log_path"].startswith(str(airflow.home / "logs" / f"dag_id={DAG_ID}"))
        assert "task_id=Preprocess.work/map_index=0/attempt=1.log" in r["log_path"]

    for text in (dag_file.read_text(), output, airflow.logs()):
        assert sentinel not in text
    if db.backend != "mysql":  # the restricted run once: `dags test` is slow, and --key is tested on both elsewhere
        return

    # a run restricted by the DAG's params: two new sessions, three tables
    demo.seed(30)
    conf = {"key": [{"session_id": 25}, {"session_id": 26}], "tables": ["Behavior", "Preprocess", "SpikeSorting"]}
    again = airflow.run("dags", "test", DAG_ID, "-c", json.dumps(conf), env=env)
    assert again.returncode == 0, (again.stdout + again.stderr)[-3000:]
    reconnect_if_lost()
    new = {name: sorted({r["session_id"] for r in getattr(demo, name).to_dicts()} - set(range(24)))
           for name in DEMO_TABLES}
    assert new == {"Preprocess": [25, 26], "Behavior": [25, 26], "SpikeSorting": [25, 26],
                   "QualityMetrics": [], "SessionSummary": []}

    assert sentinel not in again.stdout + again.stderr + airflow.logs()


# ------------------------------------------------------------ backend modes
def load_chain():
    from dj_orchestrate import pipeline

    sys.modules.pop("chain", None)
    return pipeline.load(CHAIN)


@pytest.mark.timeout(1200)  # a `dags test` (allowed 1000 s)
@pytest.mark.parametrize("db", ["mysql"], indirect=True)  # (rendering reads the database; one is enough)
def test_kubernetes_mode_dag_and_the_command_its_submit_runs(db, airflow, tmp_path, monkeypatch):
    """A table in kubernetes mode (no API server here: the rest of the path is the same
    trigger as slurm's and dask's, and ``run --backend kubernetes --no-wait`` is
    test_kubernetes.py's), another in worker mode: the DAG Airflow loads, and the exact
    command the submit task runs. A ``[airflow.tables.X]`` naming no table warns."""
    config = tmp_path / "dj_orchestrate.toml"
    config.write_text('[airflow]\nmode = "kubernetes"\npoll_s = 5\nwait_timeout_s = 3600\n\n[airflow.tables.Total]\nmode = "worker"\n\n'
                      '[airflow.tables.Sqare]\nretries = 1\n')
    out = render(db, CHAIN, "--out", str(tmp_path / "dags"), "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == (f"dj-orchestrate: warning: [airflow.tables.Sqare] in {config} names no table of "
                                  f"{CHAIN}; its tables: Square, Total")
    dag_file = tmp_path / "dags" / "chain.py"
    parsed = parse(airflow, dag_file)
    assert parsed["errors"] == {}
    tasks = parsed["tasks"]["chain"]
    assert {name: (t["type"], t["upstream"]) for name, t in tasks.items()} == {
        "Square.enqueue": ("_PythonDecoratedOperator", []),
        "Square.submit": ("_PythonDecoratedOperator", ["Square.enqueue"]),
        "Square.wait": ("WaitForTable", ["Square.submit"]),
        "Total.enqueue": ("_PythonDecoratedOperator", ["Square.wait"]),
        "Total.work": ("DecoratedMappedOperator", ["Total.enqueue"]),
        "check": ("_PythonDecoratedOperator", ["Total.work"])}
    assert tasks["Square.wait"]["retries"] == "0"

    from airflow.sdk.exceptions import TaskDeferred

    from dj_orchestrate import airflow_tasks

    spec = importlib.util.spec_from_file_location("chain_dag", dag_file)
    dag = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dag)
    assert dag.PIPELINE["config"] == str(config) and dag.TABLES["Square"]["mode"] == "kubernetes"
    calls = []
    monkeypatch.setattr(airflow_tasks, "get_current_context", lambda: {"params": {"key": {"item_id": 1}}})
    monkeypatch.setattr(airflow_tasks, "_dj", lambda pipeline, args, python=None: calls.append(args) or '{"run_id": "r1"}')
    assert airflow_tasks.submit(dag.PIPELINE, "Square", dag.TABLES["Square"], [{"index": 0}]) == "r1"
    assert calls == [["run", CHAIN, "--table", "Square", "--backend", "kubernetes", "--no-wait", "--json",
                      "--shard-size", "1000", "--key", '{"item_id": 1}', "--config", str(config)]]
    with pytest.raises(airflow_tasks.AirflowSkipException):  # nothing to make, or a table left out by the params
        airflow_tasks.submit(dag.PIPELINE, "Square", dag.TABLES["Square"], [])
    wait = dag.dag.get_task("Square.wait")  # defers at once: the trigger ends at the deadline, Airflow a little later
    with pytest.raises(TaskDeferred) as deferred:
        wait.execute({"params": {}})
    assert deferred.value.timeout == datetime.timedelta(seconds=3600 + airflow_tasks.BACKSTOP)
    assert deferred.value.method_name == "finish" and deferred.value.trigger.deadline > time.time() + 3590
    assert "wait_timeout_s" not in dag.TABLES["Total"]  # (worker mode has no wait)


def mode_dags_test(db, airflow, tmp_path, access: dict, *args: str, config: str | None = None,
                   env: dict | None = None) -> subprocess.CompletedProcess:
    """`airflow dags test` of the chain pipeline (item 3's Square fails), rendered first
    with ``config`` when one is given."""
    if config is not None:
        (tmp_path / "dj_orchestrate.toml").write_text(config)
        out = render(db, CHAIN, "--out", str(airflow.dags), "--config", str(tmp_path / "dj_orchestrate.toml"))
        assert out.returncode == 0, out.stderr
    run = airflow.run("dags", "test", "chain", *args, env={
        "DJO_TEST_SCHEMA": db.schema, "DJO_LEDGER_SCHEMA": db.ledger, "DJO_TEST_FAIL": "3",
        "DJO_LOG_DIR": str(tmp_path / "logs"), **access, **(env or {})})
    reconnect_if_lost()
    return run


def check_mode_run(run: subprocess.CompletedProcess, chain, airflow: Airflow, sentinel: str) -> list[str]:
    """What every backend mode's run must show: the check task fails the run naming the
    failed key; the rows and makes of a plain populate (each key once, item 3 recorded as
    failed, nothing reserved); each wait task deferred to the trigger, whose arguments as
    Airflow stored them hold no credential. Returns the run ids the submit tasks started."""
    output = run.stdout + run.stderr
    assert run.returncode == 1, output[-3000:]
    assert 'Square {"item_id": 3} failed: ValueError: item 3 is bad' in output
    made = [i for i in range(6) if i != 3]
    assert {r["item_id"]: r["square"] for r in chain.Square.to_dicts()} == {i: float(i * i) for i in made}
    assert {r["item_id"]: r["total"] for r in chain.Total.to_dicts()} == {i: float(i * i + 1) for i in made}
    assert makes(chain) == {(t, i): 1 for t in ("Square", "Total") for i in made}
    jobs = jobs_rows(chain.Square) + jobs_rows(chain.Total)
    assert not [r for r in jobs if r["status"] == "reserved"]
    assert [(r["item_id"], r["status"]) for r in jobs if r["status"] == "error"] == [(3, "error")]

    runs = re.findall(r"Returned value was: (\d{8}-\d{6}-[0-9a-f]+)", output)
    assert len(runs) == 2, output[-3000:]  # one submit per table
    with sqlite3.connect(airflow.home / "airflow.db") as meta:
        triggers = {json.loads(kwargs)["run"]: (classpath, kwargs) for classpath, kwargs in
                    meta.execute("SELECT classpath, kwargs FROM trigger")}
        deferred = meta.execute("SELECT task_id FROM task_instance WHERE dag_id = 'chain' AND trigger_id IS NOT NULL "
                                "AND run_id = (SELECT max(run_id) FROM dag_run WHERE dag_id = 'chain')").fetchall()
    assert sorted(t for t, in deferred) == ["Square.wait", "Total.wait"]
    assert output.count("[DAG TEST] running trigger in line") == 2
    for run_id in runs:
        classpath, kwargs = triggers[run_id]
        assert classpath == "dj_orchestrate.airflow_tasks.TableProgress" and sentinel not in kwargs
        assert set(json.loads(kwargs)) == {"pipeline", "table", "run", "key", "poll_s", "python", "deadline"}
    for text in (output, airflow.logs(), (airflow.dags / "chain.py").read_text()):
        assert sentinel not in text
    return runs


@pytest.mark.timeout(2400)  # two `dags test` (each allowed 1000 s) and SLURM arrays
@pytest.mark.slow
@pytest.mark.slurm
def test_slurm_mode_dags_test(db, airflow, cluster, database_access, tmp_path):  # noqa: F811
    """`--mode slurm` on the real SLURM cluster: each table is one `run --backend slurm
    --no-wait` (array jobs), and its wait task defers while the arrays make the keys.
    Then (MariaDB) a run restricted by the DAG's params whose only array task dies in a
    make: Square's wait fails naming the keys not made (it does not wait forever),
    Total's group does not run, and nothing stays reserved."""
    sentinel, access = database_access
    chain = load_chain()
    seed(chain, 6)
    run = mode_dags_test(db, airflow, tmp_path, access, config='[airflow]\nmode = "slurm"\npoll_s = 2\n')
    runs = check_mode_run(run, chain, airflow, sentinel)
    output = run.stdout + run.stderr
    assert re.search(r"submitted 1 array job\(s\): Square: \d+", output) and "array job(s): Total: " in output
    from dj_orchestrate import ledger

    assert [ledger.run_row(r)["backend"] for r in runs] == ["slurm", "slurm"]
    failed = [r for r in jobs_rows(chain.Square) if r["status"] == "error"][0]
    assert re.fullmatch(r"\d+(_\d+)?", failed["backend_job_id"]), failed["backend_job_id"]  # made by a SLURM task
    if db.backend != "mysql":  # (the restricted run once: the params' path is the same on both)
        return

    seed(chain, 8)
    conf = {"key": [{"item_id": 6}, {"item_id": 7}], "tables": ["Square"]}
    again = mode_dags_test(db, airflow, tmp_path, access, "-c", json.dumps(conf), env={"DJO_TEST_CRASH": "6"})
    output = again.stdout + again.stderr
    assert again.returncode == 1, output[-3000:]
    left = 2 - len(chain.Square & [{"item_id": 6}, {"item_id": 7}])
    assert left >= 1 and f"Square: {left} keys not made: the workers of run " in output  # the wait task
    assert f"Square: {left} keys not made (a worker failed" in output  # and the check task
    assert "starting task_id=Total.submit" not in output  # (upstream failed; and not among the run's tables)
    assert not (chain.Total & [{"item_id": 6}, {"item_id": 7}])
    assert not [r for r in jobs_rows(chain.Square) + jobs_rows(chain.Total) if r["status"] == "reserved"]
    assert sentinel not in output + airflow.logs()


@pytest.mark.timeout(1200)  # a `dags test` (allowed 1000 s)
@pytest.mark.slow
@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_dask_mode_dags_test(db, airflow, dask_cluster, database_access, tmp_path):  # noqa: F811
    """`--mode dask` against a real `dask scheduler` and workers, the scheduler from
    ``[dask] scheduler`` of the config the DAG was rendered with."""
    sentinel, access = database_access
    chain = load_chain()
    seed(chain, 6)
    config = f'[airflow]\nmode = "dask"\npoll_s = 2\n\n[dask]\nscheduler = "{dask_cluster.address}"\n'
    run = mode_dags_test(db, airflow, tmp_path, access, config=config)
    check_mode_run(run, chain, airflow, sentinel)
    assert f"to scheduler={dask_cluster.address} tasks=Square:" in run.stdout + run.stderr
    failed = [r for r in jobs_rows(chain.Square) if r["status"] == "error"][0]
    assert failed["backend_job_id"].startswith("dask:"), failed["backend_job_id"]


@pytest.mark.timeout(600)  # a `dags test` (allowed 1000 s, takes ~20 s) and a 30 s make
@pytest.mark.slow
@pytest.mark.slurm
def test_wait_timeout_fails_the_wait_and_the_worker_goes_on(db, airflow, cluster, database_access, tmp_path):  # noqa: F811
    """``wait_timeout_s`` under `dags test`, which runs the trigger inline and knows no
    deferral timeout: the trigger's own deadline fails Square's wait with one line saying
    what to do, though its only make (one SLURM task) takes 30 s and poll_s is ten
    minutes. The worker is not stopped: it makes the key (once) after the run ended."""
    sentinel, access = database_access
    chain = load_chain()
    seed(chain, 1)
    config = '[airflow]\nmode = "slurm"\npoll_s = 600\n\n[airflow.tables.Square]\nwait_timeout_s = 2\n'
    run = mode_dags_test(db, airflow, tmp_path, access, config=config, env={"DJO_TEST_SLEEP": "30"})
    output = run.stdout + run.stderr
    run_id = re.search(r"Returned value was: (\d{8}-\d{6}-[0-9a-f]+)", output).group(1)
    assert (f"Square: waited wait_timeout_s = 2 s for run {run_id} and 1 keys are still not made (its workers go on): "
            "raise wait_timeout_s in [airflow.tables.Square] or [airflow] and render the DAG again, or see "
            "`dj-orchestrate status`") in output  # (the last look, at the deadline, found the make still running)
    with sqlite3.connect(airflow.home / "airflow.db") as meta:
        state, start, end = meta.execute(
            "SELECT state, julianday(start_date), julianday(end_date) FROM task_instance WHERE dag_id = 'chain' AND "
            "task_id = 'Square.wait' AND run_id = (SELECT max(run_id) FROM dag_run WHERE dag_id = 'chain')").fetchone()
    assert state == "failed" and (end - start) * 86400 < 15  # the deadline, not poll_s nor the make's end
    assert run.returncode == 1, output[-3000:]  # check fails the run: the key is still being made
    assert "Square: 1 keys still being made by workers still running" in output

    [job] = jobs_rows(chain.Square)  # reserved by the live SLURM task, which goes on and makes it
    assert job["status"] == "reserved" and re.fullmatch(r"\d+(_\d+)?", job["backend_job_id"]), job
    wait_for(lambda: len(chain.Square()), 60, "the SLURM task's make", interval=1, detail=lambda: jobs_rows(chain.Square))
    assert makes(chain) == {("Square", 0): 1} and not [r for r in jobs_rows(chain.Square) if r["status"] == "reserved"]
    assert sentinel not in output + airflow.logs()


@pytest.mark.slurm
def test_progress_finishes_when_the_runs_workers_are_gone(db, cluster, tmp_path):  # noqa: F811
    """What a wait task asks: while the SLURM array runs, not finished; once its only
    task died (SIGKILL in a make) with keys left, finished with those keys left (the
    dead worker's reservations released first), so the wait fails instead of waiting
    forever. The scheduler's view is the hint; the counts come from the jobs table."""
    chain = load_chain()
    seed(chain, 4)
    env = {"DJO_TEST_CRASH": "2", "DJO_TEST_SLEEP": "2", "DJO_LOG_DIR": str(tmp_path / "logs")}
    out = db.cli("run", CHAIN, "--table", "Square", "--backend", "slurm", "--no-wait", "--json", env=env)
    assert out.returncode == 0, out.stderr
    run_id = json.loads(out.stdout)["run_id"]
    answers = []

    def progress() -> dict:
        step = db.cli("airflow", "progress", CHAIN, "--table", "Square", "--run", run_id)
        assert step.returncode == 0, step.stderr
        answers.append(json.loads(step.stdout))
        return answers[-1]["finished"]

    wait_for(progress, 120, "the run's end", interval=1, detail=lambda: answers[-1:])
    assert answers[0]["workers_ended"] is False and not answers[0]["finished"]
    last = answers[-1]
    assert last["workers_ended"] is True and last["left"] >= 1 and last["reserved"] == 0
    assert last["left"] == last["missing"] == 4 - last["done"] and not (chain.Square & {"item_id": 2})

    missing = db.cli("airflow", "progress", CHAIN, "--table", "Square", "--run", "20000101-000000-00000000")
    assert missing.returncode == 2 and "no run 20000101-000000-00000000" in missing.stderr
