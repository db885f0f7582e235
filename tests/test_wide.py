"""Wide pipelines (issue #19), on MariaDB and PostgreSQL: a worker serving many tables
learns which have keys due in one statement, and a run of a 13-table tree makes every
key exactly once, as populate() would, leaving nothing reserved."""

from __future__ import annotations

import sys

import pytest
from conftest import PIPELINES, infos

from dj_orchestrate import pipeline
from dj_orchestrate.jobs import JobTable, Owner, Policy, activity_of, key_source_of
from dj_orchestrate.jobs.claims import Queue
from dj_orchestrate.worker import Settings, Worker

WIDE = str(PIPELINES / "wide.py")
KEYS = 12


@pytest.fixture
def wide(db):
    sys.modules.pop("wide", None)
    module = pipeline.load(WIDE)
    module.Source.insert({"key_id": i} for i in range(KEYS))
    return module


def tables(module) -> list:
    return [getattr(module, f"W{i:02d}") for i in range(module.TABLES)]


def test_run_with_two_workers_makes_every_key_once(wide, db):
    r = db.cli("run", WIDE, "--workers", "2", "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    made = wide.Made.to_dicts()
    assert len(made) == wide.TABLES * KEYS  # Made's key: none made twice
    for table in tables(wide):
        assert {k["key_id"] for k in table.keys()} == set(range(KEYS))  # what populate() makes
        assert len(table.key_source - table) == 0
        counts = JobTable(table()).status_counts()
        assert counts["reserved"] == counts["pending"] == counts["error"] == 0, (table.__name__, counts)


def test_first_claims_are_sized_by_recorded_durations(wide, db, monkeypatch):
    """A table's makes take about as long run after run: once a run has recorded them,
    a worker's first claim of each table takes ``batch_seconds`` of its keys, not one key
    to learn from (a claim, an enqueue of each table it feeds and a completion more per
    table)."""
    r = db.cli("run", WIDE, "--workers", "1", "--no-progress")  # records the make durations
    assert r.returncode == 0, r.stdout + r.stderr
    wide.Source.insert({"key_id": i} for i in range(KEYS, 2 * KEYS))
    JobTable(wide.W00()).enqueue()  # (what the driver does; the worker enqueues downstream)
    first: dict[str, int] = {}  # table: the limit of the worker's first claim of it
    claim = Queue.claim

    def noted(jt, owner, limit, shard=None):
        first.setdefault(jt.table.__class__.__name__, limit)
        return claim(jt, owner, limit, shard)

    monkeypatch.setattr(Queue, "claim", noted)
    tally = Worker(infos(wide), Settings()).run()
    assert tally.done == wide.TABLES * KEYS and tally.failed == 0
    assert len(first) == wide.TABLES and min(first.values()) > 1, first


def test_a_full_claim_then_an_empty_one_asks_nothing(wide, db, monkeypatch):
    """A claim that came back full may have taken a table's last keys: the next one,
    empty, says so. The worker goes on to the next table it knows has keys due, without
    asking the database which tables have (a question per table, on a tree of 200-key
    tables: 0.3 s of a 12-second run on PostgreSQL)."""
    r = db.cli("run", WIDE, "--workers", "1", "--no-progress")  # records the make durations
    assert r.returncode == 0, r.stdout + r.stderr
    wide.Source.insert({"key_id": i} for i in range(KEYS, 2 * KEYS))
    JobTable(wide.W00()).enqueue()
    asked: list[int] = []

    def counted(jts):
        asked.append(len(jts))
        return activity_of(jts)

    monkeypatch.setattr("dj_orchestrate.worker.loop.activity_of", counted)
    tally = Worker(infos(wide), Settings(max_batch=KEYS)).run()  # each table's claim: all of its new keys
    assert tally.done == wide.TABLES * KEYS and tally.failed == 0
    assert len(asked) <= 3, asked  # at the start, and at the end whether more can come


def test_activity_of_says_which_tables_have_keys_due(wide, monkeypatch):
    """Keys due now (not those waiting out a backoff) and keys reserved, of every jobs
    table in one statement."""
    jt0, jt1 = JobTable(wide.W00()), JobTable(wide.W01())
    jt1.ensure()
    jt0.enqueue()
    statements: list[str] = []
    query = jt0.conn.query
    monkeypatch.setattr(jt0.conn, "query", lambda sql, *a, **k: statements.append(sql) or query(sql, *a, **k))
    assert activity_of([jt0, jt1]) == [(True, False), (False, False)]
    assert len(statements) == 1
    owner = Owner.of(jt0.conn)
    failed = jt0.claim(owner, 1)
    assert jt0.fail(owner, failed[0], "boom", None, Policy(retries=1, backoff=60)) == "pending"
    held = jt0.claim(owner, KEYS)
    assert len(held) == KEYS - 1
    assert activity_of([jt0, jt1]) == [(False, True), (False, False)]
    jt0.complete(owner, held)
    assert activity_of([jt0, jt1]) == [(False, False), (False, False)]  # one key left, backing off


@pytest.mark.parametrize("name", ["wide", "lab", "quirks"])
def test_key_source_is_datajoints_own(db, name):
    """``key_source_of``, built from the module's classes where it can be (no heading
    load per parent), is DataJoint's own key_source, statement for statement."""
    sys.modules.pop(name, None)
    module = pipeline.load(str(PIPELINES / f"{name}.py"))
    for cls in pipeline.auto_populated(module).values():
        own = cls().key_source
        own = own() if isinstance(own, type) else own
        assert key_source_of(cls) == (own.make_sql(), tuple(own.heading.names)), cls.__name__
