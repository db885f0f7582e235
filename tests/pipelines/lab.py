"""Test pipeline for backends that place tables on workers: the demo's shape (a part
table, a fan-in, failing keys) with a GPU table and a side ledger.

    Session ─┬─> Preprocess ──> Sorting(+Unit, GPU) ─┐
             └─> Behavior ───────────────────────────┴─> Summary

``Sorting`` asks for a GPU (``dask = {"resources": {"GPU": 1}}``). ``MakeLog`` is written
inside each make's transaction, so its rows count committed makes exactly, with the
``CUDA_VISIBLE_DEVICES`` the make saw. Env knobs (seen by worker subprocesses too):
DJO_TEST_SLEEP (seconds per Preprocess make), DJO_TEST_FAIL (session ids whose
Preprocess raises).
"""

import os
import time
import uuid

import datajoint as dj

schema = dj.Schema(os.environ["DJO_TEST_SCHEMA"])


def _ids(name):
    return {int(x) for x in os.environ.get(name, "").split(",") if x.strip()}


@schema
class Session(dj.Manual):
    definition = """
    session_id : int32
    ---
    n_samples  : int32
    """


@schema
class MakeLog(dj.Manual):
    definition = """
    tbl        : varchar(32)
    session_id : int32
    token      : varchar(32)
    ---
    pid        : int32
    cuda=""    : varchar(64)
    """


def _log(tbl, key):
    MakeLog.insert1({"tbl": tbl, "session_id": key["session_id"], "token": uuid.uuid4().hex, "pid": os.getpid(),
                     "cuda": os.environ.get("CUDA_VISIBLE_DEVICES", "")})


@schema
class Preprocess(dj.Imported):
    definition = """
    -> Session
    ---
    mean_signal : float64
    """

    def make(self, key):
        n = (Session & key).fetch1("n_samples")
        if os.environ.get("DJO_TEST_SLEEP"):
            time.sleep(float(os.environ["DJO_TEST_SLEEP"]))
        if key["session_id"] in _ids("DJO_TEST_FAIL"):
            raise OSError(f"recording {key['session_id']} is corrupt")
        _log("Preprocess", key)
        self.insert1({**key, "mean_signal": n / 1000.0})


@schema
class Behavior(dj.Computed):
    definition = """
    -> Session
    ---
    trials : int32
    """

    def make(self, key):
        _log("Behavior", key)
        self.insert1({**key, "trials": 100 + key["session_id"]})


@schema
class Sorting(dj.Computed):
    definition = """
    -> Preprocess
    ---
    n_units : int32
    """

    dask = {"resources": {"GPU": 1}}

    class Unit(dj.Part):
        definition = """
        -> master
        unit : int32
        ---
        amplitude : float64
        """

    def make_fetch(self, key):
        return ((Preprocess & key).fetch1("mean_signal"),)

    def make_compute(self, key, mean):
        n_units = 1 + key["session_id"] % 3
        return n_units, [mean * (u + 1) for u in range(n_units)]

    def make_insert(self, key, n_units, amplitudes):
        _log("Sorting", key)
        self.insert1({**key, "n_units": n_units})
        self.Unit.insert({**key, "unit": u, "amplitude": a} for u, a in enumerate(amplitudes))


@schema
class Summary(dj.Computed):
    definition = """
    -> Session
    ---
    n_units : int32
    trials  : int32
    """

    @property
    def key_source(self):
        return Session & Behavior & Sorting  # fan-in: both branches

    def make(self, key):
        _log("Summary", key)
        self.insert1({**key, "n_units": len(Sorting.Unit & key), "trials": (Behavior & key).fetch1("trials")})


def seed(n):
    Session.insert(({"session_id": i, "n_samples": 1000 + 37 * i} for i in range(n)), skip_duplicates=True)


def contents():
    """Every computed table's rows (the part table included), for comparing runs."""
    return {t.__name__: sorted(map(str, t.to_dicts())) for t in (Preprocess, Behavior, Sorting, Sorting.Unit, Summary)}
