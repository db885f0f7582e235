"""Test pipeline for pipelined runs: Group -> Item -> Square -> Total, a fan-in
GroupSum whose custom key_source holds a group back until every one of its items has
its Square, and Report, whose make counts every Total with no foreign key to Total (a
hidden dependency: no Report may be made before the last Total). ``Done`` is a side ledger of completion times: each make writes
``time.time()`` at its end, inside its transaction, so ``Done`` orders the commits.

DJO_TEST_SLOW: item ids whose Square make sleeps DJO_TEST_SLOW_SECONDS (default 3):
a straggler.
"""

import os
import time

import datajoint as dj

schema = dj.Schema(os.environ["DJO_TEST_SCHEMA"])


def _slow():
    return {int(x) for x in os.environ.get("DJO_TEST_SLOW", "").split(",") if x.strip()}


@schema
class Group(dj.Manual):
    definition = """
    group_id : int32
    """


@schema
class Item(dj.Manual):
    definition = """
    -> Group
    item_id : int32
    """


@schema
class Done(dj.Manual):
    definition = """
    tbl      : varchar(32)
    group_id : int32
    item_id  : int32      # -1 for a group's row
    ---
    at       : float64    # time.time() at the end of the make
    """


def done(tbl, key):
    Done.insert1({"tbl": tbl, "group_id": key["group_id"], "item_id": key.get("item_id", -1), "at": time.time()})


@schema
class Square(dj.Computed):
    definition = """
    -> Item
    ---
    square : int64
    """

    def make(self, key):
        if key["item_id"] in _slow():
            time.sleep(float(os.environ.get("DJO_TEST_SLOW_SECONDS", "3")))
        self.insert1({**key, "square": key["item_id"] ** 2})
        done("Square", key)


@schema
class Total(dj.Computed):
    definition = """
    -> Square
    ---
    total : int64
    """

    def make(self, key):
        self.insert1({**key, "total": (Square & key).fetch1("square") + 1})
        done("Total", key)


@schema
class GroupSum(dj.Computed):
    definition = """
    -> Group
    ---
    n     : int32
    total : int64
    """

    @property
    def key_source(self):
        return Group - (Item - Square)  # a group is ready once every item has its Square

    def make(self, key):
        squares = (Square & key).to_dicts()
        if len(squares) != len(Item & key):
            raise ValueError(f"group {key['group_id']} made before all of its Squares")
        self.insert1({**key, "n": len(squares), "total": sum(r["square"] for r in squares)})
        done("GroupSum", key)


@schema
class Report(dj.Computed):
    definition = """
    -> Group
    ---
    totals : int32   # Totals there when the report was made
    items  : int32   # Items there then
    """

    def make(self, key):
        self.insert1({**key, "totals": len(Total()), "items": len(Item())})
        done("Report", key)


def seed(groups: int, per_group: int) -> None:
    Group.insert(({"group_id": g} for g in range(groups)), skip_duplicates=True)
    Item.insert(({"group_id": g, "item_id": g * per_group + i} for g in range(groups) for i in range(per_group)),
                skip_duplicates=True)
