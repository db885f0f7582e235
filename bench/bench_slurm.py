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
import platform
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, TypeVar

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PIPELINE = str(BENCH / "slurm_pipeline.py")
TABLES = ("Stage1", "Stage2", "Stage3")

sys.path.insert(0, str(BENCH))
from bench import DATABASES  # noqa: E402

T0 = time.perf_counter()
T = TypeVar("T")


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


def node_cpus() -> int:
    out = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True, check=True).stdout.split()
    return int(out[0].rstrip("+"))


def sbatch_shim(folder: Path) -> tuple[Path, Path]:
    """A ``sbatch`` that logs its arguments, then execs the real one."""
    real = shutil.which("sbatch")
    if real is None:
        sys.exit("bench_slurm: no sbatch on PATH; start the cluster with slurm/start-cluster.sh")
    calls = folder / "sbatch-calls.log"
    shim = folder / "bin" / "sbatch"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\necho "$*" >> "{calls}"\nexec "{real}" "$@"\n')
    shim.chmod(shim.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    calls.touch()
    return shim.parent, calls


class Bench:
    def __init__(self, backend: str, keys: int, workers: int, tmp: Path, count_sbatch: bool = True) -> None:
        """``count_sbatch``: put the sbatch shim first on PATH (bench_kubernetes reuses
        this class, the local and stock runs, without SLURM)."""
        self.keys, self.workers, self.tmp = keys, workers, tmp
        tag = uuid.uuid4().hex[:8]
        self.schema = f"djo_bench_slurm_{tag}"
        self.ledger = f"{self.schema}_ledger"
        self.env = {**os.environ, **DATABASES[backend], "DJ_USE_TLS": "false", "DJO_BENCH_SCHEMA": self.schema,
                    "DJO_LEDGER_SCHEMA": self.ledger, "DJO_LOG_DIR": str(tmp / "logs")}
        if count_sbatch:
            self.shim_dir, self.calls = sbatch_shim(tmp)
            self.env["PATH"] = f"{self.shim_dir}{os.pathsep}{os.environ['PATH']}"
        for k, v in self.env.items():  # this process counts rows on the same database
            if k.startswith(("DJ_", "DJO_")):
                os.environ[k] = v
        self.arrays: list[str] = []
        self.config = tmp / "dj_orchestrate.toml"
        self.config.write_text(f"[slurm]\narray_parallelism = {workers}\npull_workers = {workers}\n")
        import datajoint as dj

        from dj_orchestrate import db, pipeline

        db.connect()
        self.dj = dj
        self.conn = dj.conn()
        self.q = self.conn.adapter.quote_identifier
        self.m = pipeline.load(PIPELINE)
        self.mysql = self.conn.adapter.backend == "mysql"

    def cli(self, *args: str, timeout: float = 3600) -> tuple[subprocess.CompletedProcess, float]:
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "dj_orchestrate", *args], env=self.env, cwd=self.tmp,
                             capture_output=True, text=True, timeout=timeout)
        return out, time.perf_counter() - t

    def fill(self) -> None:
        self.m.Source.insert(({"key_id": i} for i in range(self.keys)), skip_duplicates=True)

    def db(self, action: Callable[[], T]) -> T:
        """This process's queries outlive a database restart (a shared machine's tests
        restart the servers): run again on a new connection."""
        from dj_orchestrate.db import retrying

        return retrying(self.conn, action, "bench", 300)

    def made(self, table: str) -> int:
        return self.db(lambda: len(getattr(self.m, table)()))

    def reset(self) -> None:
        """Empty the computed tables and their jobs tables (downstream first)."""
        from dj_orchestrate.jobs import JobTable

        def empty() -> None:
            for name in reversed(TABLES):
                t = getattr(self.m, name)()
                self.conn.query(f"DELETE FROM {t.full_table_name}")
                jt = JobTable(t)
                if jt.declared:
                    self.conn.query(f"DELETE FROM {jt.name}")

        self.db(empty)

    def leftovers(self) -> dict:
        from dj_orchestrate.jobs import JobTable

        counts = self.db(lambda: {name: JobTable(getattr(self.m, name)()).status_counts() for name in TABLES})
        return {name: {k: v for k, v in c.items() if v} for name, c in counts.items() if any(c.values())}

    def slurm(self) -> dict:
        log(f"slurm: submitting {len(TABLES)} tables x {self.keys:,} keys, {self.workers} workers")
        start = time.perf_counter()
        out, submit = self.cli("run", PIPELINE, "--backend", "slurm", "--shards", str(self.workers),
                               "--config", str(self.config), "--no-progress", timeout=300)
        if out.returncode:
            sys.exit(f"bench_slurm: submission failed ({out.returncode}):\n{out.stderr}")
        calls = [line for line in self.calls.read_text().splitlines() if line.strip()]
        submitted = next((line for line in out.stderr.splitlines() if line.startswith("submitted")), "")
        self.arrays = re.findall(r"\b\d+\b", submitted.partition(": ")[2])
        log(f"slurm: submitted in {submit:.2f} s with {len(calls)} sbatch call(s); {submitted}")
        deadline = time.monotonic() + 3600
        while self.made(TABLES[-1]) < self.keys:
            if time.monotonic() > deadline:
                sys.exit(f"bench_slurm: not done after an hour: {self.leftovers()}")
            time.sleep(0.5)
        complete = time.perf_counter() - start
        made = {t: self.made(t) for t in TABLES}
        log(f"slurm: complete in {complete:.1f} s ({made})")
        return {"calls": len(calls), "submit": submit, "complete": complete, "made": made,
                "left": self.leftovers()}

    def local(self) -> dict:
        log(f"local: {self.workers} workers")
        out, complete = self.cli("run", PIPELINE, "--backend", "local", "--workers", str(self.workers), "--no-progress")
        if out.returncode:
            sys.exit(f"bench_slurm: local run failed ({out.returncode}):\n{out.stderr}")
        made = {t: self.made(t) for t in TABLES}
        log(f"local: complete in {complete:.1f} s ({made})")
        return {"complete": complete, "made": made, "left": self.leftovers()}

    def stock(self) -> dict:
        """What users do today without dj-orchestrate: per table, W processes running plain
        DataJoint's ``populate(reserve_jobs=True)``, one table after the other (a table's
        keys exist only once the table before it is done). Interpreter start-up is timed,
        as in every sbatch loop around populate()."""
        log(f"stock: {self.workers} x populate(reserve_jobs=True) per table")
        code = ("import importlib.util, sys\n"
                "spec = importlib.util.spec_from_file_location('slurm_pipeline', sys.argv[1])\n"
                "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
                "getattr(m, sys.argv[2]).populate(reserve_jobs=True)\n")
        start = time.perf_counter()
        for name in TABLES:
            self.together([([sys.executable, "-c", code, PIPELINE, name], self.env)] * self.workers,
                          f"stock populate of {name}")
        complete = time.perf_counter() - start
        made = {t: self.made(t) for t in TABLES}
        log(f"stock: complete in {complete:.1f} s ({made})")
        return {"complete": complete, "made": made, "left": self.leftovers()}

    def compare(self, name: str, run: Callable[[], dict]) -> dict[str, dict]:
        """Fill Source, then ``run`` (the backend measured), ``run --backend local`` and
        stock populate on the same keys, each from empty tables: {name, local, stock}."""
        log(f"filling Source with {self.keys:,} keys (schema {self.schema})")
        self.fill()
        runs = {name: run()}
        self.reset()
        runs["local"] = self.local()
        self.reset()
        runs["stock"] = self.stock()
        return runs

    def together(self, processes: list[tuple[list[str], dict]], what: str) -> None:
        """Start every (argv, env) at once and wait for all; any failure ends the bench
        (a timing of a run that failed would mean nothing)."""
        procs = [subprocess.Popen(argv, env=env, cwd=self.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
                 for argv, env in processes]
        for proc in procs:
            _, err = proc.communicate(timeout=3600)
            if proc.returncode:
                sys.exit(f"bench: {what} failed ({proc.returncode}):\n{err}")

    def drop(self) -> None:
        if self.arrays:  # a bench that stopped early leaves nothing running
            subprocess.run(["scancel", *self.arrays], capture_output=True)
        for name in (self.schema, self.ledger):
            try:
                self.dj.Schema(name, create_schema=False).drop(prompt=False)
            except Exception as err:  # best effort
                log(f"could not drop {name}: {err}")


def machine() -> str:
    cpus = os.cpu_count()
    mem = ""
    try:
        kb = int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1])
        mem = f", {kb / 1024 / 1024:.0f} GiB"
    except (OSError, StopIteration):
        pass
    version = subprocess.run(["sbatch", "--version"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("sbatch") else ""
    return f"{platform.node()}: {platform.machine()}, {cpus} CPUs{mem}, {version + ', ' if version else ''}Python {platform.python_version()}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=sorted(DATABASES), default="postgresql")
    parser.add_argument("--keys", type=int, default=10_000, help="keys per table (default 10,000)")
    parser.add_argument("--workers", type=int, help="workers for both backends (default: the node's CPUs)")
    args = parser.parse_args()
    workers = args.workers or node_cpus()
    with tempfile.TemporaryDirectory(prefix="djo-bench-slurm-") as tmp:
        bench = Bench(args.db, args.keys, workers, Path(tmp))
        try:
            runs = bench.compare("slurm", bench.slurm)
        finally:
            bench.drop()
    slurm = runs["slurm"]
    print(f"\n{machine()}\n{args.db}, {len(TABLES)} tables x {args.keys:,} keys = {args.keys * len(TABLES):,} makes, "
          f"{workers} workers\n")
    print_table(runs, args.keys, [
        ("sbatch calls", f"≤ {len(TABLES)} (tables)", str(slurm["calls"]), "—", "—", "", "", slurm["calls"] <= len(TABLES)),
        ("time to submit (CLI wall time)", "≤ 3 s", f"{slurm['submit']:.2f} s", "—", "—", "", "", slurm["submit"] <= 3.0),
    ], "small cost over local")


def print_table(runs: dict[str, dict], keys: int, rows: list[tuple], complete_target: str,
                complete_met: bool | None = None) -> None:
    """The comparison every backend's bench prints: its own ``rows`` (metric, target, three
    cells, two ratios, met), then time to complete, throughput and leftovers for the backend
    (the first of ``runs``), local and stock."""
    name = next(iter(runs))
    n = keys * len(TABLES)
    t = {k: r["complete"] for k, r in runs.items()}
    ok = {k: all(v == keys for v in r["made"].values()) and not r["left"] for k, r in runs.items()}
    rows = [
        *rows,
        ("time to complete (CLI wall time)", complete_target, *(f"{t[k]:.1f} s" for k in runs),
         f"{t[name] / t['local']:.2f}×", f"{t[name] / t['stock']:.2f}×", complete_met),
        ("throughput", "—", *(f"{n / t[k]:.0f} makes/s" for k in runs), "", "", None),
        ("every key made, nothing left", "yes", *("yes" if ok[k] else f"no {runs[k]['left']}" for k in runs), "", "",
         all(ok.values())),
    ]
    print(f"| metric | target | {name} | local | stock populate(reserve_jobs=True) | {name} ÷ local | {name} ÷ stock | met |")
    print("|---|---|---|---|---|---|---|---|")
    for *cells, met in rows:
        print("| " + " | ".join(cells) + f" | {'' if met is None else ('yes' if met else 'NO')} |")


if __name__ == "__main__":
    main()
