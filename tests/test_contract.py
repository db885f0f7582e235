"""One contract, every backend: the same pipeline, the same assertions, each backend on
its real component (as dask-jobqueue runs its core tests on each scheduler).

The pipeline is tests/pipelines/chain.py (Item -> Square -> Total, a side ledger of
makes), six keys, item 3's Square make raising. Whatever launched the workers, then:
the rows equal a stock ``populate()`` of the same data; every key is made exactly once
(``MakeLog``); the failed key's error carries the backend's job id; nothing is left
reserved or pending.

The components, each reused from its own test file: local forked workers; the
single-node SLURM cluster (``--wait``); a real ``dask scheduler`` and ``dask worker``
processes (``--wait``); ``run --backend kubernetes --wait`` against kmock's API
emulator, each pod's exact command and environment run here (no API server can run
here); Airflow's ``airflow dags test`` of the rendered DAG (worker mode). Every run
ends with exit 1: one key failed.

The local backend runs on both databases; the others on PostgreSQL only: what they add
(launching, following, naming the job) does not depend on the database, whose claims
the local runs and tests/test_jobs.py cover on both.

Overlap: test_slurm.test_wait_multi_level_same_rows_as_plain_populate asserts the same
rows, makes and error on SLURM, and more (one array per table, which shard task failed,
its log file, ``status``); the other backends' end-to-end tests run richer pipelines
(the demo, lab.py: part tables, fan-in, GPU resources). None is a duplicate to delete.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import kmock as km
import pytest
from conftest import jobs_rows, makes, seed
from test_airflow import airflow, database_access, mode_dags_test  # noqa: F401  (fixtures: an AIRFLOW_HOME, DB access)
from test_airflow import render as airflow_render
from test_dask import Run, dask_cluster  # noqa: F401  (fixture: a real scheduler and two workers)
from test_kubernetes import IMAGE, NS, SECRET, cluster as k8s_cluster, kubeconfig, play_controller
from test_slurm import CHAIN, cluster, plain_populate, rows, slurm  # noqa: F401  (fixtures: the SLURM cluster, a test's side)

N, FAIL = 6, 3
ENV = {"DJO_TEST_FAIL": str(FAIL)}


@dataclass
class Outcome:
    """What a backend's run left behind besides the tables: its exit code and output."""

    code: int
    output: str


def run_local(db, tmp_path: Path, request) -> Outcome:
    out = db.cli("run", CHAIN, "--workers", "2", "--no-progress", env={**ENV, "DJO_LOG_DIR": str(tmp_path / "logs")})
    return Outcome(out.returncode, out.stdout + out.stderr)


def run_slurm(db, tmp_path: Path, request) -> Outcome:
    slurm = request.getfixturevalue("slurm")
    out = slurm.run("--wait", "--shard-size", "4", env=ENV, timeout=600)
    return Outcome(out.returncode, out.stdout + out.stderr)


def run_dask(db, tmp_path: Path, request) -> Outcome:
    cluster = request.getfixturevalue("dask_cluster")
    out = Run(db, cluster, tmp_path).run("--scheduler", cluster.address, "--wait", env=ENV, pipeline=CHAIN, timeout=600)
    return Outcome(out.returncode, out.stdout + out.stderr)


def run_kubernetes(db, tmp_path: Path, request) -> Outcome:
    return asyncio.run(_kubernetes(db, tmp_path))


async def _kubernetes(db, tmp_path: Path) -> Outcome:
    """``run --backend kubernetes --wait`` against kmock's API emulator, the test playing
    the Job controller: each released Job's pods run here with their exact command and
    environment (test_kubernetes.play_controller). A pod's environment is the Secret's
    (``db.env``), which here carries the failing key too."""
    db.env = {**db.env, **ENV}
    async with km.KubernetesEmulator() as kmock, km.Server(kmock):
        k8s_cluster(kmock)
        config = tmp_path / "dj_orchestrate.toml"
        config.write_text("\n".join(["[kubernetes]", f'image = "{IMAGE}"', f'secret = "{SECRET}"', "parallelism = 2", ""]))
        env = {**db.env, "KUBECONFIG": str(kubeconfig(tmp_path, kmock))}
        env.pop("KUBERNETES_SERVICE_HOST", None)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "dj_orchestrate", "run", CHAIN, "--backend", "kubernetes", "--config", str(config),
            "--wait", "--no-progress", env=env, cwd=str(db.home), stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        controller = asyncio.create_task(play_controller(kmock, proc, db, []))
        out, err = await asyncio.wait_for(proc.communicate(), 600)
        await controller
    return Outcome(proc.returncode, out.decode() + err.decode())


def run_airflow(db, tmp_path: Path, request) -> Outcome:
    airflow = request.getfixturevalue("airflow")
    _, access = request.getfixturevalue("database_access")
    rendered = airflow_render(db, CHAIN, "--out", str(airflow.dags))
    assert rendered.returncode == 0, rendered.stderr
    out = mode_dags_test(db, airflow, tmp_path, access)
    return Outcome(out.returncode, out.stdout + out.stderr)


# each backend's run, and what the failed key's backend_job_id matches
BACKENDS: dict[str, tuple[Callable[..., Outcome], str]] = {
    "local": (run_local, r"local-[0-9a-f]{8}-\d+"),
    "slurm": (run_slurm, r"\d+_\d+"),
    "dask": (run_dask, r"dask:tcp://127\.0\.0\.1:\d+/djo-\S+-Square\S*"),
    "kubernetes": (run_kubernetes, rf"kubernetes:{NS}/djo-\S+-square-\d+-[0-9a-f]{{5}}"),
    "airflow": (run_airflow, r"airflow:chain/manual__[^/]+/Square\.work/\d+"),
}


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a hang guard: SLURM's and Airflow's services may start inside the test
@pytest.mark.parametrize("db, backend", [
    ("mysql", "local"), ("postgresql", "local"),
    pytest.param("postgresql", "slurm", marks=pytest.mark.slurm),
    ("postgresql", "dask"), ("postgresql", "kubernetes"), ("postgresql", "airflow"),
], indirect=["db"])
def test_contract(db, backend: str, tmp_path, request) -> None:
    """The same pipeline and assertions on every backend: the rows of a stock populate(),
    each key made exactly once, the failed key's error carrying the backend's job id,
    nothing left reserved or pending."""
    from dj_orchestrate import pipeline

    chain = pipeline.load(CHAIN)
    seed(chain, N)
    run, job_id = BACKENDS[backend]
    outcome = run(db, tmp_path, request)
    assert outcome.code == 1, outcome.output[-3000:]

    assert rows(chain) == plain_populate(db, N, ENV)
    assert makes(chain) == {(t, i): 1 for t in ("Square", "Total") for i in range(N) if i != FAIL}

    errors = json.loads(db.cli("errors", CHAIN, "--json").stdout)
    assert [(e["table"], e["key"], e["error_message"]) for e in errors] == [
        ("Square", {"item_id": FAIL}, f"ValueError: item {FAIL} is bad")]
    assert re.fullmatch(job_id, errors[0]["backend_job_id"]), errors[0]["backend_job_id"]
    assert errors[0]["host"] and errors[0]["pid"]

    left = [(r["item_id"], r["status"]) for t in (chain.Square, chain.Total) for r in jobs_rows(t) if r["status"] != "error"]
    assert left == []
