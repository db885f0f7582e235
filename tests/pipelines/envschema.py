"""Test pipeline whose schema name comes from an environment variable, as many labs
write it (``dj.Schema(os.environ["LAB_SCHEMA"])``): a worker without the variable
imports it against another schema. Here that other schema is a default beside the
test's own (``<DJO_TEST_SCHEMA>_default``, which the workers do get), so that a test
can see what a worker did there and drop it. DJO_TEST_FAIL: item ids whose make raises."""

import os

import datajoint as dj

schema = dj.Schema(os.environ.get("LAB_SCHEMA") or os.environ["DJO_TEST_SCHEMA"] + "_default")


@schema
class Item(dj.Manual):
    definition = """
    item_id : int32
    ---
    value   : float64
    """


@schema
class Square(dj.Computed):
    definition = """
    -> Item
    ---
    square : float64
    """

    def make(self, key):
        if str(key["item_id"]) in os.environ.get("DJO_TEST_FAIL", "").split(","):
            raise ValueError(f"item {key['item_id']} is bad")
        self.insert1({**key, "square": (Item & key).fetch1("value") ** 2})
