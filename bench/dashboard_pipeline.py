"""The dashboard bench's pipeline (bench_dashboard.py): a manual ``Session`` and 60
computed tables in three levels of 20, T00-T19 under ``Session``, each later T<i> under
T<i-20>; every make trivial (the bench fills the tables and their jobs tables by SQL).
The schema is ``DJO_BENCH_SCHEMA``."""

import os

import datajoint as dj

schema = dj.Schema(os.environ["DJO_BENCH_SCHEMA"])
TABLES = 60
LEVEL = 20


@schema
class Session(dj.Manual):
    definition = "session_id : int32"


def _make(self, key):
    self.insert1(key)


for _i in range(TABLES):
    _name, _parent = f"T{_i:02d}", "Session" if _i < LEVEL else f"T{_i - LEVEL:02d}"
    globals()[_name] = schema(type(_name, (dj.Computed,), {"__module__": __name__, "make": _make,
                                                           "definition": f"-> {_parent}\n---\nvalue=0 : int32"}),
                              context=globals())
