#!/usr/bin/env python
"""A wide pipeline against DataJoint's floor and stock populate (issue #19): per-key cost
and statements per make on a tree of tables, and the fixed cost of no-op commands.

    python bench/bench_wide.py                                   # MariaDB and PostgreSQL, 60 tables x 200 keys
    python bench/bench_wide.py --db postgresql --tables 7 --keys 5 --noop-tables 20   # a smoke test

For each database, in a child process with fresh schemas dropped at the end:

1. bench/wide_pipeline.py as a binary tree (``DJO_BENCH_SHAPE=tree``): ``--tables``
   computed tables over one manual ``Source`` of ``--keys`` rows, every third table with
   a second parent, every make trivial. Each system from empty tables, one after the
   other, ``--reps`` (3) times interleaved, the best of each reported:
   * DataJoint's floor: ``populate()`` of each table in order, no jobs table, in this
     process (the calls alone: no interpreter start, import or connect);
   * the same floor as a whole process (bench/stock.py --no-jobs): what a command's wall
     time holds besides its makes (interpreter start, import, connect) is in both;
   * ``dj-orchestrate run --workers N`` (N in ``--workers``: 1, 2, 4), the whole CLI in a
     fresh process: start, import, connect, plan, the forked workers, the summary;
   * stock ``populate(reserve_jobs=True)`` of each table in order, in a fresh process
     (bench/stock.py), timed as a whole like the CLI, once (it takes 2-3x the others).
   Reported: the time, its ratio to the floor, to the floor as a process and to stock,
   and the statements each sent per make.
2. A no-op ``run``, ``status`` and ``plan`` of a ``--noop-tables`` (200) table tree with
   one key, all made: the wall time of each command (best of ``--reps``) over a fresh
   ``import datajoint``, and the statements it sent; for comparison, stock populate of
   every table with nothing to do, and importing the pipeline alone.

Statements are counted in the measured processes (bench/counting.py: every command the
database driver sends, in the process and the workers it forks), never on the server,
which other clients share. With ``--kinds``, part 1 also prints them per make by kind
(verb and table kind); writing each one's kind down adds to every system's time, so its
times are for that table only. See bench/README.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from counting import Counter, install  # noqa: E402
from harness import (BENCH, DATABASES, IMPORT_DATAJOINT, child_result, command, counted, database,  # noqa: E402
                     each, empty, floor, floor_argv, in_child, log, machine, markdown, met, ratio, stock_argv)

WIDE = str(BENCH / "wide_pipeline.py")
PARTS = ("wide", "noop")


def tree(tables: int, tmp: str) -> dict[str, str]:
    """The environment that makes bench/wide_pipeline.py a tree of ``tables`` tables (the
    workers' logs in ``tmp``)."""
    return {"DJO_BENCH_TABLES": str(tables), "DJO_BENCH_SHAPE": "tree", "DJO_LOG_DIR": str(Path(tmp) / "logs")}


def load(keys: int) -> list[Any]:
    """The pipeline with ``keys`` source rows and its tables in order, their jobs tables
    and the run ledger declared (a first run's one-time cost, outside every timing)."""
    from dj_orchestrate import pipeline
    from dj_orchestrate.jobs import JobTable

    command(["-m", "dj_orchestrate", "run", WIDE, "--no-progress", "--workers", "1"])  # (no keys yet: declares only)
    module = pipeline.load(WIDE)
    tables = [getattr(module, f"T{i:02d}") for i in range(module.TABLES)]
    for table in tables:
        JobTable(table()).ensure()
    module.Source.insert({"key_id": i} for i in range(keys))
    return tables


def check(tables: list, keys: int, system: str) -> None:
    """Every key made once, nothing left in a jobs table: a timing of a failed run means nothing."""
    from dj_orchestrate.jobs import JobTable

    for table in tables:
        left = {k: v for k, v in JobTable(table()).status_counts().items() if v}
        if len(table()) != keys or left:
            raise SystemExit(f"bench_wide: {system} left {table.__name__} with {len(table())} of {keys} rows, jobs {left}")


def wide(name: str, args: argparse.Namespace) -> list[dict]:
    """Part 1 on one database: every system on the tree, each from empty tables."""
    with tempfile.TemporaryDirectory(prefix="djo-bench-wide-") as tmp:
        if args.kinds:
            os.environ["DJO_BENCH_KINDS"] = "1"  # (read by install, here and in every measured process)
        counter = install(Path(tmp) / "counts")  # before the first connection
        with database(name, "djo_bench_wide", **tree(args.tables, tmp)) as conn:
            return wide_systems(name, args, conn, counter)


def wide_systems(name: str, args: argparse.Namespace, conn: Any, counter: Counter) -> list[dict]:
    """The floor (counted by ``counter``, in this process), the floor as a process and the
    runs, in turn ``--reps`` times (the best of each reported: on a shared machine the
    noise only ever adds time), then stock once."""
    tables = load(args.keys)
    names = [t.__name__ for t in tables]
    makes = len(tables) * args.keys
    runs: dict[str, dict] = {}

    def measured(system: str, seconds: float, sent: int, kinds: collections.Counter[str], note: str = "") -> None:
        check(tables, args.keys, system)
        log(f"{name}: {system}: {seconds:.2f} s, {sent / makes:.1f} statements per make")
        run = runs.setdefault(system, {"db": name, "system": system, "runs": []})
        run["runs"].append(seconds)
        if seconds == min(run["runs"]):  # the best run's figures
            run.update(seconds=seconds, per_make=sent / makes, note=note, kinds={k: n / makes for k, n in kinds.items()})
        empty(conn, tables)

    for rep in range(args.reps):  # interleaved, so that a busy moment on a shared machine hits all
        log(f"{name}: floor, {len(tables)} tables x {args.keys} keys, {rep + 1}/{args.reps}")
        sent, kinds = counter.sent, counter.kinds.copy()
        seconds = floor(*tables)
        measured("floor", seconds, counter.sent - sent, counter.kinds - kinds)
        seconds, sent, kinds, _ = counted(floor_argv(WIDE, *names))
        measured("floor process", seconds, sent, kinds)
        for workers in args.workers:
            log(f"{name}: dj-orchestrate run --workers {workers}")
            seconds, sent, kinds, _ = counted(["-m", "dj_orchestrate", "run", WIDE, "--workers", str(workers),
                                               "--no-progress"])
            measured(f"run {workers}", seconds, sent, kinds)
    log(f"{name}: stock populate(reserve_jobs=True) of each table")
    seconds, sent, kinds, out = counted(stock_argv(WIDE, *names))
    calls = json.loads(out.strip().splitlines()[-1])["seconds"]
    measured("stock", seconds, sent, kinds, f"the populate() calls alone: {calls:.2f} s")
    return list(runs.values())


def noop(name: str, args: argparse.Namespace) -> list[dict]:
    """Part 2 on one database: no-op commands on a tree of ``--noop-tables`` tables, all made."""
    with tempfile.TemporaryDirectory(prefix="djo-bench-noop-") as tmp, \
            database(name, "djo_bench_noop", **tree(args.noop_tables, tmp)):
        tables = load(1)
        floor(*tables)
        names = [t.__name__ for t in tables]
        commands = {
            "`run`": ["-m", "dj_orchestrate", "run", WIDE, "--no-progress"],
            "`status`": ["-m", "dj_orchestrate", "status", WIDE],
            "`plan`": ["-m", "dj_orchestrate", "plan", WIDE],
            "stock populate(reserve_jobs=True) of each table": stock_argv(WIDE, *names),
            "importing the pipeline alone (DataJoint declares its tables)": stock_argv(WIDE),
        }
        times: dict[str, list[float]] = {"import": [], **{what: [] for what in commands}}
        sent: dict[str, int] = {}
        for rep in range(args.reps):  # interleaved, so that a busy moment on a shared machine hits all
            log(f"{name}: no-op commands on {len(tables)} tables, {rep + 1}/{args.reps}")
            times["import"].append(command(IMPORT_DATAJOINT))
            for what, argv in commands.items():
                seconds, sent[what], _, _ = counted(argv)
                times[what].append(seconds)
        base = min(times["import"])
        return [{"db": name, "command": what, "seconds": min(times[what]), "runs": times[what], "base": base,
                 "sent": sent[what]} for what in commands]


def by_kind(runs: list[dict], least: float = 0.005) -> str:
    """Per database, a row per kind of statement, a column per system: where the statements
    go (kinds under ``least`` per make in every system left out: a run's fixed cost)."""
    systems = list(dict.fromkeys(r["system"] for r in runs))
    cells = []
    for db in dict.fromkeys(r["db"] for r in runs):
        per = {r["system"]: r["kinds"] for r in runs if r["db"] == db}
        most = {k: max(kinds.get(k, 0) for kinds in per.values()) for kinds in per.values() for k in kinds}
        cells += [[db, k, *(f"{per[s].get(k, 0):.2f}" for s in systems)]
                  for k in sorted(most, key=lambda k: -most[k]) if most[k] >= least]
    return markdown(["DB", "kind", *systems], cells)


def render(results: dict[str, list[dict]], args: argparse.Namespace) -> str:
    out = [machine()]
    if results["wide"]:
        out += ["", f"{args.tables} computed tables (bench/wide_pipeline.py, a binary tree, every third table with a "
                    f"second parent) x {args.keys} keys = {args.tables * args.keys:,} makes", ""]
        cells = []
        for r in results["wide"]:
            base = {x["system"]: x["seconds"] for x in results["wide"] if x["db"] == r["db"]}
            label = {"floor": "DataJoint's floor: populate() of each table in order, no jobs table, in-process",
                     "floor process": "the floor as a whole process: python importing the pipeline, then the same populate() calls",
                     "stock": "stock populate(reserve_jobs=True) of each table in order (one run)"}.get(
                r["system"], f"`dj-orchestrate run --workers {r['system'].split()[-1]}` (whole CLI)")
            note = r["note"]
            if r["system"].startswith("run ") and r["system"] != "run 1" and "run 1" in base:
                note = f"{base['run 1'] / r['seconds']:.2f}× the speed of --workers 1 ({os.cpu_count()} CPUs)"
            cells.append([r["db"], label, f"{r['seconds']:.2f} s{each(r['runs'])}", ratio(r["seconds"], base["floor"]),
                          ratio(r["seconds"], base["floor process"]), ratio(r["seconds"], base["stock"]),
                          f"{r['per_make']:.1f}", note])
        out.append(markdown(["DB", "system", "time (best)", "÷ DataJoint's floor", "÷ the floor as a process", "÷ stock",
                             "statements per make", "notes"], cells))
    if args.kinds and results["wide"]:
        out += ["", "statements per make by kind (their verb and the kind of table they name first; kinds under 0.005 "
                    "per make in every system left out)", "", by_kind(results["wide"])]
    if results["noop"]:
        out += ["", f"no-op commands on a {args.noop_tables}-table tree, everything made (best of {args.reps}; "
                    "over: the wall time less a fresh `import datajoint`'s)", ""]
        out.append(markdown(["DB", "command", "wall time", "over import datajoint", "target ≤ 2 s", "statements"], [
            [r["db"], r["command"], f"{r['seconds']:.2f} s{each(r['runs'])}", f"{r['seconds'] - r['base']:.2f} s",
             met(r["seconds"] - r["base"] <= 2) if r["command"].startswith("`") else "", r["sent"]]
            for r in results["noop"]]))
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["mysql", "postgresql", "both"], default="both")
    parser.add_argument("--tables", type=int, default=60, help="tables of the tree (default 60)")
    parser.add_argument("--keys", type=int, default=200, help="source rows: keys per table (default 200)")
    parser.add_argument("--workers", default="1,2,4", help="the runs' --workers, comma-separated (default 1,2,4)")
    parser.add_argument("--noop-tables", type=int, default=200, help="tables of the no-op commands' tree (default 200)")
    parser.add_argument("--reps", type=int, default=3,
                        help="runs of each system but stock, and of each no-op command; the best is reported")
    parser.add_argument("--only", choices=PARTS, help="one part: wide (per key) or noop (no-op commands)")
    parser.add_argument("--kinds", action="store_true", help="also the statements per make by kind (slows every system)")
    parser.add_argument("--_one", nargs=2, help=argparse.SUPPRESS)  # DATABASE PART, in a process of its own
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workers = [int(w) for w in args.workers.split(",")]
    if args._one:
        database_name, part = args._one
        child_result(args._out, {"wide": wide, "noop": noop}[part](database_name, args))
        return
    started = time.perf_counter()
    results: dict[str, list[dict]] = {part: [] for part in PARTS}
    for name in sorted(DATABASES) if args.db == "both" else [args.db]:
        for part in [args.only] if args.only else PARTS:
            result = in_child([__file__, "--_one", name, part, "--tables", str(args.tables), "--keys", str(args.keys),
                               "--workers", ",".join(map(str, args.workers)), "--noop-tables", str(args.noop_tables),
                               "--reps", str(args.reps), *(["--kinds"] if args.kinds else [])])
            if result is None:
                sys.exit(f"bench_wide: {part} on {name} failed")
            results[part] += result
    log(f"done in {time.perf_counter() - started:.0f} s")
    print(render(results, args))


if __name__ == "__main__":
    main()
