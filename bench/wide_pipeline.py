"""A wide generated pipeline: ``DJO_BENCH_TABLES`` computed tables T00, T01, … over one
manual table ``Source``, every make trivial (it inserts its key), so that a bench
measures orchestration. Its shape is ``DJO_BENCH_SHAPE``:

* ``levels`` (the default; bench_serve.py, bench_kubernetes.py's render row): five
  levels, each table of a later level depending on two of the level before (a fan-in);
* ``tree`` (bench_wide.py, issue #19): a binary tree, T<i> under T<(i-1)/2>, and every
  third table (T02, T05, …) with a second parent, the table declared just before it.

The schema is ``DJO_BENCH_SCHEMA`` + ``_wide`` (the bench drops it at the end).
"""

import os

import datajoint as dj

schema = dj.Schema(os.environ["DJO_BENCH_SCHEMA"] + "_wide")
TABLES = int(os.environ.get("DJO_BENCH_TABLES", "50"))
SHAPE = os.environ.get("DJO_BENCH_SHAPE", "levels")


@schema
class Source(dj.Manual):
    definition = "key_id : int32"


def _make(self, key):
    self.insert1(key)


def _level_parents(i: int) -> set[int]:
    """The same column one level up and that column's right neighbour."""
    width = max(1, TABLES // 5)
    prev = i - width
    return set() if i < width else {prev, prev + 1 if (i + 1) % width else prev}


def _tree_parents(i: int) -> set[int]:
    return set() if i == 0 else {(i - 1) // 2} | ({i - 1} if i % 3 == 2 else set())


def _declare(i: int, parents: set[int]) -> None:
    """Declare T<i> as a module attribute, as a class statement would."""
    name = f"T{i:02d}"
    refs = sorted(f"T{p:02d}" for p in parents) or ["Source"]
    cls = type(name, (dj.Computed,), {"__module__": __name__, "definition": "\n".join(f"-> {p}" for p in refs),
                                      "make": _make})
    globals()[name] = schema(cls, context=globals())


for _i in range(TABLES):
    _declare(_i, {"levels": _level_parents, "tree": _tree_parents}[SHAPE](_i))
