#!/usr/bin/env python
"""The Kubernetes backend without a cluster: render cost, and the pod contract against
the local backend and plain DataJoint.

    python bench/bench_kubernetes.py                       # PostgreSQL, 3 x 10,000 keys, 2 workers
    python bench/bench_kubernetes.py --db mysql --keys 2000 --workers 4

Measured:
  * render: wall time of ``dj-orchestrate k8s render`` (the whole CLI: Python start,
    database connection, pipeline import) for a generated pipeline of ``--tables``
    computed tables (default 50: five levels with fan-in), and the files and objects
    it writes;
  * the pod contract: the manifests ``k8s render`` writes for bench/slurm_pipeline.py
    (three tables in a chain, ``--keys`` keys each, ``parallelism = W``), each table
    Job's pods run here as processes (their exact command and env, JOB_COMPLETION_INDEX
    set, ``pod_here``), all W of a Job at once, Job after Job in release order (what
    the conductor does in a cluster); against ``run --backend local --workers W`` and
    W processes of plain ``populate(reserve_jobs=True)`` per table (harness.Comparison).

Needs the database; uses fresh schemas (``djo_bench_*``), dropped at the end.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BENCH, DATABASES, Comparison, log, machine, markdown, together  # noqa: E402

IMAGE = "dj-orchestrate:0.1.0"


def render_bench(bench: Comparison, tables: int) -> dict:
    """``k8s render`` of bench/wide_pipeline.py with ``tables`` tables."""
    out_dir = bench.tmp / f"k8s-{tables}"
    log(f"render: {tables} tables")
    bench.env["DJO_BENCH_TABLES"] = str(tables)
    out, seconds = bench.cli("k8s", "render", str(BENCH / "wide_pipeline.py"), "--out", str(out_dir), "--image", IMAGE,
                             "--secret", "db")
    if out.returncode:
        sys.exit(f"bench_kubernetes: render failed ({out.returncode}):\n{out.stderr}")
    files = sorted(out_dir.glob("*.yaml"))
    objects = sum(1 for f in files for d in yaml.safe_load_all(f.read_text()) if d)
    return {"seconds": seconds, "files": len(files), "objects": objects}


def pods(bench: Comparison) -> dict:
    """Render bench/slurm_pipeline.py, then run every table Job's pods here."""
    from dj_orchestrate.backends.kubernetes import pod_here

    config = bench.tmp / "dj_orchestrate.toml"
    config.write_text(f"[kubernetes]\nparallelism = {bench.workers}\n")
    out_dir = bench.tmp / "k8s-chain"
    log(f"pods: {len(bench.TABLES)} Jobs x {bench.workers} pods")
    start = time.perf_counter()
    out, _ = bench.cli("k8s", "render", bench.PIPELINE, "--out", str(out_dir), "--image", IMAGE, "--secret", "db",
                       "--config", str(config))
    if out.returncode:
        sys.exit(f"bench_kubernetes: render failed ({out.returncode}):\n{out.stderr}")
    jobs = [d for f in sorted(out_dir.glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())
            if d and d["kind"] == "Job" and "conductor" not in d["metadata"]["name"]]
    for job in jobs:
        together([pod_here(job, index, bench.env) for index in range(job["spec"]["completions"])],
                 f"a pod of {job['metadata']['name']}", cwd=bench.tmp)
    return bench.outcome("pods", time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=sorted(DATABASES), default="postgresql")
    parser.add_argument("--keys", type=int, default=10_000, help="keys per table (default 10,000)")
    parser.add_argument("--workers", type=int, default=2, help="pods per Job, local workers, populate processes")
    parser.add_argument("--tables", type=int, default=50, help="tables of the generated pipeline to render")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="djo-bench-k8s-") as tmp:
        bench = Comparison(args.db, args.keys, args.workers, Path(tmp))
        try:
            rendered = render_bench(bench, args.tables)
            runs = bench.compare("pods", lambda: pods(bench))
        finally:
            bench.drop()
    tables = len(bench.TABLES)
    n = args.keys * tables
    ok = {k: all(v == args.keys for v in r["made"].values()) and not r["left"] for k, r in runs.items()}
    t = {k: r["complete"] for k, r in runs.items()}
    print(f"\n{machine()}\n{args.db}; render: {args.tables} tables; run: {tables} tables x {args.keys:,} keys "
          f"= {n:,} makes, {args.workers} workers\n")
    print(markdown([f"render ({args.tables} tables, whole CLI)", "files", "objects"],
                   [[f"{rendered['seconds']:.2f} s", rendered["files"], rendered["objects"]]]) + "\n")
    print(markdown(["metric", "k8s pods", "local", "stock populate(reserve_jobs=True)", "pods ÷ local", "pods ÷ stock"], [
        ["time to complete", *(f"{t[k]:.1f} s" for k in runs), f"{t['pods'] / t['local']:.2f}×", f"{t['pods'] / t['stock']:.2f}×"],
        ["throughput", *(f"{n / t[k]:.0f} makes/s" for k in runs), "", ""],
        ["every key made, nothing left", *("yes" if ok[k] else f"no {runs[k]['left']}" for k in runs), "", ""]]))

if __name__ == "__main__":
    main()
