"""A wide pipeline for bench/bench_kubernetes.py's render row: ``DJO_BENCH_TABLES``
(default 50) computed tables T00, T01, … over one manual table, in five levels; each
table of a later level depends on two of the level before (a fan-in). Every make is
trivial: the bench renders it, it runs nothing.

The schema is ``DJO_BENCH_SCHEMA`` + ``_wide`` (the bench drops it at the end).
"""

import os

import datajoint as dj

schema = dj.Schema(os.environ["DJO_BENCH_SCHEMA"] + "_wide")
TABLES = int(os.environ.get("DJO_BENCH_TABLES", "50"))


@schema
class Source(dj.Manual):
    definition = "key_id : int32"


def _make(self, key):
    self.insert1(key)


def _declare(i: int, width: int) -> None:
    """Declare T<i> as a module attribute, as a class statement would; its parents are
    the same column one level up and that column's right neighbour."""
    prev = i - width
    parents = ["Source"] if i < width else sorted({f"T{prev:02d}", f"T{prev + 1 if (i + 1) % width else prev:02d}"})
    name = f"T{i:02d}"
    cls = type(name, (dj.Computed,), {"__module__": __name__, "definition": "\n".join(f"-> {p}" for p in parents),
                                      "make": _make})
    globals()[name] = schema(cls, context=globals())


for _i in range(TABLES):
    _declare(_i, max(1, TABLES // 5))
