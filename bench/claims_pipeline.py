"""The claims bench's pipeline (bench_claims.py, issue #19): a manual ``Session`` and
``DJO_BENCH_TABLES`` (10) computed tables C00, C01, … each directly under it, so that
every table has as many keys as ``Session`` has rows. Every make is trivial but writes
down when it ran (``made_at``, ``time.time()``), so that the bench can order all the
makes in time afterwards with one query per table. The schema is ``DJO_BENCH_SCHEMA``."""

import os
import time

import datajoint as dj

schema = dj.Schema(os.environ["DJO_BENCH_SCHEMA"])
TABLES = int(os.environ.get("DJO_BENCH_TABLES", "10"))


@schema
class Session(dj.Manual):
    definition = "session_id : int32"


def _make(self, key):
    self.insert1({**key, "made_at": time.time()})


for _i in range(TABLES):
    _name = f"C{_i:02d}"
    globals()[_name] = schema(type(_name, (dj.Computed,), {"__module__": __name__, "make": _make,
                                                           "definition": "-> Session\n---\nmade_at : float64"}),
                              context=globals())
