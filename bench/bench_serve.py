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
in the measured process itself (its DataJoint connection's ``query``, counted by the
prelude below before the CLI or the loop starts): other activity on the server does not
count.

Needs the database; uses fresh schemas (``djo_bench_*``), dropped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import BENCH, DATABASES, database_env, drop_schemas, fresh_schema, log, machine, markdown, python_env  # noqa: E402

WIDE = str(BENCH / "wide_pipeline.py")

# Counts every statement the process's DataJoint connections send; a thread writes the
# count to $DJO_BENCH_COUNT every 0.2 s, which the bench reads at the idle window's ends.
PRELUDE = """
import os, signal, sys, threading, time
import datajoint.connection as c
sent = [0]
query = c.Connection.query
def counted(self, *a, **k):
    sent[0] += 1
    return query(self, *a, **k)
c.Connection.query = counted
def publish():
    while True:
        with open(os.environ["DJO_BENCH_COUNT"] + ".tmp", "w") as f:
            f.write(str(sent[0]))
        os.replace(os.environ["DJO_BENCH_COUNT"] + ".tmp", os.environ["DJO_BENCH_COUNT"])
        time.sleep(0.2)
threading.Thread(target=publish, daemon=True).start()
"""
SERVE = PRELUDE + "sys.argv[0] = 'dj-orchestrate'\nfrom dj_orchestrate.cli import main\nmain()\n"
LOOP = PRELUDE + """
import importlib.util, time
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
spec = importlib.util.spec_from_file_location("wide_pipeline", sys.argv[1])
m = importlib.util.module_from_spec(spec); sys.modules["wide_pipeline"] = m; spec.loader.exec_module(m)
tables = [getattr(m, f"T{i:02d}") for i in range(m.TABLES)]
while True:
    for t in tables:
        t.populate(reserve_jobs=True, suppress_errors=True)
    time.sleep(float(sys.argv[2]))
"""


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
    count = work / f"{name}.count"
    log(f"{name}: started; idle for {idle:.0f} s")
    with open(work / f"{name}.log", "w") as out:
        proc = subprocess.Popen([sys.executable, *argv], env=python_env({**env, "DJO_BENCH_COUNT": str(count)}),
                                cwd=work, stdout=out, stderr=subprocess.STDOUT)
    try:
        ps = psutil.Process(proc.pid)
        time.sleep(2 * interval + 8)  # its start and a first pass over the (made) pipeline: not idle cost
        cpu0, sent0 = cpu(ps), int(count.read_text())
        time.sleep(idle)
        idle_cpu, idle_sent = cpu(ps) - cpu0, int(count.read_text()) - sent0
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


def bench(database: str, tables: int, keys: int, interval: float, idle: float) -> list[list]:
    schema = fresh_schema("djo_bench")
    env = {**os.environ, **database_env(database, schema), "DJO_BENCH_TABLES": str(tables)}
    os.environ.update(env)
    import datajoint as dj

    from dj_orchestrate import db, pipeline

    db.connect()
    module = pipeline.load(WIDE)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"{schema}-serve"
    work.mkdir(parents=True, exist_ok=True)
    try:
        module.Source.insert({"key_id": i} for i in range(keys))
        log(f"{database}: making {tables} tables x {keys} keys once")
        subprocess.run([sys.executable, "-m", "dj_orchestrate", "run", WIDE, "--workers", "2", "--no-progress"],
                       env=python_env(env), cwd=work, check=True, capture_output=True)
        ours = measure("serve", ["-c", SERVE, "serve", WIDE, "--interval", str(interval), "--workers", "2"], env, work,
                       idle, interval, module)
        stock = measure("loop", ["-c", LOOP, WIDE, str(interval)], env, work, idle, interval, module)
    finally:
        drop_schemas(dj.conn(), [schema + "_wide", schema + "_ledger"])
    return [[database, name, f"{r['per_interval']:.0f}", f"{r['cpu']:.2f}", f"{r['delay']:.1f}"]
            for name, r in (("`serve --interval %g`" % interval, ours), ("populate(reserve_jobs=True) loop", stock))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=sorted(DATABASES), action="append", help="default: both")
    parser.add_argument("--tables", type=int, default=60)
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--idle", type=float, default=60.0)
    parser.add_argument("--rows-only", action="store_true", help=argparse.SUPPRESS)  # (one database, in a process of its own)
    args = parser.parse_args()
    if args.rows_only:
        print(json.dumps(bench(args.db[0], args.tables, args.keys, args.interval, args.idle)))
        return
    rows = []
    for database in args.db or sorted(DATABASES):  # each in a fresh process: a pipeline module is imported once
        out = subprocess.run([sys.executable, __file__, "--rows-only", "--db", database, "--tables", str(args.tables),
                              "--keys", str(args.keys), "--interval", str(args.interval), "--idle", str(args.idle)],
                             stdout=subprocess.PIPE, text=True, check=True)
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{machine()}\n{args.tables} computed tables (bench/wide_pipeline.py) x {args.keys} keys, all made; idle "
          f"{args.idle:.0f} s at --interval {args.interval:g}, then one new source row\n")
    print(markdown(["database", "system", "statements per interval (idle)", f"CPU s in {args.idle:.0f} s idle",
                    "new row -> its last downstream key (s)"], rows))


if __name__ == "__main__":
    main()
