"""The command line as a user runs it (each call its own process), on both databases."""

from __future__ import annotations

import json

import pytest
from conftest import PIPELINES, seed

from dj_orchestrate.jobs import JobTable

CHAIN = str(PIPELINES / "chain.py")


def counts(module):
    return {t: JobTable(getattr(module, t)()).counts() for t in ("Square", "Total")}


def test_plan_run_status_errors_retry(chain, db):
    seed(chain, 40)
    plan = db.cli("plan", CHAIN, "--json", "--shard-size", "15")
    assert plan.returncode == 0, plan.stderr
    rows = {r["table"]: r for r in json.loads(plan.stdout)}
    assert rows["Square"]["missing"] == 40 and rows["Square"]["shards"] == 3
    assert rows["Total"]["missing"] == 0  # nothing upstream yet
    assert not JobTable(chain.Square()).declared  # plan wrote nothing

    run = db.cli("run", CHAIN, "--workers", "3", "--no-progress", env={"DJO_TEST_FAIL": "3,17"})
    assert run.returncode == 1, run.stdout + run.stderr  # two keys failed
    assert "see `dj-orchestrate errors`" in run.stdout

    status = json.loads(db.cli("status", CHAIN, "--json").stdout)["tables"]
    by = {r["table"]: r for r in status}
    assert {k: by["Square"][k] for k in ("total", "done", "pending", "reserved", "error", "ignore")} == \
        {"total": 40, "done": 38, "pending": 0, "reserved": 0, "error": 2, "ignore": 0}
    assert by["Total"]["done"] == 38

    errs = json.loads(db.cli("errors", CHAIN, "--json").stdout)
    assert sorted(e["key"]["item_id"] for e in errs) == [3, 17]
    for e in errs:
        assert {"table", "key", "error_message", "attempts", "host", "backend_job_id", "log_path"} <= set(e)
        assert e["error_message"].startswith("ValueError: item") and e["attempts"] == 1
        assert e["log_path"].endswith(".log")
    stack = db.cli("errors", CHAIN, "--table", "Square", "--stack")
    assert "Traceback" in stack.stdout and "item 3 is bad" in stack.stdout

    retried = db.cli("retry", CHAIN, "--table", "Square", "--key", '{"item_id": 3}', "--json")
    assert json.loads(retried.stdout) == {"Square": 1}
    again = db.cli("run", CHAIN, "--no-progress", "--json")  # item 3 now succeeds
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads(again.stdout)["state"] == "done"
    final = counts(chain)
    assert final["Square"]["done"] == 39 and final["Square"]["error"] == 1
    assert final["Total"]["done"] == 39
    # every make committed exactly once
    log = chain.MakeLog.to_dicts()
    assert len(log) == 78 and len({(r["tbl"], r["item_id"]) for r in log}) == 78


def test_ignore_and_table_selection(chain, db):
    seed(chain, 10)
    out = db.cli("ignore", CHAIN, "--table", "Square", "--key", '[{"item_id": 1}, {"item_id": 2}]', "--json")
    assert json.loads(out.stdout) == {"Square": 2}, out.stderr
    run = db.cli("run", CHAIN, "--table", "Square", "--no-progress", "--workers", "2")
    assert run.returncode == 0, run.stderr
    c = counts(chain)
    assert c["Square"]["done"] == 8 and c["Square"]["ignore"] == 2
    assert c["Total"]["done"] == 0  # not selected, not implied


def test_run_restricted_by_key(chain, db):
    seed(chain, 10)
    run = db.cli("run", CHAIN, "--key", '[{"item_id": 2}, {"item_id": "5"}]', "--no-progress")
    assert run.returncode == 0, run.stderr
    assert sorted(r["item_id"] for r in chain.Total.to_dicts()) == [2, 5]


@pytest.mark.parametrize(
    "args, message",
    [
        (["plan", "no_such_pipeline_mod"], "cannot import pipeline 'no_such_pipeline_mod'"),
        (["plan", CHAIN, "--table", "Nope"], "unknown table 'Nope'"),
        (["plan", CHAIN, "--key", '{"itm_id": 1}'], "unknown attribute 'itm_id'"),
        (["plan", CHAIN, "--key", '{"item_id": "one"}'], "must be a number"),
    ],
)
def test_bad_input_one_line_exit_2_nothing_written(chain, db, args, message):
    """Input refused once the database told what is wrong (the pipeline, its tables,
    their attributes): on both databases, each call its own process."""
    seed(chain, 3)
    out = db.cli(*args)
    assert_refused(chain, db, out.returncode, out.stdout, out.stderr, message)


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # refused before the database is opened
@pytest.mark.parametrize(
    "args, message",
    [
        (["plan", "/nowhere/pipe.py"], "pipeline file not found"),
        (["run", CHAIN, "--backend", "cloud9"], "unknown backend 'cloud9'"),
        (["plan", CHAIN, "--key", "{item_id: 1"], "--key is not valid JSON"),
        (["plan", CHAIN, "--key", "[1, 2]"], "must be an object"),
        (["run", CHAIN, "--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_bad_input_refused_before_the_database(chain, db, args, message):
    """Input refused before the database is opened: on one database, in this process
    (click's runner; a process start per case is most of its time)."""
    from click.testing import CliRunner

    from dj_orchestrate.cli import main

    seed(chain, 3)
    out = CliRunner().invoke(main, args)
    assert_refused(chain, db, out.exit_code, out.stdout, out.stderr, message)


def assert_refused(chain, db, code: int, stdout: str, stderr: str, message: str) -> None:
    """Exit 2, one line (and a hint) naming the problem, no traceback, nothing written."""
    assert code == 2, stdout + stderr
    assert message in stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) <= 2
    assert not JobTable(chain.Square()).declared
    import datajoint as dj

    schemata = dj.conn().query("SELECT schema_name FROM information_schema.schemata").fetchall()
    assert db.ledger not in {r[0] for r in schemata}


def test_unreachable_database(db, tmp_path):
    out = db.cli("plan", CHAIN, env={"DJ_PORT": "1"})
    assert out.returncode == 2
    assert "cannot reach the" in out.stderr and "127.0.0.1:1" in out.stderr
    assert "Traceback" not in out.stderr


def test_reconcile_command(chain, db):
    seed(chain, 3)
    jt = JobTable(chain.Square())
    jt.enqueue()
    jt._query(f"UPDATE {jt.name} SET status='reserved', connection_id=123456789, host='gone', pid=1")
    out = db.cli("reconcile", CHAIN, "--json")
    assert json.loads(out.stdout) == {"back_to_pending": 3, "charged_an_attempt": 1, "already_done": 0,
                                      "became_errors": 0}, out.stderr
