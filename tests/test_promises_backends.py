"""README promises of the backends that no other test held. Each runs on one database:
what is checked (signals, scheduler reasons, exit codes, a cluster starting) does not
depend on which database holds the jobs tables; claims and races are tested on both
elsewhere. The clusters and helpers are the backend test modules' own."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys

import pytest
from conftest import jobs_rows, seed, wait_for
from test_airflow import airflow, load_chain, reconnect_if_lost  # noqa: F401  (fixture)
from test_airflow import render as render_dag
from test_dask import LAB, dask_cluster, dask_run, lab, makes, once, reserved  # noqa: F401  (fixtures)
from test_kubernetes import pod_process, render, secret_env, table_jobs
from test_slurm import CHAIN, cluster, slurm, submitted  # noqa: F401  (fixtures)


# ------------------------------------------------------------------ SLURM
@pytest.mark.slurm
@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_slurm_partition_time_limit_never_starts(chain, db, slurm):
    """A partition's time limit is one of SLURM's "never starts" reasons: ``time`` over
    the limit is refused before anything is submitted (exit 2); an ``extra`` ``--time``
    that slips past that check (the last ``--time`` directive wins) is queued by SLURM as
    ``PartitionTimeLimit``, and ``--wait`` stops with that reason and exit 2, the keys left
    pending (the test cluster's ``short`` partition allows 5 minutes; EnforcePartLimits=NO,
    SLURM's default)."""
    seed(chain, 2)
    slurm.write_config('[slurm.tables.Square]\npartition = "short"\ntime = "00:30:00"\n')
    refused = slurm.run("--wait", "--table", "Square", timeout=120)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "exceeds partition short's limit" in refused.stderr and not submitted(refused.stderr)
    assert jobs_rows(chain.Square) == []

    slurm.write_config('[slurm.tables.Square]\npartition = "short"\ntime = "00:04:00"\nextra = ["--time=00:30:00"]\n')
    out = slurm.run("--wait", "--table", "Square", "--shard-size", "1", timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    square = submitted(out.stderr)["Square"]
    # (slurmctld gives either reason for a time over the partition's limit, by version and timing)
    assert re.search(rf"SLURM will not start 2 task\(s\) of Square \({square[0]}\): Partition(TimeLimit|Config)",
                     out.stderr), out.stderr
    assert {r["status"] for r in jobs_rows(chain.Square)} == {"pending"}


# ------------------------------------------------------------- Kubernetes
@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_pod_work_exits_2_on_bad_input(db, tmp_path):
    """A rendered pod whose input is bad (a Secret with an invalid ``DJ_PORT``, a pipeline
    its image does not have) exits 2 with one line and reserves nothing: the exit code
    the Job's ``podFailurePolicy`` fails the index on at once instead of retrying.
    (The pod is a process with the rendered command and env; no cluster.)"""
    out = tmp_path / "k8s"
    render(db, out)
    job = table_jobs(out)[0]
    [rule] = [r for r in job["spec"]["podFailurePolicy"]["rules"] if "onExitCodes" in r]
    assert rule["onExitCodes"]["values"] == [2] and rule["action"] in ("FailIndex", "FailJob")
    container = job["spec"]["template"]["spec"]["containers"][0]
    missing = {**job, "spec": {**job["spec"], "template": {"spec": {"containers": [
        {**container, "command": [w if w != "dj_orchestrate.examples.demo" else "no_such_lab.pipeline"
                                  for w in container["command"]]}]}}}}
    assert missing != job
    for bad_job, env, message in ((job, {"DJ_PORT": "not-a-port"}, "DJ_PORT"),
                                  (missing, {}, "no_such_lab")):
        pod = pod_process(bad_job, 0, {**secret_env(db), **env})
        output = pod.communicate(timeout=120)[0]
        assert pod.returncode == 2, output
        assert message in output and "Traceback" not in output, output
    from dj_orchestrate import pipeline
    from dj_orchestrate.jobs import JobTable

    os.environ["DJO_DEMO_SCHEMA"] = db.schema
    demo = pipeline.load("dj_orchestrate.examples.demo")
    assert not any(JobTable(t()).declared for t in (demo.Preprocess, demo.Behavior))


# ------------------------------------------------------------------ Dask
@pytest.mark.slow
@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_dask_worker_death_sigterms_its_child_and_forward_env(lab, db, dask_run):
    """A Dask worker SIGKILLed alone (not its process group: only the worker dies) takes
    its task's ``work`` child with it by SIGTERM (PR_SET_PDEATHSIG): the child stops
    claiming, finishes its key within --grace, releases the rest and exits, saying so in
    its log; no orphan keeps claiming. A new worker finishes the run, every key made once.
    The same run checks ``forward_env``: the client's CUDA_VISIBLE_DEVICES (which no CPU
    worker has) reaches every make."""
    lab.seed(6)
    dask_run.config.write_text('[dask]\nforward_env = ["CUDA_VISIBLE_DEVICES"]\n\n'
                               "[dask.tables.Preprocess]\nresources = { LONELY = 1 }\n")
    address = dask_run.cluster.worker("lonely", 1, "--resources", "LONELY=1")
    dask_run.cluster.wait_workers(3)
    proc = subprocess.Popen(
        [sys.executable, "-m", "dj_orchestrate", "run", LAB, "--backend", "dask", "--scheduler", dask_run.cluster.address,
         "--wait", "--no-progress", "--grace", "30", "--config", str(dask_run.config)],
        env={**dask_run.db.env, "DJO_LOG_DIR": str(dask_run.logs), "DJO_TEST_SLEEP": "1", "CUDA_VISIBLE_DEVICES": "7"},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(r["backend_job_id"].startswith(f"dask:{address}/") for r in jobs_rows(lab.Preprocess)
                             if r["status"] == "reserved"), 120, "a key in the making on the lonely worker")
        worker = dask_run.cluster.procs.pop("lonely")
        worker.send_signal(signal.SIGKILL)  # the worker only; its child is in the same group, left alone
        worker.wait()
        dask_run.cluster.worker("second", 1, "--resources", "LONELY=1")
        stdout, stderr = proc.communicate(timeout=240)
    finally:
        proc.kill()
        if "second" in dask_run.cluster.procs:
            dask_run.cluster.kill("second")
    assert proc.returncode == 0, stdout + stderr
    logs = {p: p.read_text() for p in dask_run.logs.rglob("*.log")}
    stopped = [p for p, text in logs.items() if "(stopped by SIGTERM)" in text]
    assert stopped, {p.name: t[-500:] for p, t in logs.items()}
    assert makes(lab) == once(set(range(6)))
    assert reserved(lab) == []
    assert {r["cuda"] for r in lab.MakeLog.to_dicts()} == {"7"}


@pytest.mark.slow
@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_dask_cluster_local_runs_the_pipeline(lab, db, tmp_path):
    """``--cluster local`` starts a LocalCluster of ``--workers`` processes for this run
    (offering ``worker_resources``, here the GPU the Sorting table asks for), waits, and
    makes every key once; the cluster ends with the command."""
    lab.seed(4)
    config = tmp_path / "dj_orchestrate.toml"
    config.write_text("[dask]\nworker_resources = { GPU = 1 }\n")
    out = db.cli("run", LAB, "--backend", "dask", "--cluster", "local", "--workers", "2", "--no-progress", "--json",
                 "--config", str(config), env={"DJO_LOG_DIR": str(tmp_path / "logs")}, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert json.loads(out.stdout)["state"] == "done"
    assert makes(lab) == once(set(range(4)))
    assert reserved(lab) == []


# ---------------------------------------------------------------- Airflow
WRAPPER = """#!/bin/sh
echo "$@" >> {calls}
exec {python} "$@"
"""


@pytest.mark.slow
@pytest.mark.timeout(1200)  # (with the session's `airflow db migrate`, on a loaded machine)
@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_airflow_conn_id_python_and_a_retry_reconciles_first(db, airflow, tmp_path):  # noqa: F811
    """One ``airflow dags test`` of a DAG rendered with ``--conn-id`` and ``--python``:
    the database is reached only through that Airflow connection (the worker's own DJ_*
    point at a closed port), every task runs dj-orchestrate in that Python (a wrapper
    that records its calls), and a work task whose worker dies mid-make (SIGKILL) is
    retried by Airflow, the retry reconciling first: the dead try's key goes back to
    pending charged an attempt, not left reserved. (Airflow's side does not depend on
    the database: one is enough; the connection on MariaDB is test_airflow's.)"""
    chain = load_chain()
    seed(chain, 4)
    calls = tmp_path / "calls"
    python = tmp_path / "lab-python"
    python.write_text(WRAPPER.format(calls=calls, python=sys.executable))
    python.chmod(0o755)
    config = tmp_path / "dj_orchestrate.toml"
    config.write_text("[airflow]\nretries = 1\nretry_delay_s = 0\n")
    out = render_dag(db, CHAIN, "--out", str(airflow.dags), "--config", str(config), "--conn-id", "lab_db",
                     "--python", str(python))
    assert out.returncode == 0, out.stderr
    connection = {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres", "password": ""}
    run = airflow.run("dags", "test", "chain", env={
        "DJO_TEST_SCHEMA": db.schema, "DJO_LEDGER_SCHEMA": db.ledger, "DJO_TEST_CRASH": "2",
        "DJO_LOG_DIR": str(tmp_path / "logs"), "AIRFLOW_CONN_LAB_DB": json.dumps(connection),
        "DJ_HOST": "127.0.0.1", "DJ_PORT": "1", "DJ_USER": "nobody", "DJ_BACKEND": "postgresql"})
    reconnect_if_lost()
    output = run.stdout + run.stderr
    assert run.returncode == 1, output[-3000:]  # item 2 kills every worker that makes it
    assert "no Airflow connection" not in output
    assert re.search(r"\d+ keys back to pending \(1 charged an attempt\)", output), output[-3000:]  # the retry's reconcile
    lines = calls.read_text().splitlines()
    assert {line.split()[2] for line in lines} >= {"airflow", "work", "reconcile"}, lines
    assert all(line.startswith("-m dj_orchestrate ") for line in lines), lines
    assert {0, 1} <= {r["item_id"] for r in chain.Square.to_dicts()} <= {0, 1, 3}
    [crashing] = [r for r in jobs_rows(chain.Square) if r["item_id"] == 2]
    assert crashing["attempts"] >= 1, crashing  # charged by the retry's reconcile (the retry then died on it again)
