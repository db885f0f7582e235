#!/usr/bin/env python
"""The Airflow DAG (`airflow dags test`, worker mode) against the local backend and stock
populate: same pipeline, same keys, same number of workers per table.

    python bench/bench_airflow.py                       # PostgreSQL, 10,000 keys per table
    python bench/bench_airflow.py --db mysql --keys 2000

The pipeline is bench_slurm's (bench/slurm_pipeline.py): three computed tables in a
chain, ``--keys`` keys each, every make trivial, so the bench measures orchestration.
The DAG gets ``shard_size = keys / W`` (W mapped work tasks per table); the local run
``--workers W``; stock DataJoint W processes of ``populate(reserve_jobs=True)`` per
table, table after table.

``airflow dags test`` runs the task instances one after the other in one process (a
deployment runs a table's shards side by side on its workers), each a Python start of
``dj-orchestrate``: the row measures what the DAG costs, not Airflow's parallelism.
Timed from process start to exit; ``airflow db migrate`` and the render are not timed
(done once per deployment), and are reported apart.

Needs apache-airflow (the ``airflow`` extra) and the database; uses a fresh schema
``djo_bench_slurm_<random>`` (and its ledger) and a temporary AIRFLOW_HOME, dropped at the end.
"""

from __future__ import annotations

import argparse
import math
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import ROOT, Comparison, log, machine  # noqa: E402

from dj_orchestrate.db import is_lost  # noqa: E402


class AirflowBench(Comparison):
    def airflow(self) -> dict:
        home = self.tmp / "airflow"
        env = {**self.env, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
               "AIRFLOW__CORE__LOAD_EXAMPLES": "false", "PYTHONPATH": str(ROOT)}
        config = self.tmp / "dj_orchestrate.toml"
        config.write_text(f"[airflow]\nshard_size = {math.ceil(self.keys / self.workers)}\nretries = 0\n")

        def timed(*cmd: str) -> tuple[subprocess.CompletedProcess, float]:
            start = time.perf_counter()
            out = subprocess.run(cmd, env=env, cwd=self.tmp, capture_output=True, text=True, timeout=7200)
            return out, time.perf_counter() - start

        out, migrate = timed(sys.executable, "-m", "airflow", "db", "migrate")
        if out.returncode:
            sys.exit(f"bench_airflow: airflow db migrate failed:\n{out.stderr[-3000:]}")
        out, render = timed(sys.executable, "-m", "dj_orchestrate", "airflow", "render", self.PIPELINE, "--out",
                            str(home / "dags"), "--dag-id", "bench", "--config", str(config))
        if out.returncode:
            sys.exit(f"bench_airflow: render failed:\n{out.stderr}")
        log(f"airflow: db migrate {migrate:.1f} s, render {render:.1f} s; dags test, {self.workers} shards per table")
        out, complete = timed(sys.executable, "-m", "airflow", "dags", "test", "bench")
        if out.returncode:
            sys.exit(f"bench_airflow: dags test failed ({out.returncode}):\n{(out.stdout + out.stderr)[-5000:]}")
        if is_lost(None, self.conn):  # idle through the run: a shared server may have restarted
            self.conn.connect()
        with sqlite3.connect(home / "airflow.db") as airflow_db:
            tasks = airflow_db.execute("SELECT COUNT(*) FROM task_instance WHERE dag_id = 'bench'").fetchone()[0]
        log(f"airflow: {tasks} task instances")
        return self.outcome("airflow", complete, tasks=tasks, migrate=migrate, render=render)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("mysql", "postgresql"), default="postgresql")
    parser.add_argument("--keys", type=int, default=10_000, help="keys per table (default 10,000)")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="workers (shards) per table (default: the CPUs)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="djo-bench-airflow-") as tmp:
        bench = AirflowBench(args.db, args.keys, args.workers, Path(tmp))
        try:
            runs = bench.compare("airflow", bench.airflow)
        finally:
            bench.drop()
    airflow = runs["airflow"]
    tables = len(bench.TABLES)
    n = args.keys * tables
    limit = tables + 1 + tables * args.workers  # an enqueue per table, the check, the shards
    import airflow as airflow_pkg

    print(f"\n{machine(f'Airflow {airflow_pkg.__version__}')}\n{args.db}, {tables} tables x {args.keys:,} keys = {n:,} makes, "
          f"{args.workers} workers (shards) per table\n")
    bench.print_table(runs, [
        ("task instances", f"≤ {limit} ({tables} enqueue + 1 check + {tables * args.workers} shards)", str(airflow["tasks"]), "—", "—", "", "",
         airflow["tasks"] <= limit),
        ("once per deployment: db migrate, render", "—", f"{airflow['migrate']:.1f} s, {airflow['render']:.1f} s", "—", "—",
         "", "", None),
    ], "small cost over local")


if __name__ == "__main__":
    main()
