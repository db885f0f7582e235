#!/usr/bin/env python
"""Planning a table's missing keys in a fresh process, for bench/bench.py's plan row:
its time and the whole process's peak memory, imports and connection included.

    python bench/plan_probe.py ours PIPELINE TABLE    # dj-orchestrate's planner.plan_table
    python bench/plan_probe.py stock PIPELINE TABLE   # (key_source - target).keys(), what populate() fetches first

Prints one JSON line: seconds, missing keys (and shards, ours), peak RSS (ru_maxrss and
VmHWM, MB) and the RSS reached before planning.
"""

from __future__ import annotations

import argparse
import json
import resource
import time


def hwm_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("system", choices=("ours", "stock"))
    parser.add_argument("pipeline")
    parser.add_argument("table")
    args = parser.parse_args()
    import datajoint as dj

    from dj_orchestrate import db, pipeline

    db.connect()
    m = pipeline.load(args.pipeline)
    info = pipeline.select(pipeline.discover(m), [args.table])[0]
    dj.conn().query("SELECT 1")
    rss_before = maxrss_mb()
    if args.system == "ours":
        from dj_orchestrate.jobs import Restriction
        from dj_orchestrate.planner import plan_table

        t = time.perf_counter()
        p = plan_table(info, Restriction())
        seconds = time.perf_counter() - t
        found = {"missing": p.missing, "shards": p.shards}
    else:
        t = time.perf_counter()
        table = getattr(m, args.table)()
        keys = (table.key_source - table).keys()
        seconds = time.perf_counter() - t
        found = {"missing": len(keys)}
    print(json.dumps({"seconds": seconds, **found, "maxrss_mb": maxrss_mb(), "hwm_mb": hwm_mb(),
                      "rss_before_mb": rss_before}))


if __name__ == "__main__":
    main()
