#!/usr/bin/env python
"""An idle ``serve`` against the loop users write without dj-orchestrate.

    python bench/bench_serve.py                    # both databases, 60 tables, --interval 5, 60 s idle
    python bench/bench_serve.py --db mysql --idle 30

For each database, on bench/wide_pipeline.py with ``--tables`` computed tables (five
levels with fan-in) over ``--keys`` source rows, everything made first:
  * ``dj-orchestrate serve --interval I`` (the whole CLI, in its own process), and
  * ``while True: for t in tables: t.populate(reserve_jobs=True); sleep(I)`` (stock),
each left idle for ``--idle`` seconds: the statements it sent per interval and the CPU
seconds it used (its process and its children); then one new source row is inserted and
the delay until its last downstream key is made is measured. The statements are counted
in the measured processes themselves (bench/counting.py: every command their database
driver sends, in the process and the workers it forks): other activity on the server
does not count.

Needs the database; uses fresh schemas (``djo_bench_*``), dropped at the end.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (BENCH, COUNTING, DATABASES, child_result, database, in_child, log, machine, markdown,  # noqa: E402
                     python_env, statements_sent)

WIDE = str(BENCH / "wide_pipeline.py")
LOOP = str(BENCH / "populate_loop.py")


def cpu(proc: psutil.Process) -> float:
    """CPU seconds of a process and its children, living and reaped."""
    times = proc.cpu_times()
    total = times.user + times.system + times.children_user + times.children_system
    for child in proc.children(recursive=True):
        with_children = child.cpu_times()
        total += with_children.user + with_children.system
    return total


def measure(name: str, argv: list[str], env: dict, work: Path, idle: float, interval: float, module) -> dict:
    """Idle ``idle`` s (after its start and a first pass), then one new row through every table."""
    counts = work / f"{name}.counts"
    log(f"{name}: started; idle for {idle:.0f} s")
    with open(work / f"{name}.log", "w") as out:
        proc = subprocess.Popen([sys.executable, COUNTING, str(counts), *argv], env=python_env(env), cwd=work,
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        ps = psutil.Process(proc.pid)
        time.sleep(2 * interval + 8)  # its start and a first pass over the (made) pipeline: not idle cost
        cpu0, sent0 = cpu(ps), statements_sent(counts)
        time.sleep(idle)
        idle_cpu, idle_sent = cpu(ps) - cpu0, statements_sent(counts) - sent0
        new = max(r["key_id"] for r in module.Source.to_dicts()) + 1
        module.Source.insert1({"key_id": new})
        inserted = time.monotonic()
        tables = [getattr(module, f"T{i:02d}") for i in range(module.TABLES)]
        while not all(t & {"key_id": new} for t in tables):
            if time.monotonic() - inserted > 300:
                raise SystemExit(f"{name}: the new row was not made through every table in 300 s; see {work / name}.log")
            time.sleep(0.1)
        delay = time.monotonic() - inserted
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    return {"cpu": idle_cpu, "per_interval": idle_sent / (idle / interval), "delay": delay}


def bench(name: str, tables: int, keys: int, interval: float, idle: float) -> list[list]:
    with database(name, "djo_bench", DJO_BENCH_TABLES=str(tables)):
        from dj_orchestrate import pipeline

        env = dict(os.environ)
        module = pipeline.load(WIDE)
        work = Path(os.environ.get("TMPDIR", "/tmp")) / f"{os.environ['DJO_BENCH_SCHEMA']}-serve"
        work.mkdir(parents=True, exist_ok=True)
        module.Source.insert({"key_id": i} for i in range(keys))
        log(f"{name}: making {tables} tables x {keys} keys once")
        subprocess.run([sys.executable, "-m", "dj_orchestrate", "run", WIDE, "--workers", "2", "--no-progress"],
                       env=python_env(env), cwd=work, check=True, capture_output=True)
        ours = measure("serve", ["-m", "dj_orchestrate", "serve", WIDE, "--interval", str(interval), "--workers", "2"],
                       env, work, idle, interval, module)
        stock = measure("loop", [LOOP, WIDE, str(interval)], env, work, idle, interval, module)
    return [[name, system, f"{r['per_interval']:.0f}", f"{r['cpu']:.2f}", f"{r['delay']:.1f}"]
            for system, r in (("`serve --interval %g`" % interval, ours), ("populate(reserve_jobs=True) loop", stock))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=sorted(DATABASES), action="append", help="default: both")
    parser.add_argument("--tables", type=int, default=60)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--_out", help=argparse.SUPPRESS)  # (one database, in a process of its own)
    args = parser.parse_args()
    if args._out:
        child_result(args._out, bench(args.db[0], args.tables, args.keys, args.interval, args.idle))
        return
    rows = []
    for name in args.db or sorted(DATABASES):  # each in a fresh process: a pipeline module is imported once
        result = in_child([__file__, "--db", name, "--tables", str(args.tables), "--keys", str(args.keys),
                           "--interval", str(args.interval), "--idle", str(args.idle)])
        if result is None:
            sys.exit(f"bench_serve: the bench on {name} failed")
        rows += result
    print(f"{machine()}\n{args.tables} computed tables (bench/wide_pipeline.py) x {args.keys} keys, all made; idle "
          f"{args.idle:.0f} s at --interval {args.interval:g}, then one new source row\n")
    print(markdown(["database", "system", "statements per interval (idle)", f"CPU s in {args.idle:.0f} s idle",
                    "new row -> its last downstream key (s)"], rows))


if __name__ == "__main__":
    main()
