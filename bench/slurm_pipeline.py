"""Three-level pipeline for the backend benches (bench_slurm, bench_dask, bench_airflow, bench_kubernetes):
Source -> Stage1 -> Stage2 -> Stage3.

The schema name comes from ``DJO_BENCH_SCHEMA`` (harness.Comparison picks a unique one and
drops it at the end). Every make is trivial (one fetch, one insert), so the bench
measures orchestration: submission, scheduling, claims, commits.
"""

import os

import datajoint as dj

schema = dj.Schema(os.environ["DJO_BENCH_SCHEMA"])


@schema
class Source(dj.Manual):
    definition = """
    key_id : int32
    """


@schema
class Stage1(dj.Computed):
    definition = """
    -> Source
    ---
    out : int64
    """

    def make(self, key):
        self.insert1({**key, "out": key["key_id"] * 2})


@schema
class Stage2(dj.Computed):
    definition = """
    -> Stage1
    ---
    out : int64
    """

    def make(self, key):
        self.insert1({**key, "out": (Stage1 & key).fetch1("out") + 1})


@schema
class Stage3(dj.Computed):
    definition = """
    -> Stage2
    ---
    out : int64
    """

    def make(self, key):
        self.insert1({**key, "out": (Stage2 & key).fetch1("out") * 3})
