#!/usr/bin/env python
"""Stock DataJoint, as users run it without dj-orchestrate: ``populate(reserve_jobs=True)``
of one table, in a process of its own (the baseline every bench compares with).

    python bench/stock.py PIPELINE TABLE     # PIPELINE: the pipeline module's file

Imports no dj_orchestrate: the pipeline module, DataJoint and the call, nothing else.
Prints {"seconds": the populate() call alone, "made": keys made}; exits 1 naming the
first errors when a make failed (a timing of a failed run means nothing).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", help="the pipeline module's file")
    parser.add_argument("table", help="the table to populate")
    args = parser.parse_args()
    path = Path(args.pipeline)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    t = time.perf_counter()
    result = getattr(module, args.table).populate(reserve_jobs=True, suppress_errors=True)
    seconds = time.perf_counter() - t
    if result["error_list"]:
        sys.exit(f"stock populate of {args.table}: {len(result['error_list'])} errors: {result['error_list'][:3]}")
    print(json.dumps({"seconds": seconds, "made": result["success_count"]}))


if __name__ == "__main__":
    main()
