#!/usr/bin/env python
"""Stock DataJoint, as users run it without dj-orchestrate: ``populate(reserve_jobs=True)``
of one table, or of several one after the other, in a process of its own (the baseline
every bench compares with); with ``--no-jobs``, ``populate()`` with no jobs table:
DataJoint's floor as a whole process.

    python bench/stock.py PIPELINE TABLE [TABLE ...]    # PIPELINE: the pipeline module's file
    python bench/stock.py --no-jobs PIPELINE TABLE [TABLE ...]

Imports no dj_orchestrate: the pipeline module, DataJoint and the call, nothing else.
Prints {"seconds": the populate() calls alone, "made": keys made}; exits 1 naming the
first errors when a make failed (a timing of a failed run means nothing).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from types import ModuleType


def load(pipeline: str) -> ModuleType:
    """The pipeline module from its file, as DataJoint users import theirs."""
    path = Path(pipeline)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pipeline", help="the pipeline module's file")
    parser.add_argument("tables", nargs="*", help="the tables to populate, in this order (none: import the pipeline only)")
    parser.add_argument("--no-jobs", action="store_true", help="populate() with no jobs table (DataJoint's floor)")
    args = parser.parse_args()
    module = load(args.pipeline)
    seconds, made = 0.0, 0
    for table in args.tables:
        t = time.perf_counter()
        result = getattr(module, table).populate(reserve_jobs=not args.no_jobs, suppress_errors=True)
        seconds += time.perf_counter() - t
        if result["error_list"]:
            sys.exit(f"stock populate of {table}: {len(result['error_list'])} errors: {result['error_list'][:3]}")
        made += result["success_count"]
    print(json.dumps({"seconds": seconds, "made": made}))


if __name__ == "__main__":
    main()
