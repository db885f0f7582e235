#!/usr/bin/env python
"""Claim cost from the first claim to the last (issue #19): 100,000 keys in 10 tables,
one worker, and the per-key cost of the first, middle and last 1,000 makes.

    python bench/bench_claims.py                        # MariaDB and PostgreSQL, 10 tables x 10,000 sessions
    python bench/bench_claims.py --db mysql --keys 500  # a smoke test

For each database, in a child process with a fresh schema dropped at the end:
bench/claims_pipeline.py with ``--keys`` sessions and ``--tables`` computed tables each
directly under them, every make trivial but writing down when it ran (``made_at``). From
empty tables (the jobs tables not declared yet: a first run), ``dj-orchestrate run
--workers 1 --no-progress``, the whole CLI in a fresh process. Then every ``made_at``
(one query per table), sorted: the per-key cost of a window is the time between its
first and its last make over the keys it spans. Reported: the CLI's wall time and keys
per second over it, the time from the command's start to the first make (start-up,
plan, enqueue), the per-key cost of the first, middle and last ``--window`` (1,000)
makes, and last ÷ first: a claim that costs the same on an empty queue as on a full one
gives about 1. See bench/README.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BENCH, DATABASES, child_result, command, database, in_child, log, machine, markdown, met  # noqa: E402

CLAIMS = str(BENCH / "claims_pipeline.py")
FLAT = 1.3  # last ÷ first above this: the claims grow with the work done (or left)


def load(keys: int) -> tuple[Any, list[Any]]:
    """The pipeline with ``keys`` sessions, and its computed tables."""
    from dj_orchestrate import pipeline

    module = pipeline.load(CLAIMS)
    module.Session.insert({"session_id": i} for i in range(keys))
    return module, [getattr(module, f"C{i:02d}") for i in range(module.TABLES)]


def made_at(tables: list[Any], keys: int) -> list[float]:
    """Every make's time, in order; every key made once and nothing left in a jobs
    table, or the bench fails (a timing of a failed run means nothing)."""
    from dj_orchestrate.jobs import JobTable

    times = []
    for table in tables:
        made = table().to_arrays("made_at")
        left = {k: v for k, v in JobTable(table()).status_counts().items() if v}
        if len(made) != keys or left:
            raise SystemExit(f"bench_claims: {table.__name__} has {len(made)} of {keys} rows, jobs {left}")
        times.extend(float(t) for t in made)
    return sorted(times)


def per_key(times: list[float], start: int, width: int) -> float:
    """Milliseconds per key over the ``width`` makes after ``times[start]``."""
    return (times[start + width] - times[start]) / width * 1000


def one(name: str, args: argparse.Namespace) -> dict:
    """The run on one database, and what its makes' times say."""
    with tempfile.TemporaryDirectory(prefix="djo-bench-claims-") as tmp, \
            database(name, "djo_bench_claims", DJO_BENCH_TABLES=str(args.tables), DJO_LOG_DIR=str(Path(tmp) / "logs")):
        _, tables = load(args.keys)
        n = len(tables) * args.keys
        log(f"{name}: dj-orchestrate run --workers 1, {len(tables)} tables x {args.keys} keys")
        started = time.time()
        seconds = command(["-m", "dj_orchestrate", "run", CLAIMS, "--workers", "1", "--no-progress"], timeout=3 * 3600)
        times = made_at(tables, args.keys)
        width = min(args.window, (n - 1) // 3)
        windows = {"first": 0, "middle": (n - 1 - width) // 2, "last": n - 1 - width}
        log(f"{name}: {seconds:.1f} s")
        return {"db": name, "keys": n, "seconds": seconds, "to_first": times[0] - started, "width": width,
                **{what: per_key(times, start, width) for what, start in windows.items()}}


def render(results: list[dict], args: argparse.Namespace) -> str:
    width = results[0]["width"]
    cells = [[r["db"], f"{r['keys']:,}", f"{r['seconds']:.1f} s", f"{r['keys'] / r['seconds']:.0f}",
              f"{r['to_first']:.1f} s", *(f"{r[w]:.3f}" for w in ("first", "middle", "last")),
              f"{r['last'] / r['first']:.2f}", met(r["last"] / r["first"] <= FLAT)] for r in results]
    return "\n".join([
        machine(), "",
        f"{args.tables} computed tables (bench/claims_pipeline.py, each under one manual Session) x {args.keys:,} "
        f"sessions, `dj-orchestrate run --workers 1` from empty tables (whole CLI); per-key cost of {width:,} makes "
        "in ms/key", "",
        markdown(["DB", "keys", "CLI wall time", "keys/s", "start to first make", f"first {width:,}",
                  f"middle {width:,}", f"last {width:,}", "last ÷ first", f"flat (≤ {FLAT})"], cells)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["mysql", "postgresql", "both"], default="both")
    parser.add_argument("--keys", type=int, default=10_000, help="sessions: keys per table (default 10,000)")
    parser.add_argument("--tables", type=int, default=10, help="computed tables (default 10)")
    parser.add_argument("--window", type=int, default=1000, help="makes per reported window (default 1,000)")
    parser.add_argument("--_one", help=argparse.SUPPRESS)  # DATABASE, in a process of its own
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._one:
        child_result(args._out, one(args._one, args))
        return
    started = time.perf_counter()
    results = []
    for name in sorted(DATABASES) if args.db == "both" else [args.db]:
        result = in_child([__file__, "--_one", name, "--keys", str(args.keys), "--tables", str(args.tables),
                           "--window", str(args.window)])
        if result is None:
            sys.exit(f"bench_claims: {name} failed")
        results.append(result)
    log(f"done in {time.perf_counter() - started:.0f} s")
    print(render(results, args))


if __name__ == "__main__":
    main()
