"""A run is never "done" when nothing was made (issue 15, section 2): workers that
imported the pipeline against another schema (a variable that names it, missing from
their environment) stop the run at once with exit 2 naming both schemas and the fix, and
make nothing anywhere; a run whose workers all ended while keys are left exits 1, state
"incomplete". On a real Dask scheduler and workers (``tests/test_dask.py``'s), the SLURM
test cluster and the local pool."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from conftest import PIPELINES, jobs_rows
from test_dask import Run, dask_cluster  # noqa: F401  (the real Dask cluster fixture)
from test_slurm import cluster, slurm  # noqa: F401  (the SLURM test cluster and a test's side of it)

ENVSCHEMA = str(PIPELINES / "envschema.py")


@pytest.fixture
def envschema(db, monkeypatch):
    """The pipeline, loaded here against the test's schema; its default schema (where a
    worker without LAB_SCHEMA goes) is dropped afterwards."""
    import datajoint as dj

    from dj_orchestrate import pipeline

    monkeypatch.setenv("LAB_SCHEMA", db.schema)
    sys.modules.pop("envschema", None)
    module = pipeline.load(ENVSCHEMA)
    module.Item.insert({"item_id": i, "value": float(i)} for i in range(4))
    yield module
    sys.modules.pop("envschema", None)
    try:
        dj.Schema(db.schema + "_default", create_schema=False).drop(prompt=False)
    except dj.DataJointError:
        pass  # no worker went there


def made_elsewhere(db) -> int:
    """Rows and jobs a worker without LAB_SCHEMA left in the default schema (its import
    declares the tables there; it must make nothing)."""
    import datajoint as dj

    try:
        wrong = dj.VirtualModule("wrong", db.schema + "_default")
    except dj.DataJointError:
        return 0
    return len(wrong.Square()) + len(jobs_rows(wrong.Square))


def state(db, out) -> str:
    from dj_orchestrate import ledger

    return ledger.run_row(re.search(r"run (\d{8}-\d{6}-[0-9a-f]+)", out.stdout + out.stderr).group(1))["state"]


@pytest.mark.slow
def test_dask_workers_without_the_schema_variable_exit_2_then_forward_env(envschema, db, dask_cluster, tmp_path):  # noqa: F811
    """Dask workers started without LAB_SCHEMA: exit 2 with one line naming both schemas
    and ``forward_env``, nothing made in either schema, state "mismatch"; with
    ``forward_env = ["LAB_SCHEMA"]`` in [dask]: every row, exactly."""
    run = Run(db, dask_cluster, tmp_path)
    env = {"LAB_SCHEMA": db.schema}
    out = run.run("--scheduler", dask_cluster.address, "--wait", env=env, pipeline=ENVSCHEMA)
    assert out.returncode == 2, out.stdout + out.stderr
    line = next(l for l in out.stderr.splitlines() if "imported" in l)
    assert f"against schemas {db.schema}_default " in line and f"this run against {db.schema} " in line, line
    assert "forward_env in [dask]" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert len(envschema.Square()) == 0 and made_elsewhere(db) == 0
    assert state(db, out) == "mismatch"

    run.config.write_text('[dask]\nforward_env = ["LAB_SCHEMA"]\n')
    out = run.run("--scheduler", dask_cluster.address, "--wait", env=env, pipeline=ENVSCHEMA)
    assert out.returncode == 0, out.stdout + out.stderr
    assert envschema.Square.to_dicts(order_by="item_id") == [{"item_id": i, "square": float(i * i)} for i in range(4)]
    assert made_elsewhere(db) == 0 and state(db, out) == "done"


@pytest.mark.slurm
def test_slurm_jobs_without_the_schema_variable_exit_2_then_exact_rows(envschema, db, slurm):  # noqa: F811
    """SLURM jobs whose environment lacks LAB_SCHEMA (a ``setup`` line unsets it, as a
    user's ``--export=NONE`` or login script would): exit 2 naming both schemas and the
    job environment, nothing made, the arrays cancelled; with the variable: every row."""
    def run():
        return slurm.cli("run", ENVSCHEMA, "--backend", "slurm", "--config", str(slurm.config), "--no-progress",
                         "--wait", env={"LAB_SCHEMA": db.schema})

    slurm.write_config('[slurm]\npull_workers = 1\nsetup = ["unset LAB_SCHEMA"]\n')
    out = run()
    assert out.returncode == 2, out.stdout + out.stderr
    line = next(l for l in out.stderr.splitlines() if "imported" in l)
    assert f"against schemas {db.schema}_default " in line and f"this run against {db.schema} " in line, line
    assert "[slurm] setup" in out.stderr and "Traceback" not in out.stderr, out.stderr
    assert len(envschema.Square()) == 0 and made_elsewhere(db) == 0
    assert state(db, out) == "mismatch"

    slurm.write_config()
    out = run()
    assert out.returncode == 0, out.stdout + out.stderr
    assert envschema.Square.to_dicts(order_by="item_id") == [{"item_id": i, "square": float(i * i)} for i in range(4)]
    assert made_elsewhere(db) == 0 and state(db, out) == "done"


def keys_left_run(db, envschema, *args: str, env: dict | None = None):
    """A key that fails once and is retried only in an hour: the workers end with it
    pending. Exit 1, the line, state "incomplete", never "done"."""
    out = db.cli("run", ENVSCHEMA, "--no-progress", "--retries", "1", "--backoff", "3600", *args,
                 env={"LAB_SCHEMA": db.schema, "DJO_TEST_FAIL": "2", **(env or {})})
    assert out.returncode == 1, out.stdout + out.stderr
    assert re.search(r"run \S+: 1 keys left \(Square 1\): 1 wait for a retry after their --backoff", out.stderr), out.stderr
    assert re.search(r"run \S+: incomplete$", out.stdout, re.M) and state(db, out) == "incomplete"
    assert len(envschema.Square()) == 3
    status = db.cli("status", ENVSCHEMA, env={"LAB_SCHEMA": db.schema})
    assert "incomplete" in status.stdout, status.stdout


def test_local_keys_left_exit_1_never_done(envschema, db, tmp_path):
    keys_left_run(db, envschema, "--workers", "2", env={"DJO_LOG_DIR": str(tmp_path)})


@pytest.mark.slow
@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_dask_keys_left_exit_1_never_done(envschema, db, dask_cluster, tmp_path):  # noqa: F811
    run = Run(db, dask_cluster, tmp_path)
    run.config.write_text('[dask]\nforward_env = ["LAB_SCHEMA"]\n')
    keys_left_run(db, envschema, "--backend", "dask", "--config", str(run.config), "--scheduler", dask_cluster.address,
                  "--wait", env={"DJO_LOG_DIR": str(run.logs)})


def test_worker_refuses_and_airflow_progress_stops(envschema, db, tmp_path):
    """A worker (``work``, as every backend starts it) without LAB_SCHEMA records what it
    imported and makes nothing, exit 2; the Airflow wait trigger's ``progress`` then
    refuses, exit 2, naming both schemas (the trigger stops asking)."""
    from dj_orchestrate import ledger, pipeline

    rid = ledger.new_run(ENVSCHEMA, "slurm", ["Square"], identity=pipeline.identity(envschema))
    env = {k: v for k, v in db.env.items() if k != "LAB_SCHEMA"}
    work = subprocess.run([sys.executable, "-m", "dj_orchestrate", "work", ENVSCHEMA, "--table", "Square",
                           "--run-id", rid, "--enqueue"], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert work.returncode == 2, work.stdout + work.stderr
    assert f"against schemas {db.schema}_default, its run {rid} against {db.schema}: nothing made" in work.stderr
    assert made_elsewhere(db) == 0 and len(envschema.Square()) == 0
    [seen] = ledger.worker_identities(rid)
    assert seen["schemas"] == db.schema + "_default" and seen["db_user"] == db.env["DJ_USER"]

    out = db.cli("airflow", "progress", ENVSCHEMA, "--table", "Square", "--run", rid, env={"LAB_SCHEMA": db.schema},
                 cwd=tmp_path)
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"this run against {db.schema} " in out.stderr and "Traceback" not in out.stderr, out.stderr


@pytest.mark.asyncio
@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
async def test_kubernetes_pods_without_the_schema_variable_exit_2(envschema, db, kmock, tmp_path):
    """``run --backend kubernetes --wait`` against the API emulator, its pods run here as
    processes with what the Secret gives them, not LAB_SCHEMA (``test_kubernetes``'s
    controller, which lets them fail): exit 2 naming both schemas and the pods' env,
    nothing made, the run's Jobs deleted."""
    import asyncio

    import test_kubernetes as k8s

    k8s.cluster(kmock)
    config = tmp_path / "dj_orchestrate.toml"
    config.write_text("\n".join(["[kubernetes]", f'image = "{k8s.IMAGE}"', f'secret = "{k8s.SECRET}"', ""]))
    env = {**db.env, "LAB_SCHEMA": db.schema, "KUBECONFIG": str(k8s.kubeconfig(tmp_path, kmock))}
    env.pop("KUBERNETES_SERVICE_HOST", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "dj_orchestrate", "run", ENVSCHEMA, "--backend", "kubernetes", "--config", str(config),
        "--wait", "--no-progress", env=env, cwd=str(tmp_path), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)

    async def controller() -> None:
        ran: set[str] = set()
        while proc.returncode is None:
            for name, obj in k8s.stored_jobs(kmock).items():
                if name not in ran and not obj["spec"].get("suspend"):
                    ran.add(name)
                    results = await asyncio.to_thread(k8s.run_job, obj, k8s.secret_env(db))
                    await k8s.finish(kmock, name, failed=any(code for code, _ in results), succeeded=len(results))
            await asyncio.sleep(0.3)

    playing = asyncio.create_task(controller())
    out, err = await asyncio.wait_for(proc.communicate(), 300)
    await playing
    out, err = out.decode(), err.decode()
    assert proc.returncode == 2, out + err
    assert f"this run against {db.schema} " in err and "[kubernetes] env" in err and "Traceback" not in err, err
    assert len(envschema.Square()) == 0 and made_elsewhere(db) == 0
    assert k8s.stored_jobs(kmock) == {}
    assert state(db, subprocess.CompletedProcess([], 2, out, err)) == "mismatch"
