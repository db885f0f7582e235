"""Benchmark pipeline for bench/bench.py: five Manual -> Computed pairs, one per scenario.

The schema name comes from ``DJO_BENCH_SCHEMA`` (bench.py picks a unique one and drops
it at the end). ``DJO_BENCH_SLEEP`` sets the seconds ``Sleepy.make`` sleeps (default
0.02: an I/O-bound make).
"""

import os
import time

import datajoint as dj

schema = dj.Schema(os.environ["DJO_BENCH_SCHEMA"])


@schema
class Item(dj.Manual):  # 100,000 keys: enqueue, claim/complete
    definition = """
    item_id : int32
    """


@schema
class Queued(dj.Computed):
    definition = """
    -> Item
    ---
    out : int32
    """

    def make(self, key):
        self.insert1({**key, "out": key["item_id"]})


@schema
class Small(dj.Manual):  # 5,000 keys: end to end, one worker
    definition = """
    small_id : int32
    """


@schema
class Trivial(dj.Computed):
    definition = """
    -> Small
    ---
    out : int32
    """

    def make(self, key):
        self.insert1({**key, "out": key["small_id"]})


@schema
class Slow(dj.Manual):  # scaling with 1, 2, 4, 8 workers
    definition = """
    slow_id : int32
    """


@schema
class Sleepy(dj.Computed):
    definition = """
    -> Slow
    ---
    out : int32
    """

    def make(self, key):
        time.sleep(float(os.environ.get("DJO_BENCH_SLEEP", "0.02")))
        self.insert1({**key, "out": key["slow_id"]})


@schema
class Race(dj.Manual):  # 32 concurrent claimers
    definition = """
    race_id : int32
    """


@schema
class Raced(dj.Computed):
    definition = """
    -> Race
    ---
    out : int32
    """

    def make(self, key):
        self.insert1({**key, "out": key["race_id"]})


@schema
class Big(dj.Manual):  # 1,000,000 keys: planning
    definition = """
    big_id : int32
    """


@schema
class BigOut(dj.Computed):
    definition = """
    -> Big
    ---
    out : int32
    """

    def make(self, key):
        self.insert1({**key, "out": key["big_id"]})
