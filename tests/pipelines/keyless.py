"""Test pipeline: ``Item``'s primary key has no attribute from a foreign key (its
key_source is ``Topic``, as in DataJoint's own ``schema_uuid.Item``, but with no uuid
column: DataJoint 2.3.5 cannot insert one on PostgreSQL), so it can have no jobs table.

* ``Item.make`` makes two rows per topic under new random keys: a topic made twice shows
  as four rows, and twice in ``MakeLog`` (written in the make's transaction);
* ``TopicSize.make`` reads ``Item``, which nothing else links it to: made before every
  topic's items are there, it counts too few;
* ``Length`` is keyed by ``Item``: its keys appear as Item's are made.

Steered by env vars, so that worker subprocesses see the same: DJO_TEST_SLEEP (seconds
per Item make), DJO_TEST_FAIL (topics whose Item make raises).
"""

import os
import time
import uuid

import datajoint as dj

schema = dj.Schema(os.environ["DJO_TEST_SCHEMA"])
WORDS = ("alpha", "beta")


@schema
class Topic(dj.Manual):
    definition = """
    topic : varchar(16)
    """


@schema
class MakeLog(dj.Manual):
    definition = """
    token : char(32)
    ---
    topic : varchar(16)
    pid   : int32
    """


@schema
class Item(dj.Computed):
    definition = """
    item_id : char(32)
    ---
    -> Topic
    word    : varchar(16)
    """

    key_source = Topic

    def make(self, key):
        time.sleep(float(os.environ.get("DJO_TEST_SLEEP") or 0))
        if key["topic"] in os.environ.get("DJO_TEST_FAIL", "").split(","):
            raise ValueError(f"topic {key['topic']} is bad")
        MakeLog.insert1({"token": uuid.uuid4().hex, "topic": key["topic"], "pid": os.getpid()})
        for word in WORDS:
            self.insert1({**key, "item_id": uuid.uuid4().hex, "word": word})


@schema
class TopicSize(dj.Computed):
    definition = """
    -> Topic
    ---
    items : int32
    """

    def make(self, key):
        self.insert1({**key, "items": len(Item & key)})


@schema
class Length(dj.Computed):
    definition = """
    -> Item
    ---
    length : int32
    """

    def make(self, key):
        self.insert1({**key, "length": len((Item & key).fetch1("word"))})


def seed(topics) -> None:
    Topic.insert(({"topic": t} for t in topics), skip_duplicates=True)
