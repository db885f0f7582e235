"""Test pipeline: what pipelines from DataJoint's own tests and tutorials do that a
foreign-key graph does not show.

* ``SubjectSummary.make`` reads ``SessionSummary``, which no foreign key links to it
  (the datajoint-docs computation tutorial): run at the same time, it sums nothing.
* ``Item``'s primary key has no attribute from a foreign key (DataJoint's test schema
  ``schema_uuid.Item``, custom ``key_source``): DataJoint cannot create a jobs table for it.
  Its uuid is kept as text: DataJoint 2.3.5 cannot insert a uuid on PostgreSQL.
* ``Quitter.make`` raises SystemExit for the subjects in DJO_TEST_EXIT (DataJoint's
  ``SigTermTable``).
"""

import os
import time
import uuid

import datajoint as dj

schema = dj.Schema(os.environ["DJO_TEST_SCHEMA"])


@schema
class Subject(dj.Manual):
    definition = """
    subject_id : int32
    """


@schema
class Session(dj.Manual):
    definition = """
    -> Subject
    session : int16
    ---
    trials  : int32
    """


@schema
class SessionSummary(dj.Computed):
    definition = """
    -> Session
    ---
    n_trials : int32
    """

    def make(self, key):
        time.sleep(0.05)  # slow enough that a summary running beside it would see none
        self.insert1({**key, "n_trials": (Session & key).fetch1("trials")})


@schema
class SubjectSummary(dj.Computed):
    definition = """
    -> Subject
    ---
    n_sessions   : int32
    total_trials : int32
    """

    def make(self, key):
        trials = (SessionSummary & key).to_arrays("n_trials")
        self.insert1({**key, "n_sessions": len(trials), "total_trials": int(sum(trials))})


@schema
class Topic(dj.Manual):
    definition = """
    topic : varchar(16)
    """


@schema
class Item(dj.Computed):
    definition = """
    item_id : char(36)
    ---
    -> Topic
    word    : varchar(16)
    """

    key_source = Topic

    def make(self, key):
        for word in ("alpha", "beta"):
            self.insert1({**key, "word": word, "item_id": str(uuid.uuid5(uuid.NAMESPACE_OID, key["topic"] + word))})


@schema
class Quitter(dj.Computed):
    definition = """
    -> Subject
    ---
    ok : bool
    """

    def make(self, key):
        if str(key["subject_id"]) in os.environ.get("DJO_TEST_EXIT", "").split(","):
            raise SystemExit(f"subject {key['subject_id']} says goodbye")
        self.insert1({**key, "ok": True})


def seed(subjects: int = 3, sessions: int = 2) -> None:
    Subject.insert(({"subject_id": s} for s in range(subjects)), skip_duplicates=True)
    Session.insert(({"subject_id": s, "session": i, "trials": 10 * s + i} for s in range(subjects) for i in range(sessions)),
                   skip_duplicates=True)
    Topic.insert(({"topic": t} for t in ("brain", "heart")), skip_duplicates=True)
