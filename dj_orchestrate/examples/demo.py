"""The demo pipeline: a small electrophysiology-shaped DataJoint pipeline.

Five auto-populated tables with a fan-in (``SessionSummary`` needs both branches), a
part table (``SpikeSorting.Unit``), a three-part make (``SpikeSorting``), and a few keys
that fail on purpose, so that ``errors`` and ``retry`` have something to show.

    Session ─┬─> Preprocess ──> SpikeSorting(+Unit) ──> QualityMetrics ─┐
             └─> Behavior ──────────────────────────────────────────────┴─> SessionSummary
"""

from __future__ import annotations

import os
import time

import datajoint as dj

schema = dj.Schema(os.environ.get("DJO_DEMO_SCHEMA", "djo_demo"))

BROKEN_RECORDINGS = {7, 19}  # Preprocess fails for these sessions
WORK_SECONDS = float(os.environ.get("DJO_DEMO_WORK_SECONDS", "0.02"))


@schema
class Session(dj.Manual):
    definition = """
    session_id : int32
    ---
    subject    : varchar(32)
    n_samples  : int32
    """


@schema
class SortParams(dj.Lookup):
    definition = """
    sort_params : int16
    ---
    threshold   : float64
    """
    contents = [(1, 4.0), (2, 5.5)]


@schema
class Preprocess(dj.Imported):
    definition = """
    -> Session
    ---
    mean_signal : float64  # of the filtered recording
    """

    def make(self, key):
        n = (Session & key).fetch1("n_samples")
        time.sleep(WORK_SECONDS)
        if key["session_id"] in BROKEN_RECORDINGS:
            raise OSError(f"raw recording for session {key['session_id']} is corrupt (checksum mismatch)")
        self.insert1({**key, "mean_signal": n / 1000.0})


@schema
class Behavior(dj.Computed):
    definition = """
    -> Session
    ---
    trials = 0 : int32  # 0: a session without a task
    """

    def make(self, key):
        time.sleep(WORK_SECONDS)
        self.insert1({**key, "trials": 100 + key["session_id"]})


@schema
class SpikeSorting(dj.Computed):
    definition = """
    -> Preprocess
    -> SortParams
    ---
    n_units : int32
    """

    class Unit(dj.Part):
        definition = """
        -> master
        unit : int32
        ---
        amplitude : float64
        """

    # The three-part make: fetch and insert run in a transaction, compute does not.
    def make_fetch(self, key):
        mean = (Preprocess & key).fetch1("mean_signal")
        threshold = (SortParams & key).fetch1("threshold")
        return mean, threshold

    def make_compute(self, key, mean, threshold):
        time.sleep(WORK_SECONDS)
        n_units = 1 + int(mean * 10 / threshold) % 5
        return n_units, [mean * (u + 1) for u in range(n_units)]

    def make_insert(self, key, n_units, amplitudes):
        self.insert1({**key, "n_units": n_units})
        self.Unit.insert({**key, "unit": u, "amplitude": a} for u, a in enumerate(amplitudes))


@schema
class QualityMetrics(dj.Computed):
    definition = """
    -> SpikeSorting
    ---
    mean_amplitude : float64
    """

    def make(self, key):
        amplitudes = (SpikeSorting.Unit & key).to_arrays("amplitude")
        self.insert1({**key, "mean_amplitude": float(sum(amplitudes) / len(amplitudes))})


@schema
class SessionSummary(dj.Computed):
    definition = """
    -> Session
    ---
    n_sortings : int32
    trials     : int32
    """

    @property
    def key_source(self):
        # fan-in: a session is ready once behavior and every sorting's metrics exist
        return Session & Behavior & QualityMetrics

    def make(self, key):
        self.insert1({**key, "n_sortings": len(QualityMetrics & key), "trials": (Behavior & key).fetch1("trials")})


def seed(n_sessions: int = 24) -> None:
    Session.insert(
        ({"session_id": i, "subject": f"mouse{i % 4}", "n_samples": 1000 + 37 * i} for i in range(n_sessions)),
        skip_duplicates=True,
    )
