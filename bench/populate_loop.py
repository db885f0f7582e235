#!/usr/bin/env python
"""What users write without dj-orchestrate to keep a pipeline computed (bench_serve.py's
stock row): ``populate(reserve_jobs=True)`` of every table of bench/wide_pipeline.py, in
order, then a sleep, until SIGTERM.

    python bench/populate_loop.py PIPELINE INTERVAL
"""

from __future__ import annotations

import argparse
import signal
import sys
import time

from stock import load


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", help="bench/wide_pipeline.py's file")
    parser.add_argument("interval", type=float, help="seconds between passes")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    module = load(args.pipeline)
    tables = [getattr(module, f"T{i:02d}") for i in range(module.TABLES)]
    while True:
        for table in tables:
            table.populate(reserve_jobs=True, suppress_errors=True)
        time.sleep(args.interval)


if __name__ == "__main__":
    main()
