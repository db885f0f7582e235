#!/usr/bin/env python
"""The Dask backend on a LocalCluster against the local backend and stock DataJoint:
same pipeline, same keys, same number of workers, one run.

    python bench/bench_dask.py                       # PostgreSQL, 10,000 keys per table
    python bench/bench_dask.py --db mysql --keys 2000

The pipeline (bench/slurm_pipeline.py) has three computed tables in a chain, each with
``--keys`` keys: 3 x 10,000 trivial makes by default. The Dask run is
``run --backend dask --scheduler ADDR --wait`` against a LocalCluster of ``--workers``
worker processes (one thread each) started before the clock, as a lab's cluster is
already running; the local run is ``run --backend local --workers W``; stock is W
processes of ``populate(reserve_jobs=True)`` per table, table after table. Each is timed
through the whole CLI, from process start to exit.

Also counted: the Dask tasks the scheduler saw (a scheduler plugin in this process
counts every key that reached ``processing``), against the run's pull slots recorded in
the ledger; target: no more tasks than slots, however many keys.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import distributed
from distributed.diagnostics.plugin import SchedulerPlugin

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import DATABASES, Comparison, log, machine  # noqa: E402


class TaskCounter(SchedulerPlugin):
    """Every task key that the scheduler started (reached ``processing``)."""

    def __init__(self) -> None:
        self.started: set[str] = set()

    def transition(self, key, start, finish, *args, **kwargs) -> None:
        if finish == "processing":
            self.started.add(str(key))


class DaskBench(Comparison):
    def dask(self, address: str, counter: TaskCounter) -> dict:
        log(f"dask: {self.workers} worker processes, scheduler {address}")
        out, complete = self.cli("run", self.PIPELINE, "--backend", "dask", "--scheduler", address, "--wait", "--no-progress",
                                 "--config", str(self.config))
        if out.returncode:
            sys.exit(f"bench_dask: dask run failed ({out.returncode}):\n{out.stderr}")
        from dj_orchestrate import ledger

        run = self.db(lambda: ledger.recent_runs(limit=1)[0])
        tasks = {k for k in counter.started if k.startswith(f"djo-{run['run_id']}-")}
        log(f"dask: {len(tasks)} tasks, {run['shards']} slots")
        return self.outcome("dask", complete, tasks=len(tasks), slots=run["shards"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=sorted(DATABASES), default="postgresql")
    parser.add_argument("--keys", type=int, default=10_000, help="keys per table (default 10,000)")
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes, local workers, stock processes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="djo-bench-dask-") as tmp:
        bench = DaskBench(args.db, args.keys, args.workers, Path(tmp))  # (sets the environment the workers inherit)
        bench.config.write_text("")
        cluster = distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                           dashboard_address=":0", silence_logs=40)
        counter = TaskCounter()
        cluster.scheduler.add_plugin(counter)
        try:
            runs = bench.compare("dask", lambda: bench.dask(cluster.scheduler_address, counter))
        finally:
            cluster.close()
            bench.drop()
    dask = runs["dask"]
    t = {k: r["complete"] for k, r in runs.items()}
    tables = len(bench.TABLES)
    print(f"\n{machine(f'distributed {distributed.__version__}')}\n{args.db}, {tables} tables x {args.keys:,} keys = {args.keys * tables:,} makes, "
          f"{args.workers} workers\n")
    bench.print_table(runs, [
        ("Dask tasks the scheduler saw", "≤ slots (not keys)", f"{dask['tasks']} ({dask['slots']} slots)", "—", "—", "", "",
         dask["tasks"] <= dask["slots"]),
    ], "dask ≤ 1.1 × local", t["dask"] <= 1.1 * t["local"])


if __name__ == "__main__":
    main()
