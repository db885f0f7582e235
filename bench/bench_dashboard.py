#!/usr/bin/env python
"""The dashboard on a large history: server time of each page and of /metrics.

    python bench/bench_dashboard.py                 # MariaDB and PostgreSQL, full size
    python bench/bench_dashboard.py --quick         # a tenth of the rows
    python bench/bench_dashboard.py --db mysql

A 60-table pipeline (three levels of 20) whose jobs tables hold 1,000,000 rows in all:
per table about 8,000 keys done (their rows and 'success' jobs rows), 1,667 errors (100,000
in all, 50 causes whose messages differ in numbers and paths too), 100 reserved by gone
workers, the rest pending; 1,000 runs in the ledger with a shard each, and make
durations; then the tables are analyzed, as autovacuum (PostgreSQL) and InnoDB's
statistics (MariaDB) soon would. A real ``dj-orchestrate dashboard`` serves it; each URL
is fetched once (``first``: what the first viewer waits for), then 20 times 0.3 s apart
(longer than the dashboard's snapshots live, so refreshes happen while it is measured):
the median, 95th percentile and worst (the issue's target: 300 ms at most, every page) of
the time to the last byte (the server's time and the local connection's), and the
statements the page ran (its ``Server-Timing`` header; "-" where the server does not say).
Then 20 actions (a retry that finds nothing to retry, with the token), each followed by
the page it leads to (``/failures``): the action takes the snapshots again before it
answers, so that page waits for none. ``status --json`` (a process of its own, as a user
runs it, 20 times) for comparison. Each database runs in a child process with fresh
schemas, dropped at the end. Prints the table, and the pages over the target.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid

from harness import BENCH, DATABASES, child_result, database, in_child, log, python_env

PIPELINE = BENCH / "dashboard_pipeline.py"
TABLES, CAUSES, RUNS, REPS, PAUSE = 60, 50, 1000, 20, 0.3
TARGET_MS = 300
TOKEN = "bench-" + uuid.uuid4().hex
WORDS = ("disk", "quota", "cuda", "memory", "nwb", "probe", "kilosort", "spike", "timeout", "socket")


def cause_text(c: int) -> str:
    """The 50 causes: words (not numbers: those are normalised away) tell them apart."""
    return f"{WORDS[c % 10].title()}Error: {WORDS[c // 10]} failed"


def populate_history(n_keys: int) -> str:
    """Declare the pipeline and fill its tables, jobs tables and ledger by SQL."""
    import datajoint as dj

    from dj_orchestrate import ledger, pipeline
    from dj_orchestrate.jobs import JobTable

    path = PIPELINE
    module = pipeline.load(str(path))
    conn = dj.conn()
    done, errors, reserved = int(n_keys * 0.48), n_keys // 10, 100
    module.Session.insert(({"session_id": i} for i in range(n_keys)))
    for n, info in enumerate(pipeline.discover(module)):
        jt = JobTable(info.instance())
        jt.ensure()
        conn.query(f"INSERT INTO {jt.target} (session_id) SELECT session_id FROM {module.Session().full_table_name} "
                   f"WHERE session_id < %s", (done,))
        cause = f"MOD(session_id, {CAUSES})"
        words = "CASE " + " ".join(f"WHEN {cause} = {c} THEN '{cause_text(c)}'" for c in range(CAUSES)) + " END"
        cast = "CHAR" if jt.mysql else "TEXT"
        conn.query(
            f"INSERT INTO {jt.name} (session_id, status, priority, host, pid, connection_id, reserved_time, "
            f"completed_time, attempts) SELECT session_id, 'pending', 5, 'node{n % 8}', 1000 + session_id, "
            f"999999 + session_id, CURRENT_TIMESTAMP(3), CURRENT_TIMESTAMP(3), 1 "
            f"FROM {module.Session().full_table_name}")
        # statuses as literals (PostgreSQL's enum takes a literal, not a CASE's text)
        conn.query(f"UPDATE {jt.name} SET status = 'success' WHERE session_id < %s", (done,))
        conn.query(f"UPDATE {jt.name} SET status = 'error', error_message = CONCAT({words}, ' at /data/s', "
                   f"CAST(session_id AS {cast}), '/raw.bin, value ', CAST(session_id * 7 AS {cast})) "
                   f"WHERE session_id >= %s AND session_id < %s", (done, done + errors))
        conn.query(f"UPDATE {jt.name} SET status = 'reserved' WHERE session_id >= %s AND session_id < %s",
                   (done + errors, done + errors + reserved))
    ident = pipeline.identity(module)
    Run, Shard, RunPipeline = ledger.tables()
    runs = [dict(run_id=f"bench-{i:06d}", pipeline=str(path), backend="local", tables="T00", state="done",
                 host="h", user="u", started=ledger.now(), ended=ledger.now()) for i in range(RUNS)]
    Run.insert(runs)
    RunPipeline.insert([dict(run_id=r["run_id"], pipeline_id=ledger.pipeline_id(*ident), module_file=ident[0][:1023],
                             schemas=",".join(ident[1])) for r in runs])
    Shard.insert([dict(run_id=r["run_id"], table_name="T00", shard=0, keys_done=10) for r in runs])
    ledger.make_stats(create=True).insert(
        [dict(run_id=r["run_id"], table_name=f"T{i:02d}", worker="h:1", n=10, total=12.5, longest=3.0,
              buckets=json.dumps([0, 5, 5, 0, 0, 0, 0]), updated=ledger.now())
         for r in runs[:50] for i in range(TABLES)])
    rows = sum(int(conn.query(f"SELECT COUNT(*) FROM {JobTable(t.instance()).name}").fetchone()[0])
               for t in pipeline.discover(module))
    names = [module.Session().full_table_name] + [n for t in pipeline.discover(module)
                                                  for n in (t.instance().full_table_name, JobTable(t.instance()).name)]
    for name in names:
        conn.query(f"ANALYZE {'TABLE ' if conn.adapter.backend == 'mysql' else ''}{name}")
    log(f"{rows} jobs rows, {errors * TABLES} errors in {CAUSES} causes, {RUNS} runs")
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def timed(url: str) -> tuple[float, int | None]:
    """Seconds to the last byte, and the statements the server says the page ran."""
    t = time.perf_counter()
    with urllib.request.urlopen(url, timeout=600) as r:
        r.read()
        assert r.status == 200, (url, r.status)
        found = re.search(r'desc="([0-9]+) statements"', r.headers.get("Server-Timing", ""))
    return time.perf_counter() - t, int(found.group(1)) if found else None


def posted(base: str, path: str, form: dict[str, str]) -> float:
    """Seconds to the answer of an action (a redirect: not followed, the page is timed apart)."""
    conn = http.client.HTTPConnection(urllib.parse.urlsplit(base).netloc, timeout=600)
    t = time.perf_counter()
    try:
        conn.request("POST", path, urllib.parse.urlencode(form), {"Authorization": f"Bearer {TOKEN}",
                                                                  "Content-Type": "application/x-www-form-urlencoded"})
        r = conn.getresponse()
        r.read()
        assert r.status == 303, (path, r.status)
        return time.perf_counter() - t
    finally:
        conn.close()


def figures(first: float, times: list[float], counts: set[int | None]) -> dict:
    """first, median, 95th percentile and worst (ms), and the statements per fetch ("n", or
    "min–max" where they differ)."""
    statements = "-" if None in counts else f"{min(counts)}" + (f"–{max(counts)}" if len(counts) > 1 else "")
    return {"first_ms": 1000 * first, "median_ms": 1000 * statistics.median(times),
            "p95_ms": 1000 * statistics.quantiles(times, n=20)[-1], "max_ms": 1000 * max(times),
            "statements": statements}


def fetched(url: str) -> dict:
    """The first fetch, then REPS more PAUSE apart."""
    first = timed(url)[0]
    times, counts = [], set()
    for _ in range(REPS):
        time.sleep(PAUSE)
        seconds, n = timed(url)
        times.append(seconds)
        counts.add(n)
    return figures(first, times, counts)


def after_actions(base: str) -> list[dict]:
    """REPS actions, PAUSE apart (a retry of a key that is not there, with the token: the
    whole action, snapshots taken again included), each followed at once by the page it
    leads to: the action's and the page's figures."""
    acts, pages, counts = [], [], set()
    for _ in range(REPS + 1):
        time.sleep(PAUSE)
        acts.append(posted(base, "/actions/retry", {"table": "T00", "key": '{"session_id": -1}', "next": "/failures"}))
        seconds, n = timed(base + "/failures")
        pages.append(seconds)
        counts.add(n)
    return [{"what": "POST /actions/retry (a retry, then the snapshots taken again)",
             **figures(acts[0], acts[1:], {None})},
            {"what": "/failures right after an action", **figures(pages[0], pages[1:], counts)}]


def one_database(backend: str, quick: bool) -> list[dict]:
    with database(backend, "djo_bench"):
        env = python_env()  # this checkout's dj_orchestrate and the fresh schemas, for the server and `status`
        spec = populate_history(1_000_000 // TABLES // (10 if quick else 1))
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "dj_orchestrate", "dashboard", spec, "--port", str(port)],
                                  env={**env, "DJO_DASHBOARD_TOKEN": TOKEN}, stderr=subprocess.DEVNULL)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(600):
                try:
                    timed(base + "/healthz")
                    break
                except OSError:
                    time.sleep(0.5)
            cause = urllib.parse.quote(f"{WORDS[0].title()}Error: {WORDS[0]} failed at <path>, value <n>")
            pages = ["/", "/fragment/overview", "/failures", f"/failures/group?cause={cause}", "/runs",
                     "/tables/T00?status=error", "/api/status", "/api/plan", "/metrics", "/healthz"]
            out = []
            for page in pages:
                out.append({"db": backend, "what": page.split("?")[0] + ("?..." if "?" in page else ""),
                            **fetched(base + page)})
                log(f"{backend} {page}: {out[-1]['median_ms']:.0f} ms, {out[-1]['statements']} statements")
            out += [{"db": backend, **r} for r in after_actions(base)]
        finally:
            server.terminate()
            server.wait()
        times = []
        for _ in range(REPS + 1):
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "dj_orchestrate", "status", spec, "--json"], env=env, check=True,
                           capture_output=True)
            times.append(time.perf_counter() - t)
        out.append({"db": backend, "what": "status --json (a whole process)", **figures(times[0], times[1:], {None})})
        return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db", choices=sorted(DATABASES), action="append")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--_one", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._one:
        child_result(args._out, one_database(args._one, args.quick))
        return
    rows = []
    for backend in args.db or sorted(DATABASES):
        result = in_child([__file__, "--_one", backend] + (["--quick"] if args.quick else []))
        if result is None:
            sys.exit(1)
        rows += result
    print(f"{platform.node()}: {os.cpu_count()} cores, {platform.python_version()}"
          f"{' (--quick: a tenth of the rows)' if args.quick else ''}\n")
    print("| database | page | first ms | p50 ms | p95 ms | worst ms | statements |\n|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['db']} | `{r['what']}` | {r['first_ms']:.0f} | {r['median_ms']:.0f} | {r['p95_ms']:.0f} "
              f"| {r['max_ms']:.0f} | {r['statements']} |")
    pages = [r for r in rows if not r["what"].startswith(("status", "POST"))]
    over = [f"{r['db']} {r['what']} ({max(r['first_ms'], r['max_ms']):.0f} ms)" for r in pages
            if max(r["first_ms"], r["max_ms"]) > TARGET_MS]
    print(f"\nevery page within {TARGET_MS} ms, first and worst of {REPS}" if not over else
          f"\nover {TARGET_MS} ms (first or worst of {REPS}): " + "; ".join(over))


if __name__ == "__main__":
    main()
