"""Test pipeline for make timeouts: Item -> Result, whose make hangs for the item ids in
DJO_TEST_HANG: ``python`` ids sleep in Python (SIGALRM reaches them), ``c`` ids block in
C with every signal blocked (only a kill ends them). E.g. DJO_TEST_HANG="1:python,3:c".
"""

import ctypes
import os
import signal
import time

import datajoint as dj

schema = dj.Schema(os.environ["DJO_TEST_SCHEMA"])


def _hangs() -> dict[int, str]:
    pairs = (x.split(":") for x in os.environ.get("DJO_TEST_HANG", "").split(",") if x.strip())
    return {int(i): how for i, how in pairs}


@schema
class Item(dj.Manual):
    definition = """
    item_id : int32
    ---
    value   : float64
    """


@schema
class Result(dj.Computed):
    definition = """
    -> Item
    ---
    value : float64
    """

    def make(self, key):
        how = _hangs().get(key["item_id"])
        if how == "python":
            time.sleep(3600)
        elif how == "c":
            signal.pthread_sigmask(signal.SIG_BLOCK, set(signal.Signals))
            ctypes.CDLL(None).pause()  # returns on no signal: every one is blocked
        self.insert1({**key, "value": (Item & key).fetch1("value") * 2})
