#!/usr/bin/env python
"""The SLURM backend on the single-node cluster against the local backend: same
pipeline, same keys, same number of workers.

    python bench/bench_slurm.py                       # PostgreSQL, 10,000 keys per table
    python bench/bench_slurm.py --db mysql --keys 2000

The pipeline (bench/slurm_pipeline.py) has three computed tables in a chain, each with
``--keys`` keys: 3 x 10,000 makes by default. Workers default to the node's CPUs
(SLURM runs at most that many 1-CPU tasks at once): the SLURM run gets ``--shards W``
fixed shards for the first table and ``pull_workers = W`` tasks for each downstream
table (``array_parallelism = W``); the local run gets ``--workers W``.

Measured:
  * sbatch calls: counted by a shim named ``sbatch`` first on PATH (a temp dir) that
    logs each call and runs the real one; target: at most one per table;
  * time to submit: wall time of ``run --backend slurm`` (no --wait), from process start
    to exit, Python start and database connection included; target: 3 s;
  * time to complete: from that process start until every key of the last table is
    made, against the wall time of ``run --backend local --workers W`` and of plain
    DataJoint: W processes of ``populate(reserve_jobs=True)`` per table, table after table.

Needs the cluster (slurm/start-cluster.sh) and the database; uses a fresh schema
``djo_bench_slurm_<random>`` (and its ledger), dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BENCH, DATABASES, Comparison, log, machine  # noqa: E402


def node_cpus() -> int:
    out = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, check=True).stdout.split()
    return int(out[0].rstrip("+"))


def sbatch_shim(folder: Path, env: dict[str, str]) -> Path:
    """``sbatch`` first on ``env``'s PATH: bench/sbatch_logged.sh, which logs its arguments
    to the file returned, then execs the real one."""
    real = shutil.which("sbatch")
    if real is None:
        sys.exit("bench_slurm: no sbatch on PATH; start the cluster with slurm/start-cluster.sh")
    calls = folder / "sbatch-calls.log"
    calls.touch()
    shim = folder / "bin" / "sbatch"
    shim.parent.mkdir()
    shim.symlink_to(BENCH / "sbatch_logged.sh")
    env.update({"DJO_BENCH_SBATCH": real, "DJO_BENCH_SBATCH_LOG": str(calls),
                "PATH": f"{shim.parent}{os.pathsep}{os.environ['PATH']}"})
    return calls


class SlurmBench(Comparison):
    def __init__(self, database: str, keys: int, workers: int, tmp: Path) -> None:
        """The sbatch shim first on PATH, for every command this bench starts."""
        super().__init__(database, keys, workers, tmp)
        self.calls = sbatch_shim(tmp, self.env)
        self.arrays: list[str] = []

    def slurm(self) -> dict:
        log(f"slurm: submitting {len(self.TABLES)} tables x {self.keys:,} keys, {self.workers} workers")
        start = time.perf_counter()
        out, submit = self.cli("run", self.PIPELINE, "--backend", "slurm", "--shards", str(self.workers),
                               "--config", str(self.config), "--no-progress", timeout=300)
        if out.returncode:
            sys.exit(f"bench_slurm: submission failed ({out.returncode}):\n{out.stderr}")
        calls = [line for line in self.calls.read_text().splitlines() if line.strip()]
        submitted = next((line for line in out.stderr.splitlines() if line.startswith("submitted")), "")
        self.arrays = re.findall(r"\b\d+\b", submitted.partition(": ")[2])
        log(f"slurm: submitted in {submit:.2f} s with {len(calls)} sbatch call(s); {submitted}")
        deadline = time.monotonic() + 3600
        while self.made(self.TABLES[-1]) < self.keys:
            if time.monotonic() > deadline:
                sys.exit(f"bench_slurm: not done after an hour: {self.leftovers()}")
            time.sleep(0.5)
        return self.outcome("slurm", time.perf_counter() - start, calls=len(calls), submit=submit)

    def drop(self) -> None:
        if self.arrays:  # a bench that stopped early leaves nothing running
            subprocess.run(["scancel", *self.arrays], capture_output=True)
        super().drop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=sorted(DATABASES), default="postgresql")
    parser.add_argument("--keys", type=int, default=10_000, help="keys per table (default 10,000)")
    parser.add_argument("--workers", type=int, help="workers for both backends (default: the node's CPUs)")
    args = parser.parse_args()
    workers = args.workers or node_cpus()
    with tempfile.TemporaryDirectory(prefix="djo-bench-slurm-") as tmp:
        bench = SlurmBench(args.db, args.keys, workers, Path(tmp))
        try:
            runs = bench.compare("slurm", bench.slurm)
        finally:
            bench.drop()
    slurm = runs["slurm"]
    tables = len(bench.TABLES)
    print(f"\n{machine()}\n{args.db}, {tables} tables x {args.keys:,} keys = {args.keys * tables:,} makes, "
          f"{workers} workers\n")
    bench.print_table(runs, [
        ("sbatch calls", f"≤ {tables} (tables)", str(slurm["calls"]), "—", "—", "", "", slurm["calls"] <= tables),
        ("time to submit (CLI wall time)", "≤ 3 s", f"{slurm['submit']:.2f} s", "—", "—", "", "", slurm["submit"] <= 3.0),
    ], "small cost over local")


if __name__ == "__main__":
    main()
