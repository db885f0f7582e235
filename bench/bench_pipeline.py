#!/usr/bin/env python
"""Pipelined runs against the level barrier: a 3-table chain with one straggler.

    python bench/bench_pipeline.py                       # MariaDB and PostgreSQL (~4 minutes)
    python bench/bench_pipeline.py --db postgresql --t 0.05

bench/straggler_pipeline.py: Source -> A -> B -> C, ``--keys`` (40) keys per table; every
make sleeps ``--t`` seconds (0.1), one key of A 40 times as long (``--slow first``: the
first key in key order, ``last``: the last; both by default); ``--workers`` (4) workers.
On the same data, one after the other, each from empty tables:

  * ``dj-orchestrate run --workers 4`` with ``--order upstream`` (the default),
    ``--order downstream``, and ``--order levels`` (the level barrier of before: every
    table waits for all of the previous ones);
  * stock DataJoint: per table, 4 processes of ``populate(reserve_jobs=True)``, table
    after table (what users do without dj-orchestrate).

Measured: the makespan, from the first make's start to the last make's end (every make
records both in ``Span``; interpreter start-ups are outside it), against the lower bound
max(critical path, total work / workers); the whole command's wall time; and when the
first and the median C results were committed, from the first make's start.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (BENCH, child_result, command, database, empty, in_child, log, markdown,  # noqa: E402
                     python_env, stock_populate)

PIPELINE = str(BENCH / "straggler_pipeline.py")
TABLES = ("A", "B", "C")
SYSTEMS = ("upstream", "downstream", "levels", "stock")


def run_system(system: str, workers: int) -> float:
    """One run from empty tables; returns the whole command's wall time."""
    if system == "stock":
        return stock_populate(PIPELINE, TABLES, workers, python_env())
    return command(["-m", "dj_orchestrate", "run", PIPELINE, "--workers", str(workers), "--no-progress", "--order", system])


def one_database(backend: str, args: argparse.Namespace) -> list[dict]:
    """Child process: every system on one database, in a fresh schema dropped at the end."""
    with database(backend, "djo_bench_pipe", DJO_BENCH_T=str(args.t)) as conn:
        from dj_orchestrate import pipeline
        from dj_orchestrate.jobs import JobTable

        m = pipeline.load(PIPELINE)
        m.Source.insert({"key_id": i} for i in range(args.keys))
        for table in (m.A, m.B, m.C):  # declared once, outside every timing
            JobTable(table()).ensure()
        rows = []
        for slow in args.slow:
            os.environ["DJO_BENCH_SLOW"] = str(0 if slow == "first" else args.keys - 1)
            for system in SYSTEMS:
                empty(conn, [m.A, m.B, m.C, m.Span])
                log(f"{backend}: straggler {slow}, {system}")
                wall = run_system(system, args.workers)
                spans = m.Span.to_dicts()
                assert len(spans) == 3 * args.keys, f"{system}: {len(spans)} makes"
                t0 = min(s["start"] for s in spans)
                c_ends = sorted(s["end"] - t0 for s in spans if s["tbl"] == "C")
                rows.append(dict(db=backend, slow=slow, system=system, wall=wall,
                                 makespan=max(s["end"] for s in spans) - t0,
                                 first_c=c_ends[0], median_c=c_ends[len(c_ends) // 2],
                                 work=sum(s["end"] - s["start"] for s in spans),
                                 critical=sum(s["end"] - s["start"] for s in spans
                                              if s["key_id"] == int(os.environ["DJO_BENCH_SLOW"]))))
    return rows


def render(rows: list[dict], args: argparse.Namespace) -> str:
    out = [f"3-table chain, {args.keys} keys per table, make {args.t * 1000:.0f} ms, one key of the first table "
           f"40× slower, {args.workers} workers; load average {os.getloadavg()[0]:.1f}", "",
           ]
    cells = []
    for r in rows:
        # the bound from the ideal durations (what the makes were asked to sleep), and
        # from the measured ones when they are longer (a loaded machine stretches sleeps)
        ideal_cp = args.t * (40 + 2)
        ideal_work = args.t * (3 * args.keys + 39)
        bound = max(ideal_cp, ideal_work / args.workers, r["critical"], r["work"] / args.workers)
        ratio = r["makespan"] / bound
        met = ("yes" if ratio <= 1.15 else "**no**") if r["system"] == "upstream" else ""
        name = {"upstream": "dj-orchestrate, --order upstream (default)", "downstream": "dj-orchestrate, --order downstream",
                "levels": "dj-orchestrate, --order levels (level barrier)",
                "stock": "stock populate(reserve_jobs=True), table after table"}[r["system"]]
        cells.append([r["db"], r["slow"], name, f"{r['makespan']:.2f} s", f"{bound:.2f} s", f"{ratio:.2f}×",
                      f"{r['first_c']:.2f} s", f"{r['median_c']:.2f} s", f"{r['wall']:.2f} s", met])
    out.append(markdown(["DB", "straggler", "system", "makespan", "lower bound", "÷ bound", "first C", "median C",
                         "whole command", "target ≤ 1.15×"], cells))
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=["mysql", "postgresql", "both"], default="both")
    ap.add_argument("--keys", type=int, default=40)
    ap.add_argument("--t", type=float, default=0.1, help="seconds per make (the straggler: 40×)")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--slow", choices=["first", "last", "both"], default="both")
    ap.add_argument("--_one", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    args.slow = ["first", "last"] if args.slow == "both" else [args.slow]
    if args._one:
        child_result(args._out, one_database(args._one, args))
        return
    rows = []
    for backend in (["mysql", "postgresql"] if args.db == "both" else [args.db]):
        result = in_child([__file__, "--_one", backend, "--keys", str(args.keys), "--t", str(args.t), "--workers",
                           str(args.workers), "--slow", "both" if len(args.slow) == 2 else args.slow[0]])
        if result is None:
            sys.exit(f"bench_pipeline: the bench on {backend} failed")
        rows += result
    print(render(rows, args))


if __name__ == "__main__":
    main()
