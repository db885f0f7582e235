"""Test pipeline for wide runs (issue #19): a binary tree of 13 computed tables W00..W12
over one manual ``Source`` (W<i> under W<(i-1)/2>), every third table (W02, W05, ...)
also reading the table declared before it: a fan-in. Each make inserts its key and a
``Made`` row in its transaction, so a key made twice fails on ``Made``'s primary key and
``Made`` counts the committed makes exactly."""

import os

import datajoint as dj

schema = dj.Schema(os.environ["DJO_TEST_SCHEMA"])
TABLES = 13


@schema
class Source(dj.Manual):
    definition = "key_id : int32"


@schema
class Made(dj.Manual):
    definition = """
    tbl    : varchar(8)
    key_id : int32
    """


class _Recorded:
    def make(self, key):
        self.insert1(key)
        Made.insert1({"tbl": type(self).__name__, **key})


def parents(i: int) -> list[str]:
    """The tables W<i> reads: its tree parent, and its left neighbour for every third."""
    if i == 0:
        return ["Source"]
    return [f"W{p:02d}" for p in sorted({(i - 1) // 2, *([i - 1] if i % 3 == 2 else [])})]


for _i in range(TABLES):
    _name = f"W{_i:02d}"
    _body = {"__module__": __name__, "definition": "\n".join(f"-> {p}" for p in parents(_i))}
    globals()[_name] = schema(type(_name, (_Recorded, dj.Computed), _body), context=globals())
