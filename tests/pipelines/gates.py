"""Test pipeline for gates (tables a make reads with no foreign key): Group -> Item ->
Square, a fan-in GroupSum over a group's Squares, Total reading Square with no foreign
key (a gate), Early reading its own foreign-key descendant Late, and Ping and Pong
reading each other (two gates in a cycle). The reads that cannot be gates change no
value, so every order of making gives the rows stock ``populate()`` gives.

DJO_TEST_FAIL: Square's make fails for every key (errors upstream of the fan-in).
"""

import os

import datajoint as dj

schema = dj.Schema(os.environ["DJO_TEST_SCHEMA"])


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
class Square(dj.Computed):
    definition = """
    -> Item
    ---
    square : int64
    """

    def make(self, key):
        if os.environ.get("DJO_TEST_FAIL"):
            raise ValueError("failing on purpose")
        self.insert1({**key, "square": key["item_id"] ** 2})


@schema
class GroupSum(dj.Computed):
    definition = """
    -> Group
    ---
    total : int64
    """

    @property
    def key_source(self):
        return Group - (Item - Square)  # a group is ready once every item has its Square

    def make(self, key):
        self.insert1({**key, "total": int(sum((Square & key).to_arrays("square")))})


@schema
class Total(dj.Computed):
    definition = """
    -> Group
    ---
    total : int64   # of the group's Squares: made before them, it would be wrong
    """

    def make(self, key):
        self.insert1({**key, "total": int(sum((Square & key).to_arrays("square")))})


@schema
class Early(dj.Computed):
    definition = """
    -> Item
    ---
    value : int64
    """

    def make(self, key):
        self.insert1({**key, "value": key["item_id"] + 0 * len(Late & key)})  # reads its own descendant


@schema
class Late(dj.Computed):
    definition = """
    -> Early
    ---
    value : int64
    """

    def make(self, key):
        self.insert1({**key, "value": (Early & key).fetch1("value") + 1})


@schema
class Ping(dj.Computed):
    definition = """
    -> Item
    ---
    value : int64
    """

    def make(self, key):
        self.insert1({**key, "value": key["item_id"] + 0 * len(Pong & key)})


@schema
class Pong(dj.Computed):
    definition = """
    -> Item
    ---
    value : int64
    """

    def make(self, key):
        self.insert1({**key, "value": key["item_id"] + 0 * len(Ping & key)})


def seed(groups: int, per_group: int) -> None:
    Group.insert(({"group_id": g} for g in range(groups)), skip_duplicates=True)
    Item.insert(({"group_id": g, "item_id": g * per_group + i} for g in range(groups) for i in range(per_group)),
                skip_duplicates=True)
