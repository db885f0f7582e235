"""Pipelined runs, on MariaDB and PostgreSQL: a key's downstream work starts as soon as
that key is made, a fan-in waits for all of its parts, and enqueueing what became ready
reads rows in proportion to the new keys, not to the tables."""

from __future__ import annotations

import dataclasses
import sys

import pytest
from conftest import PIPELINES, infos, seed

from dj_orchestrate import flow, pipeline
from dj_orchestrate.jobs import JobTable

STRAGGLER = str(PIPELINES / "straggler.py")
GROUPS, PER_GROUP, SLOW = 4, 4, 0  # item 0 (group 0) is the straggler


@pytest.fixture
def straggler(db):
    sys.modules.pop("straggler", None)
    module = pipeline.load(STRAGGLER)
    module.seed(GROUPS, PER_GROUP)
    return module


def finished(module) -> dict[tuple[str, int, int], float]:
    """When each make committed: (table, group, item) -> time (item -1: a group's row)."""
    return {(r["tbl"], r["group_id"], r["item_id"]): r["at"] for r in module.Done.to_dicts()}


@pytest.mark.parametrize("order", ["downstream", "upstream"])
def test_a_straggler_holds_back_only_its_own_downstream_keys(straggler, db, order):
    """One upstream key takes 4 s, the others milliseconds: with 3 workers, every other
    key's downstream work (Total, and the fan-in GroupSum of the groups without the
    straggler) is committed before the straggler is; the straggler's group's GroupSum only
    after it and after every other Square of its group. Compared on commit times, not on
    wall time."""
    r = db.cli("run", STRAGGLER, "--workers", "3", "--no-progress", "--order", order,
               env={"DJO_TEST_SLOW": str(SLOW), "DJO_TEST_SLOW_SECONDS": "4"})
    assert r.returncode == 0, r.stdout + r.stderr
    at = finished(straggler)
    items = [(g, g * PER_GROUP + i) for g in range(GROUPS) for i in range(PER_GROUP)]
    assert set(at) == ({("Square", g, i) for g, i in items} | {("Total", g, i) for g, i in items}
                       | {("GroupSum", g, -1) for g in range(GROUPS)}
                       | {("Report", g, -1) for g in range(GROUPS)})  # each key made, once (Done's key)
    slow = at[("Square", 0, SLOW)]
    late = [k for k, t in at.items() if t > slow and k[0] != "Report"]
    assert sorted(late) == [("GroupSum", 0, -1), ("Total", 0, SLOW)], f"made after the straggler: {late}"
    assert at[("GroupSum", 0, -1)] > max(at[("Square", 0, i)] for _, i in items[:PER_GROUP])
    # Report's make reads every Total (a hidden dependency): none before the last Total
    assert min(t for (tbl, _, _), t in at.items() if tbl == "Report") > max(t for (tbl, _, _), t in at.items() if tbl == "Total")
    assert {r["totals"] for r in straggler.Report.to_dicts()} == {GROUPS * PER_GROUP}
    assert not JobTable(straggler.GroupSum()).errors() and not JobTable(straggler.Total()).errors()


def test_order_levels_keeps_the_level_barrier(straggler, db):
    """``--order levels`` is the level-by-level run (kept for comparison): no Total and no
    GroupSum is made before every Square is."""
    r = db.cli("run", STRAGGLER, "--workers", "3", "--no-progress", "--order", "levels",
               env={"DJO_TEST_SLOW": str(SLOW), "DJO_TEST_SLOW_SECONDS": "1"})
    assert r.returncode == 0, r.stdout + r.stderr
    at = finished(straggler)
    squares = max(t for (tbl, _, _), t in at.items() if tbl == "Square")
    assert min(t for (tbl, _, _), t in at.items() if tbl != "Square") > squares
    assert len(at) == 2 * GROUPS * PER_GROUP + 2 * GROUPS


def test_a_fan_in_is_enqueued_only_once_all_of_its_parts_are_made(straggler, db):
    """Enqueueing after made keys: the fan-in's group appears only when its last Square
    is there, whatever order the Squares come in; a Total appears with its Square."""
    square, total, group_sum = (JobTable(t()) for t in (straggler.Square, straggler.Total, straggler.GroupSum))
    for jt in (square, total, group_sum):
        jt.ensure()
    group = [{"group_id": 1, "item_id": PER_GROUP + i} for i in range(PER_GROUP)]
    for n, key in enumerate(group):
        straggler.Square.insert1({**key, "square": 0}, allow_direct_insert=True)
        made = [(key["group_id"], key["item_id"])]
        assert total.enqueue(after=(square, made)) == 1
        assert group_sum.enqueue(after=(square, made)) == (1 if n == PER_GROUP - 1 else 0)
    assert group_sum.status_counts()["pending"] == 1
    assert group_sum.enqueue() == 0  # the full enqueue finds nothing more: no group is complete


def rows_read(jt: JobTable, action) -> int:
    """Rows the database examined for the statements ``action`` runs: MariaDB's handler
    counters; on PostgreSQL each statement is run again under EXPLAIN ANALYZE (in a
    transaction that is rolled back) and the rows its scans read are summed."""
    conn = jt.conn
    if jt.mysql:
        def handler_reads() -> int:
            rows = conn.query("SHOW SESSION STATUS LIKE 'Handler_read%%'").fetchall()
            return sum(int(v) for _, v in rows)
        before = handler_reads()
        action()
        return handler_reads() - before
    seen: list[tuple[str, tuple]] = []
    query = jt._query
    jt._query = lambda sql, args=(): seen.append((sql, tuple(args))) or query(sql, args)
    try:
        action()
    finally:
        del jt._query
    total = 0

    def scanned(plan: dict) -> int:
        own = (plan.get("Actual Rows", 0) + plan.get("Rows Removed by Filter", 0)) * plan.get("Actual Loops", 1)
        return (own if "Scan" in plan["Node Type"] else 0) + sum(scanned(p) for p in plan.get("Plans", []))

    for sql, args in seen:
        if not sql.lstrip().upper().startswith("INSERT"):
            continue
        conn.query("BEGIN")
        try:
            plan = conn.query("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, args=args).fetchone()[0]
        finally:
            conn.query("ROLLBACK")
        total += scanned(plan[0]["Plan"])
    return total


def test_enqueue_after_reads_rows_in_proportion_to_the_new_keys(chain, db):
    """3,000 keys made in both tables and 10 Squares new: enqueueing Total after those
    10 reads a few rows per new key; the full enqueue (the anti-join) reads every key."""
    n, new = 3000, 10
    seed(chain, n + new)
    for table, value in ((chain.Square, "square"), (chain.Total, "total")):
        table.insert(({"item_id": i, value: 0.0} for i in range(n)), allow_direct_insert=True)
    chain.Square.insert(({"item_id": i, "square": 0.0} for i in range(n, n + new)), allow_direct_insert=True)
    square, total = JobTable(chain.Square()), JobTable(chain.Total())
    total.ensure()
    made = [(i,) for i in range(n, n + new)]
    bounded = rows_read(total, lambda: total.enqueue(after=(square, made)))
    assert total.status_counts()["pending"] == new
    total._query(f"DELETE FROM {total.name}")
    full = rows_read(total, lambda: total.enqueue())
    assert total.status_counts()["pending"] == new
    print(f"{db.backend}: rows read to enqueue {new} new keys: after them {bounded}, full {full}")
    assert bounded <= 20 * new, f"read {bounded} rows for {new} new keys"
    assert full >= n, full  # (the contrast: the measure does see a full scan)


def test_flow_readers_gates_and_order(straggler, db):
    """Square feeds Total and the fan-in GroupSum key by key (their key_source reads it);
    an upstream table no key_source shows (here: one added as a hidden dependency) gates
    its dependent instead, together with everything upstream of it (a gate idle for a
    moment while its own upstream still adds keys to it is not finished); a table a make
    reads gates even when a key_source path covers it; ``levels`` and ``declared`` gate
    every table on the levels before it."""
    every = {n.info.name: n for n in flow.build(infos(straggler))}
    assert [g.info.name for g in every["Report"].gates] == ["Square", "Total"]  # its make reads Total
    assert every["Total"].feeds and not every["Report"].opened
    tables = [t for t in infos(straggler) if t.name != "Report"]
    nodes = {n.info.name: n for n in flow.build(tables)}
    assert [n.info.name for n in flow.build(tables)][0] == "Square"  # upstream first, the default
    assert [n.info.name for n in flow.build(tables, "downstream")][-1] == "Square"
    assert {r.info.name for r in nodes["Square"].readers} == {"Total", "GroupSum"}
    assert all(not n.gates and n.opened for n in nodes.values())
    assert nodes["Square"].feeds and not nodes["Total"].feeds
    total = next(t for t in tables if t.name == "Total")
    hidden = dataclasses.replace(total, upstream=total.upstream | {next(t.full_name for t in tables if t.name == "GroupSum")},
                                 hidden=frozenset({"GroupSum"}))
    nodes = {n.info.name: n for n in flow.build([t if t is not total else hidden for t in tables])}
    assert [g.info.name for g in nodes["Total"].gates] == ["Square", "GroupSum"] and not nodes["Total"].opened
    assert nodes["GroupSum"].feeds
    assert {r.info.name for r in nodes["Square"].readers} == {"Total", "GroupSum"}  # queued, claimed once open
    make_reads_square = dataclasses.replace(total, hidden=frozenset({"Square"}))  # covered by key_source, still a gate
    nodes = {n.info.name: n for n in flow.build([t if t is not total else make_reads_square for t in tables])}
    assert [g.info.name for g in nodes["Total"].gates] == ["Square"]
    levels = {n.info.name: n for n in flow.build(tables, "levels")}
    assert {g.info.name for g in levels["Total"].gates} == {"Square"} and not levels["Square"].readers
    in_order = pipeline.in_declared_order(tables)
    declared = {n.info.name: n for n in flow.build(in_order, "declared")}
    assert [g.info.name for g in declared[in_order[-1].name].gates] == [t.name for t in in_order[:-1]]
