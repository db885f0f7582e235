"""The jobs engine on DataJoint's own ``~~table`` jobs tables, on MariaDB and PostgreSQL."""

from __future__ import annotations

import dataclasses

import datajoint as dj
from conftest import infos, jobs_rows, seed

from dj_orchestrate.jobs import (JobTable, LiveConnections, Owner, Policy, Restriction, reconcile_all,
                                 reserved_backend_ids_of)
from dj_orchestrate.planner import plan_table


def owner(jt: JobTable, **changes) -> Owner:
    return dataclasses.replace(Owner.of(jt.conn), **changes)


def queued(chain, n: int) -> JobTable:
    """Square's jobs table with items 0..n-1 seeded and enqueued."""
    seed(chain, n)
    jt = JobTable(chain.Square())
    jt.enqueue()
    return jt


def test_discovery_order_and_levels(chain):
    tables = infos(chain)
    assert [t.name for t in tables] == ["Square", "Total"]
    assert [t.level for t in tables] == [0, 1]


def test_enqueue_is_one_statement_and_idempotent(chain):
    seed(chain, 500)
    jt = JobTable(chain.Square())
    assert jt.enqueue() == 500
    assert jt.enqueue() == 0  # nothing new
    counts = jt.counts()
    assert counts == {"total": 500, "done": 0, "pending": 500, "reserved": 0, "success": 0,
                      "error": 0, "ignore": 0, "missing": 500}
    # DataJoint's own view of the same table agrees
    assert chain.Square.jobs.progress()["pending"] == 500


def test_enqueue_honours_restriction_as_bound_data(chain):
    seed(chain, 20)
    jt = JobTable(chain.Square())
    assert jt.enqueue(Restriction([{"item_id": 3}, {"item_id": 5}])) == 2
    assert sorted(r["item_id"] for r in jobs_rows(chain.Square)) == [3, 5]
    # a string that would be SQL if it were pasted is only ever compared as data
    mlog = JobTable(chain.Square())
    evil = "x'); DROP TABLE item; --"
    cond, args = Restriction([{"tbl": evil}]).sql("m", ["tbl"], mlog.q, mlog._bind)
    assert evil not in cond and args == [evil]
    assert len(mlog._query(f"SELECT * FROM {chain.MakeLog.full_table_name} AS m WHERE {cond}", args).fetchall()) == 0
    assert len(chain.Item()) == 20


def test_claim_is_exclusive_and_batched(chain):
    jt = queued(chain, 30)
    a, b = owner(jt, pid=1), owner(jt, pid=2)
    first = jt.claim(a, 10)
    second = jt.claim(b, 100)
    assert len(first) == 10 and len(second) == 20
    assert not {c.raw for c in first} & {c.raw for c in second}
    assert jt.claim(a, 10) == []
    assert [c.key["item_id"] for c in first] == list(range(10))  # primary-key order
    # a stock DataJoint reservation of a claimed key fails
    assert chain.Square.jobs.reserve(first[0].key) is False


def test_complete_and_fail_are_owner_checked(chain):
    jt = queued(chain, 4)
    me = owner(jt)
    claims = jt.claim(me, 4)
    stranger = owner(jt, pid=me.pid + 1)
    assert jt.complete(stranger, claims) == 0
    jt.fail(stranger, claims[0], "nope", None, Policy())
    assert jt.counts()["reserved"] == 4
    assert jt.complete(me, claims[:2]) == 2
    assert jt.fail(me, claims[2], "ValueError: bad", "Traceback ...", Policy()) == "error"
    errors = jt.errors(stack=True)
    assert errors[0]["key"] == {"item_id": 2} and errors[0]["attempts"] == 1
    assert errors[0]["error_stack"] == "Traceback ..."
    # DataJoint's own error view decodes what we wrote
    stock = chain.Square.jobs.errors.to_dicts()
    assert stock[0]["error_message"] == "ValueError: bad" and stock[0]["error_stack"] == "Traceback ..."


def test_retry_with_backoff_then_error(chain):
    jt = queued(chain, 1)
    me = owner(jt)
    policy = Policy(retries=1, backoff=3600)
    claim = jt.claim(me, 1)[0]
    assert jt.fail(me, claim, "flaky", None, policy) == "pending"
    assert jt.claim(me, 1) == []  # scheduled an hour from now
    assert jt.status_counts()["ready"] == 0
    jt._query(f"UPDATE {jt.name} SET scheduled_time = CURRENT_TIMESTAMP(3)")
    claim = jt.claim(me, 1)[0]
    assert claim.attempts == 1
    assert jt.fail(me, claim, "flaky again", None, policy) == "error"
    assert jt.errors()[0]["attempts"] == 2


def test_release_charges_only_the_key_in_flight(chain):
    jt = queued(chain, 5)
    me = owner(jt)
    claims = jt.claim(me, 5)
    jt.release(me, claims, charge=claims[0], reason="was killed", policy=Policy(max_attempts=2))
    rows = {r["item_id"]: r for r in jobs_rows(chain.Square)}
    assert all(r["status"] == "pending" for r in rows.values())
    assert rows[0]["attempts"] == 1 and all(rows[i]["attempts"] == 0 for i in range(1, 5))
    claims = jt.claim(me, 5)
    first = next(c for c in claims if c.key["item_id"] == 0)
    assert first.attempts == 1
    jt.release(me, claims, charge=first, reason="was killed", policy=Policy(max_attempts=2))
    err = jt.errors()[0]
    assert err["key"] == {"item_id": 0} and err["attempts"] == 2
    assert "gave up after 2 attempts" in err["error_message"]


def test_reconcile_releases_dead_owners_only(chain):
    jt = queued(chain, 6)
    alive = owner(jt)
    dead = owner(jt, connection_id=987654321, pid=4242)
    mine = jt.claim(alive, 2)
    theirs = jt.claim(dead, 3)
    # the dead owner had finished its first key (committed, completion not flushed)
    chain.Square.insert1({**theirs[0].key, "square": 0.0}, allow_direct_insert=True)
    result = reconcile_all([chain.Square()], Policy())
    assert result == {"released": 1, "charged": 1, "errors": 0, "completed": 1}
    rows = {r["item_id"]: r for r in jobs_rows(chain.Square)}
    assert theirs[0].key["item_id"] not in rows  # done: job row removed
    assert rows[theirs[1].key["item_id"]]["attempts"] == 1  # the key in flight
    assert rows[theirs[2].key["item_id"]]["attempts"] == 0
    assert all(rows[c.key["item_id"]]["status"] == "reserved" for c in mine)


def test_reconcile_rescues_stock_datajoint_reservations(chain):
    """A stock ``populate(reserve_jobs=True)`` worker that died leaves a reservation
    with its connection id: reconcile releases it without waiting for a timeout."""
    seed(chain, 2)
    chain.Square.jobs.refresh()
    assert chain.Square.jobs.reserve({"item_id": 0})
    jt = JobTable(chain.Square())
    jt.ensure()
    jt._query(f"UPDATE {jt.name} SET connection_id = 999999999 WHERE item_id = 0")
    assert reconcile_all([chain.Square()])["charged"] == 1
    assert jt.counts()["pending"] == 2


def test_reserved_backend_ids_of_many_tables_in_one_statement(chain, monkeypatch):
    """The backend jobs that hold keys, what reconcile asks a scheduler about: of every
    table at once (a run of 200 tables asked 200 statements before it started), none
    from a jobs table not declared yet, nor from a key reserved by a local worker."""
    jt = queued(chain, 4)
    for job_id in ["4242_0", "4242_1", "4242_1", ""]:
        jt.claim(owner(jt, backend_job_id=job_id), 1)
    total = JobTable(chain.Total())
    statements: list[str] = []
    query = jt.conn.query
    monkeypatch.setattr(jt.conn, "query", lambda sql, *a, **k: statements.append(sql) or query(sql, *a, **k))
    assert reserved_backend_ids_of([total, jt]) == {"4242_0", "4242_1"}
    assert len([s for s in statements if "~~" in s]) == 1, statements
    assert len(statements) == 2, statements  # and one catalog query for Total's, not one more per table


def test_live_connections_sees_this_connection(chain):
    live = LiveConnections(dj.conn())
    assert dj.conn().connection_id in live.snapshot()


def test_plan_writes_nothing_and_shards_deterministically(chain):
    seed(chain, 2500)
    info = infos(chain, "Square")[0]
    jt = JobTable(chain.Square())
    first = plan_table(info, Restriction(), size=1000)
    assert not jt.declared  # planning declared no jobs table
    assert (first.total, first.missing, first.shards) == (2500, 2500, 3)
    assert [s[0] for s in first.starts] == [0, 1000, 2000]
    again = plan_table(info, Restriction(), shards=4)
    assert again.shard_size == 625 and again.shards == 4
    assert plan_table(info, Restriction(), shards=4).starts == again.starts
    lo, hi = again.shard_bounds(1)
    jt.enqueue()
    claims = jt.claim(owner(jt), 10_000, (lo, hi))
    assert [c.key["item_id"] for c in claims] == list(range(625, 1250))


def test_errors_retry_ignore(chain):
    jt = queued(chain, 6)
    me = owner(jt)
    claims = jt.claim(me, 3)
    jt.fail(me, claims[0], "ValueError: disk full", None, Policy())
    jt.fail(me, claims[1], "KeyError: x", None, Policy())
    assert [e["key"]["item_id"] for e in jt.errors(match="disk")] == [0]
    assert jt.retry(match="disk") == 1
    assert jt.errors()[0]["key"] == {"item_id": 1}
    assert jt.ignore(Restriction([{"item_id": 4}, {"item_id": 2}])) >= 1
    counts = jt.counts()
    assert counts["ignore"] == 1  # item 2 is reserved (in flight): left alone
    assert counts["error"] == 1 and counts["reserved"] == 1


def test_stock_populate_skips_ignored_and_reserved(chain):
    jt = queued(chain, 5)
    me = owner(jt)
    jt.claim(me, 2)
    jt.ignore(Restriction([{"item_id": 4}]))
    result = chain.Square.populate(reserve_jobs=True)
    assert result["success_count"] == 2  # items 2 and 3
    assert len(chain.Square()) == 2


def test_a_batch_is_handed_out_in_key_order(chain):
    """Workers make a batch in the order claim returns it, and reconcile takes a dead
    owner's first unmade key (by key) as its key in flight: the two must agree, also
    when the batch spans priorities."""
    jt = queued(chain, 5)
    jt._query(f"UPDATE {jt.name} SET priority = 1 WHERE item_id = 3")
    claims = jt.claim(owner(jt), 5)
    assert [c.key["item_id"] for c in claims] == [0, 1, 2, 3, 4]


def test_pull_claims_follow_priority_shard_claims_key_order(chain):
    """A pull claim takes the most urgent keys first (lower priority number first, as
    DataJoint does); a shard's claim takes its keys in key order, along the primary key
    (so a claim reads about as many rows as it takes, however long the queue)."""
    jt = queued(chain, 6)
    jt._query(f"UPDATE {jt.name} SET priority = 1 WHERE item_id IN (2, 4)")
    assert [c.key["item_id"] for c in jt.claim(owner(jt), 1, ((1,), (6,)))] == [1]
    assert [c.key["item_id"] for c in jt.claim(owner(jt), 2)] == [2, 4]
    assert [c.key["item_id"] for c in jt.claim(owner(jt), 2, ((1,), (6,)))] == [3, 5]
