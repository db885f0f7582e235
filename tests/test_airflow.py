"""The Airflow DAG on real Airflow 3 (the ``airflow`` extra), its metadata on SQLite:
``airflow db migrate`` into a temporary AIRFLOW_HOME once per session, then
``airflow dags test`` as a user runs it. Every Airflow command is its own process.

``dags test`` runs a DAG's tasks one after the other in one process: a run of the demo
pipeline costs a Python start per task, so there are only three (MariaDB, PostgreSQL,
and a run restricted by the DAG's params, on MariaDB).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest
from conftest import DATABASES, PIPELINES, ROOT, jobs_rows, require

DEMO = "dj_orchestrate.examples.demo"
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


@pytest.fixture(scope="session")
def airflow(tmp_path_factory) -> Airflow:
    af = Airflow(tmp_path_factory.mktemp("airflow"))
    out = af.run("db", "migrate", timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return af


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
    (["--mode", "slurm"], "--mode slurm"),
    (["--dag-id", "no spaces"], "is not an Airflow DAG id"),
])
def test_render_bad_input_one_line_exit_2_nothing_written(db, tmp_path, args, message):
    out = render(db, DEMO, "--out", str(tmp_path / "dags"), *args)
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "dags").exists()


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
