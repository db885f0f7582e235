"""The baseline of a command's fixed cost: a fresh interpreter that imports DataJoint and
does nothing else (``python bench/import_datajoint.py``; bench.py's fixed-cost row,
bench_wide.py's no-op commands)."""

import datajoint  # noqa: F401
