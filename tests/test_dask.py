"""The Dask backend on a real ``distributed`` cluster: a ``dask scheduler`` and two
``dask worker`` processes started here (one offers ``GPU=1`` and sees
``CUDA_VISIBLE_DEVICES=0``: the GPU is simulated, the worker and its resource are real),
and the real single-node SLURM cluster for ``--cluster slurm``.

The cluster is shared by the tests of both databases: each task gets its schema, its
database and the DJO_TEST_* knobs from the submitting command's environment (the
backend forwards DJ_* and DJO_*). ``lab.MakeLog`` counts committed makes: a key made
twice shows up twice.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PIPELINES, ROOT, jobs_rows, require, wait_for
from test_slurm import cluster  # noqa: F401  (the SLURM cluster fixture)

try:
    import distributed
except ModuleNotFoundError:  # require() below: a skip locally, a failure in CI
    distributed = None

LAB = str(PIPELINES / "lab.py")
TABLES = ("Preprocess", "Behavior", "Sorting", "Summary")


# ------------------------------------------------------------------ cluster
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class DaskCluster:
    """A scheduler and workers as separate processes, each in its own session (so a
    test can SIGKILL a worker with everything it started)."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.address = f"tcp://127.0.0.1:{free_port()}"
        self.dashboard = free_port()
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(PIPELINES)])}
        for k in [k for k in self.env if k.startswith(("DJ_", "DJO_"))]:
            del self.env[k]  # the tasks bring their own, but for the password:
        self.env["DJ_PASS"] = ""  # a worker's own (the backend never sends one)
        self.procs: dict[str, subprocess.Popen] = {}

    def _spawn(self, name: str, *args: str, env: dict | None = None) -> subprocess.Popen:
        log = open(self.tmp / f"{name}.log", "ab")
        proc = subprocess.Popen([sys.executable, "-m", "dask", *args], env={**self.env, **(env or {})}, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd=self.tmp)
        self.procs[name] = proc
        return proc

    def start(self) -> None:
        self.scheduler()
        self.worker("cpu", 2)
        self.worker("gpu", 1, "--resources", "GPU=1", env={"CUDA_VISIBLE_DEVICES": "0"})
        self.wait_workers(2)

    def scheduler(self) -> None:
        self._spawn("scheduler", "scheduler", "--host", "127.0.0.1", "--port", self.address.rsplit(":", 1)[1],
                    "--dashboard-address", f"127.0.0.1:{self.dashboard}")

    def worker(self, name: str, threads: int, *args: str, env: dict | None = None) -> str:
        """Start a worker; returns its address."""
        port = free_port()
        self._spawn(name, "worker", self.address, "--host", "127.0.0.1", "--worker-port", str(port), "--name", name,
                    "--nthreads", str(threads), "--no-nanny", "--no-dashboard", "--death-timeout", "60", *args, env=env)
        return f"tcp://127.0.0.1:{port}"

    def workers(self) -> dict:
        with distributed.Client(self.address, timeout=10, set_as_default=False) as client:
            return client.scheduler_info(n_workers=-1)["workers"]

    def wait_workers(self, n: int) -> None:
        wait_for(lambda: len(self.workers()) == n, 90, f"{n} Dask workers", interval=0.5,
                 detail=lambda: [(p.read_text()[-2000:]) for p in self.tmp.glob("*.log")])

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()

    def stop(self) -> None:
        for name in list(self.procs):
            self.kill(name)


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory):
    require(distributed is not None, "distributed (pip install 'dj-orchestrate[dask]')")
    c = DaskCluster(tmp_path_factory.mktemp("dask"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


@pytest.fixture
def lab(db):
    from dj_orchestrate import pipeline

    sys.modules.pop("lab", None)
    return pipeline.load(LAB)


class Run:
    """One test's side: its log folder and config, the CLI against the cluster."""

    def __init__(self, db, cluster: DaskCluster, tmp: Path) -> None:
        self.db, self.cluster, self.tmp = db, cluster, tmp
        self.logs = tmp / "logs"
        self.config = tmp / "dj_orchestrate.toml"
        self.config.write_text("")

    def cli(self, *args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
        return self.db.cli(*args, env={"DJO_LOG_DIR": str(self.logs), **(env or {})}, timeout=timeout)

    def run(self, *args: str, env: dict | None = None, timeout: float = 240, pipeline: str = LAB) -> subprocess.CompletedProcess:
        return self.cli("run", pipeline, "--backend", "dask", "--config", str(self.config), "--no-progress", *args,
                        env=env, timeout=timeout)


@pytest.fixture
def dask_run(db, dask_cluster, tmp_path):
    return Run(db, dask_cluster, tmp_path)


def once(ids: set[int], failed: set[int] = frozenset()) -> dict:
    """The MakeLog every key made exactly once gives: all tables for ``ids``, and no
    Sorting or Summary for sessions whose Preprocess failed."""
    expected = {}
    for i in ids:
        for t in TABLES:
            if i not in failed or t == "Behavior":
                expected[(t, i)] = 1
    return expected


def makes(lab) -> dict:
    return dict(collections.Counter((r["tbl"], r["session_id"]) for r in lab.MakeLog.to_dicts()))


def reserved(lab) -> list[dict]:
    return [r for t in (lab.Preprocess, lab.Behavior, lab.Sorting, lab.Summary) for r in jobs_rows(t) if r["status"] == "reserved"]


def plain_populate(db, n: int, env: dict) -> dict:
    """The same pipeline, seeded the same, made by stock ``populate()`` in a schema of
    its own: the reference a Dask run must match."""
    code = f"""
import json, lab
lab.seed({n})
for t in (lab.Preprocess, lab.Behavior, lab.Sorting, lab.Summary):
    t.populate(suppress_errors=True)
print(json.dumps(lab.contents()))
lab.schema.drop(prompt=False)
"""
    out = subprocess.run([sys.executable, "-c", code], env={**db.env, **env, "DJO_TEST_SCHEMA": db.schema + "_ref"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def run_id(out: subprocess.CompletedProcess) -> str:
    return re.search(r"run (\S+): ", out.stdout).group(1)


# -------------------------------------------------------------------- tests
@pytest.mark.slow
def test_wait_pipeline_same_rows_as_populate_gpu_table_on_gpu_worker(lab, db, dask_run):
    """``--scheduler ADDR --wait`` on a pipeline with a part table, a fan-in, a GPU
    table and a failing key: the rows equal stock ``populate()``'s, every key is made
    once, nothing stays reserved, the failed key's error names its Dask worker and task
    and a log that exists, every GPU key ran on the GPU worker, and the scheduler saw
    tasks per slot, not per key."""
    lab.seed(8)
    env = {"DJO_TEST_FAIL": "3"}
    out = dask_run.run("--scheduler", dask_run.cluster.address, "--wait", env=env)
    assert out.returncode == 1, out.stdout + out.stderr  # one key failed, on purpose
    assert lab.contents() == plain_populate(db, 8, env)
    assert makes(lab) == once(set(range(8)), failed={3})
    assert reserved(lab) == []

    rid = run_id(out)
    [error] = json.loads(dask_run.cli("errors", LAB, "--json").stdout)
    assert error["key"] == {"session_id": 3} and error["error_message"] == "OSError: recording 3 is corrupt"
    workers = {w["name"]: a for a, w in dask_run.cluster.workers().items()}
    m = re.fullmatch(r"dask:(tcp://127\.0\.0\.1:\d+)/djo-(\S+)-Behavior\+Preprocess-(\d+)", error["backend_job_id"])
    assert m and m.group(1) in workers.values() and m.group(2) == rid, error["backend_job_id"]
    log = Path(error["log_path"])
    assert log.is_file() and log.is_relative_to(dask_run.logs) and "worker done:" in log.read_text()

    gpu = {r["cuda"] for r in lab.MakeLog.to_dicts() if r["tbl"] == "Sorting"}
    assert gpu == {"0"}  # the GPU worker's CUDA_VISIBLE_DEVICES, in every Sorting make
    status = json.loads(dask_run.cli("status", LAB, "--json").stdout)["tables"]
    assert {r["table"]: r["reserved"] for r in status} == dict.fromkeys(TABLES, 0)
    sorting_logs = list(dask_run.logs.glob(f"{rid}/djo-{rid}-Sorting-*.log"))
    assert sorting_logs and all(p.name.endswith(".cuda-0.log") for p in sorting_logs), sorting_logs
    # one task per pull slot: 3 threads for Preprocess+Behavior and for Summary, 1 GPU for Sorting
    assert f"submitted 7 Dask task(s) to scheduler={dask_run.cluster.address}" in out.stderr, out.stderr
    assert len(list(dask_run.logs.glob(f"{rid}/*.log"))) == 7  # and no second round


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # the backend's behaviour, the same on either database
@pytest.mark.slow
def test_submit_without_wait_completes_after_the_client_exits(lab, db, dask_run):
    """Without --wait the command returns at once (the tasks are fire-and-forget) and
    the pipeline completes with no client; ``status`` shows the scheduler, the
    dashboard and the running tasks; reconcile's hint comes from the scheduler, and so
    does ``run_ended`` (an Airflow wait's question): not while the run's tasks are
    there, then yes; no answer from a scheduler is None."""
    from dj_orchestrate import ledger
    from dj_orchestrate.backends import dask as dask_backend

    lab.seed(4)
    started = time.monotonic()
    out = dask_run.run("--scheduler", dask_run.cluster.address, env={"DJO_TEST_SLEEP": "1"})
    assert out.returncode == 0, out.stdout + out.stderr
    assert time.monotonic() - started < 60 and re.search(r"run \S+: submitted", out.stdout)
    status = dask_run.cli("status", LAB)
    line = next(line for line in status.stdout.splitlines() if "submitted" in line)
    assert f"scheduler={dask_run.cluster.address}" in line and "dashboard=http://" in line
    assert re.search(r"running=\d+ worker task\(s\)", line), line
    rid = run_id(out)
    row = ledger.run_row(rid)
    assert dask_backend.DaskBackend().run_ended(row) is False

    wait_for(lambda: len(lab.Summary()) == 4, 180, "Summary to fill", interval=1, detail=lambda: reserved(lab))
    assert makes(lab) == once(set(range(4)))
    wait_for(lambda: dask_backend.DaskBackend().run_ended(row), 60, "the run's tasks to be forgotten")
    assert dask_backend.DaskBackend().run_ended({**row, "backend_info": "scheduler=tcp://127.0.0.1:1 tasks=X:0-1"}) is None
    gone = f"dask:tcp://127.0.0.1:1/djo-{rid}-Sorting-0"
    assert dask_backend.DaskBackend.ended_jobs({gone}) == {gone}  # the scheduler answered: not running
    assert dask_backend.DaskBackend.ended_jobs({"dask:tcp://127.0.0.1:1/djo-20990101-000000-00000000-X-0"}) == set()


@pytest.mark.slow
def test_sigkilled_worker_mid_make_run_completes(lab, db, dask_run):
    """A Dask worker SIGKILLed with the make it runs (node loss), and a new worker that
    joins: the key it was making is charged an attempt (here its last: --max-attempts 1,
    so it ends as an error naming the dead task), Dask runs the task again on the new
    worker, and every other key is made once; nothing stays reserved. (Preprocess asks
    for a resource only the doomed worker, then its successor, offers, so that the kill
    lands mid-make whatever the machine's load.)"""
    lab.seed(6)
    dask_run.config.write_text("[dask.tables.Preprocess]\nresources = { DOOMED = 1 }\n")
    address = dask_run.cluster.worker("doomed", 1, "--resources", "DOOMED=1")
    dask_run.cluster.wait_workers(3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dj_orchestrate", "run", LAB, "--backend", "dask", "--scheduler", dask_run.cluster.address,
         "--wait", "--no-progress", "--max-attempts", "1", "--config", str(dask_run.config)],
        env={**dask_run.db.env, "DJO_LOG_DIR": str(dask_run.logs), "DJO_TEST_SLEEP": "1"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(r["backend_job_id"].startswith(f"dask:{address}/") for r in jobs_rows(lab.Preprocess)
                             if r["status"] == "reserved"), 120, "a key in the making on the doomed worker", interval=0.2)
        dask_run.cluster.kill("doomed")
        dask_run.cluster.worker("reborn", 1, "--resources", "DOOMED=1")
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
        with contextlib.suppress(KeyError):
            dask_run.cluster.kill("reborn")
    assert proc.returncode == 1, stdout + stderr
    errors = json.loads(dask_run.cli("errors", LAB, "--json").stdout)
    assert len(errors) == 1, errors
    [error] = errors
    assert f"(backend job dask:{address}/" in error["error_message"] and error["attempts"] == 1, error
    lost = error["key"]["session_id"]
    assert makes(lab) == once(set(range(6)), failed={lost})
    assert reserved(lab) == []


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # refused before a key is claimed: one database
def test_resource_no_worker_offers_exit_2_nothing_reserved(lab, db, dask_run):
    """A table asking for a resource no worker offers: exit 2 within seconds, naming the
    table and the resource; nothing enqueued, no run recorded."""
    lab.seed(3)
    dask_run.config.write_text("[dask.tables.Behavior]\nresources = { TPU = 1 }\n")
    started = time.monotonic()
    out = dask_run.run("--scheduler", dask_run.cluster.address, "--wait")
    assert out.returncode == 2, out.stdout + out.stderr
    assert time.monotonic() - started < 30
    assert "Behavior needs the Dask resource TPU=1" in out.stderr and "Traceback" not in out.stderr
    assert all(jobs_rows(t) == [] for t in (lab.Preprocess, lab.Behavior, lab.Sorting, lab.Summary))


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # refused before a key is claimed: one database
@pytest.mark.parametrize("case, args, config, message", [
    ("no scheduler", [], "", "no Dask scheduler configured"),
    ("unreachable", ["--scheduler", "tcp://127.0.0.1:{closed}"], "", "did not answer within 2 s"),
    ("local cluster not waited for", ["--cluster", "local", "--no-wait"], "", "would stop when this command exits"),
])
def test_bad_input_exit_2_nothing_reserved(lab, db, dask_run, case, args, config, message):
    """Bad input: one or two lines, exit 2 within seconds, no traceback, nothing enqueued."""
    refused(lab, dask_run, args, config, message)


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_scheduler_no_worker_joined_exit_2_nothing_reserved(lab, db, tmp_path):
    """A scheduler that no worker has joined (yet): one line saying so, exit 2, nothing
    enqueued. For tables that need no resource this was a bare StopIteration traceback."""
    bare = DaskCluster(tmp_path)
    bare.scheduler()
    try:
        assert bare.workers() == {}  # (the client waits until the scheduler answers)
        refused(lab, Run(db, bare, tmp_path), ["--scheduler", bare.address], "", "no Dask worker is connected")
    finally:
        bare.stop()


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # refused before the database is opened
@pytest.mark.parametrize("case, args, config, message", [
    ("unknown key", ["--scheduler", "tcp://127.0.0.1:1"], "[dask]\nschedular = 'x'\n", "unknown Dask setting 'schedular'"),
    ("cluster-wide key per table", [], "[dask.tables.Sorting]\nscheduler = 'x'\n", "is a setting of the whole cluster"),
    ("bad slurm key", ["--cluster", "slurm", "--wait"], "[dask.slurm]\ncores = 'many'\n", "cores in"),
    ("unknown cluster", ["--cluster", "k8s"], "", "unknown --cluster 'k8s'"),
])
def test_bad_config_exit_2_nothing_reserved(lab, db, dask_run, case, args, config, message):
    refused(lab, dask_run, args, config, message)


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_cluster_cuda_without_dask_cuda_names_the_extra(lab, db, dask_run, tmp_path):
    """dask-cuda missing, wherever it is installed or not (simulated: a package in front
    of the real one that fails to import as a missing one does; never a skip)."""
    blocker = tmp_path / "blocker" / "dask_cuda"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'dask_cuda'\", name='dask_cuda')\n")
    db.env["PYTHONPATH"] = os.pathsep.join([str(blocker.parent), db.env["PYTHONPATH"]])
    refused(lab, dask_run, ["--cluster", "cuda", "--wait"], "", "pip install 'dj-orchestrate[cuda]'")


def refused(lab, dask_run, args: list[str], config: str, message: str) -> None:
    lab.seed(2)
    dask_run.config.write_text(config + ("[dask]\nconnect_timeout = 2\n" if "[dask]" not in config else ""))
    args = [a.format(closed=free_port()) for a in args]
    started = time.monotonic()
    out = dask_run.run(*args, env={"DASK_SCHEDULER_ADDRESS": ""})
    assert out.returncode == 2, out.stdout + out.stderr
    assert message in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) <= 2, out.stderr
    assert time.monotonic() - started < 30
    assert all(jobs_rows(t) == [] for t in (lab.Preprocess, lab.Behavior, lab.Sorting, lab.Summary))


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_dask_not_installed_names_the_extra(db, tmp_path):
    """``distributed`` missing (simulated: an import blocker in front of the real one,
    since the package is installed here): exit 2 naming the extra."""
    code = "import sys; sys.modules['distributed'] = None; sys.argv[0] = 'dj-orchestrate'; from dj_orchestrate.cli import main; main()"
    out = subprocess.run([sys.executable, "-c", code, "run", LAB, "--backend", "dask", "--scheduler", "tcp://x:1"],
                         env=db.env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stderr
    assert "pip install 'dj-orchestrate[dask]'" in out.stderr and "Traceback" not in out.stderr


def test_config_table_resources_and_class_attribute(tmp_path):
    """A table's resources: the class attribute, overridden by [dask.tables.X]; the
    [dask.slurm] sub-table checked like the rest."""
    from types import SimpleNamespace

    from dj_orchestrate.backends.dask import load_config

    path = tmp_path / "dj_orchestrate.toml"
    path.write_text("[dask]\npull_workers = 3\n[dask.slurm]\nwalltime = '00:30:00'\n"
                    "[dask.tables.Other]\nresources = { GPU = 2 }\n")
    config = load_config(str(path))
    gpu_class = SimpleNamespace(name="Sorting", cls=type("Sorting", (), {"dask": {"resources": {"GPU": 1}}}))
    other = SimpleNamespace(name="Other", cls=type("Other", (), {}))
    assert config.for_table(gpu_class).resources == {"GPU": 1} and config.for_table(gpu_class).pull_workers == 3
    assert config.for_table(other).resources == {"GPU": 2}
    assert config.defaults.slurm_settings().worker_lifetime() == "1500s"  # walltime less 5 minutes


def test_stages_pipeline_within_a_resource_class(tmp_path):
    """Tables that ask for the same resources share one stage (their workers pipeline);
    a change of resources downstream starts the next stage, so a CPU -> GPU -> CPU chain
    has three and the CPU branch beside the GPU table stays in the first."""
    from types import SimpleNamespace

    from dj_orchestrate.backends.dask import load_config
    from dj_orchestrate.backends.dask.plan import stages

    def table(name: str, upstream: tuple[str, ...] = (), **attrs) -> SimpleNamespace:
        return SimpleNamespace(name=name, full_name=name, upstream=frozenset(upstream), cls=type(name, (), attrs))

    gpu = {"dask": {"resources": {"GPU": 1}}}
    tables = [table("Preprocess"), table("Behavior"), table("Sorting", ("Preprocess",), **gpu),
              table("Summary", ("Sorting", "Behavior")), table("Report", ("Behavior",))]
    (tmp_path / "dj_orchestrate.toml").write_text("")
    config = load_config(str(tmp_path / "dj_orchestrate.toml"))
    assert [[t.name for t in stage] for stage in stages(config, tables)] == [
        ["Preprocess", "Behavior", "Report"], ["Sorting"], ["Summary"]]


def test_slurm_cluster_job_script_from_config(tmp_path):
    """[dask.slurm] becomes the dask-jobqueue job script: walltime, extra directives, a
    prologue, the workers' resources, and a --lifetime (staggered) before the walltime
    so that workers retire instead of being killed. (Built, not submitted.)"""
    from types import SimpleNamespace

    from dj_orchestrate.backends.dask import load_config
    from dj_orchestrate.backends.dask.clusters import slurm_cluster

    path = tmp_path / "dj_orchestrate.toml"
    path.write_text("[dask]\nworker_resources = { GPU = 1 }\n[dask.slurm]\ncores = 2\nwalltime = '00:30:00'\n"
                    "job_extra_directives = ['--qos=long']\njob_script_prologue = ['module load cuda']\n")
    cluster = slurm_cluster(load_config(str(path)).defaults, SimpleNamespace(run_id="20260101-000000-abcd",
                                                                            log_dir=tmp_path / "logs"))
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    for line in ("#SBATCH --qos=long", "#SBATCH -t 00:30:00", "#SBATCH -J djo-20260101-000000-abcd", "module load cuda",
                 "--lifetime 1500s", "--lifetime-stagger 2m", "--resources GPU=1", "--nthreads 2"):
        assert line in script, (line, script)


@pytest.mark.timeout(600)  # its run is allowed 300 s
@pytest.mark.slow
@pytest.mark.slurm
@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_cluster_slurm_runs_the_demo(db, cluster, tmp_path):  # noqa: F811
    """``--cluster slurm``: a dask-jobqueue SLURMCluster on the real single-node SLURM,
    workers with a --lifetime before their walltime; the demo pipeline completes (its
    two broken recordings fail on purpose: exit 1)."""
    env = {"DJO_DEMO_SCHEMA": db.schema, "DJO_LOG_DIR": str(tmp_path / "logs")}
    seeded = subprocess.run([sys.executable, "-c", "from dj_orchestrate.examples import demo; demo.seed(6)"],
                            env={**db.env, **env}, capture_output=True, text=True, timeout=60)
    assert seeded.returncode == 0, seeded.stderr
    config = tmp_path / "dj_orchestrate.toml"
    config.write_text("[dask.slurm]\ncores = 1\nmemory = '1GB'\nwalltime = '00:10:00'\nmax_jobs = 2\n"
                      f"log_directory = '{tmp_path / 'slurm'}'\n")
    out = db.cli("run", "dj_orchestrate.examples.demo", "--backend", "dask", "--cluster", "slurm", "--config", str(config),
                 "--no-progress", env=env, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr  # sessions 7 and 19 (the broken ones) are not among 0-5
    assert "cluster=slurm" in out.stderr
    status = json.loads(db.cli("status", "dj_orchestrate.examples.demo", "--json", env=env).stdout)["tables"]
    assert all(r["pending"] == 0 and r["reserved"] == 0 and r["done"] == r["total"] > 0 for r in status), status
    scripts = list((tmp_path / "slurm").glob("*.out")) + list((tmp_path / "slurm").glob("*.err"))
    assert scripts, "the SLURM jobs wrote no logs"
