"""Pipeline for bench/bench_pipeline.py: Source -> A -> B -> C, one straggler in A.

The schema name comes from ``DJO_BENCH_SCHEMA``. Every make sleeps ``DJO_BENCH_T``
seconds (``DJO_BENCH_SLOW_FACTOR`` times that for the key ``DJO_BENCH_SLOW``) and records
when it started and ended in ``Span`` (inside its transaction), from which the bench
reads the makespan: first start to last end, interpreter start-ups excluded.
"""

import os
import time

import datajoint as dj

schema = dj.Schema(os.environ["DJO_BENCH_SCHEMA"])


@schema
class Source(dj.Manual):
    definition = """
    key_id : int32
    """


@schema
class Span(dj.Manual):
    definition = """
    tbl    : varchar(8)
    key_id : int32
    ---
    start  : float64
    end    : float64
    """


def work(tbl, table, key):
    start = time.time()
    t = float(os.environ.get("DJO_BENCH_T", "0.1"))
    if tbl == "A" and key["key_id"] == int(os.environ.get("DJO_BENCH_SLOW", "-1")):
        t *= float(os.environ.get("DJO_BENCH_SLOW_FACTOR", "40"))
    time.sleep(t)
    table.insert1({**key, "out": key["key_id"]})
    Span.insert1({"tbl": tbl, "key_id": key["key_id"], "start": start, "end": time.time()})


@schema
class A(dj.Computed):
    definition = """
    -> Source
    ---
    out : int64
    """

    def make(self, key):
        work("A", self, key)


@schema
class B(dj.Computed):
    definition = """
    -> A
    ---
    out : int64
    """

    def make(self, key):
        work("B", self, key)


@schema
class C(dj.Computed):
    definition = """
    -> B
    ---
    out : int64
    """

    def make(self, key):
        work("C", self, key)
