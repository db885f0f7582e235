"""Test pipeline: Item -> Square -> Total (three-part make), plus a side ledger.

``MakeLog`` is written inside each make's transaction, so its rows count committed
makes exactly: a key made twice shows up twice. Behaviour is steered by env vars so
that worker subprocesses see the same: DJO_TEST_SLEEP (seconds per make),
DJO_TEST_FAIL (item ids whose Square make raises), DJO_TEST_CRASH (item ids whose
Square make kills its own process with SIGKILL).
"""

import os
import signal
import time
import uuid

import datajoint as dj

schema = dj.Schema(os.environ["DJO_TEST_SCHEMA"])


def _ids(name):
    return {int(x) for x in os.environ.get(name, "").split(",") if x.strip()}


@schema
class Item(dj.Manual):
    definition = """
    item_id : int32
    ---
    value   : float64
    """


@schema
class MakeLog(dj.Manual):
    definition = """
    tbl     : varchar(32)
    item_id : int32
    token   : varchar(32)
    ---
    pid     : int32
    """


@schema
class Square(dj.Computed):
    definition = """
    -> Item
    ---
    square : float64
    """

    def make(self, key):
        value = (Item & key).fetch1("value")
        if os.environ.get("DJO_TEST_SLEEP"):
            time.sleep(float(os.environ["DJO_TEST_SLEEP"]))
        if key["item_id"] in _ids("DJO_TEST_CRASH"):
            os.kill(os.getpid(), signal.SIGKILL)
        if key["item_id"] in _ids("DJO_TEST_FAIL"):
            raise ValueError(f"item {key['item_id']} is bad")
        MakeLog.insert1({"tbl": "Square", "item_id": key["item_id"], "token": uuid.uuid4().hex, "pid": os.getpid()})
        self.insert1({**key, "square": value * value})


@schema
class Total(dj.Computed):
    definition = """
    -> Square
    ---
    total : float64
    """

    def make_fetch(self, key):
        return ((Square & key).fetch1("square"),)

    def make_compute(self, key, square):
        return (square + 1,)

    def make_insert(self, key, total):
        MakeLog.insert1({"tbl": "Total", "item_id": key["item_id"], "token": uuid.uuid4().hex, "pid": os.getpid()})
        self.insert1({**key, "total": total})
