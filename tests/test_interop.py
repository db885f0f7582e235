"""Day one with an existing pipeline, on MariaDB and PostgreSQL: jobs tables declared by
nobody, by stock DataJoint or by dj-orchestrate (and by a colleague's stock populate
while ``run`` starts), every command and its ``--json``; a SELECT-only account; ignore
and retry on every kind of key; two pipelines in one database; the quirks of DataJoint's
own test and tutorial pipelines (a make that reads a table no foreign key links, a table
DataJoint cannot give a jobs table, a make that raises SystemExit).

Most commands run in this process through click's CliRunner (a subprocess costs ~3 s of
Python start-up on 2 shared cores); what only a real process shows (import-time errors,
what really reaches stdout, another database user) runs as a subprocess.
"""

from __future__ import annotations

import json
import subprocess
import sys
import traceback

import datajoint as dj
import pytest
from click.testing import CliRunner
from conftest import PIPELINES, jobs_rows, makes, read_only_user, seed

from dj_orchestrate import ledger, pipeline
from dj_orchestrate.cli import main
from dj_orchestrate.jobs import JobTable, Owner, Policy, Restriction

CHAIN = str(PIPELINES / "chain.py")
QUIRKS = str(PIPELINES / "quirks.py")
DEAD = 987654321  # a database connection id that does not exist


def djo(*args: str, code: int | None = 0):
    """``dj-orchestrate ARGS`` in this process. No exception may escape the CLI (that
    would be a traceback for the user); ``code`` is the expected exit status."""
    result = CliRunner().invoke(main, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError("".join(traceback.format_exception(result.exception)))
    if code is not None:
        assert result.exit_code == code, f"{args}: exit {result.exit_code}\n{result.stdout}\n{result.stderr}"
    return result


def djo_json(*args: str, code: int = 0):
    result = djo(*args, "--json", code=code)
    return json.loads(result.stdout)


def schema_exists(name: str) -> bool:
    rows = dj.conn().query("SELECT schema_name FROM information_schema.schemata WHERE schema_name = %s", (name,))
    return bool(rows.fetchall())


def footprint(chain, db) -> tuple:
    """What a read-only command must leave as it found it: the jobs tables' columns
    (none when undeclared) and whether the ledger exists."""
    return tuple(JobTable(t()).columns for t in (chain.Square, chain.Total)), schema_exists(db.ledger)


def dead_reservation(table, item_id: int, connection_id: int = DEAD) -> None:
    """A key reserved the way DataJoint's own reserve() does it, by a worker that is gone."""
    jt = JobTable(table())
    jt._query(
        f"UPDATE {jt.name} SET status = 'reserved', host = 'gone', pid = 1, connection_id = %s, "
        f"reserved_time = CURRENT_TIMESTAMP(3) WHERE item_id = %s", (connection_id, item_id))


def declared_by(who: str, chain, monkeypatch) -> None:
    """Items 0..6; item 3's Square make fails. ``stock``: stock populate(reserve_jobs=True)
    made everything it could (its jobs tables lack dj-orchestrate's columns) and a stock
    worker died holding item 6. ``djo``: dj-orchestrate enqueued, item 3 failed, a
    dj-orchestrate worker died holding item 6. ``none``: no jobs table at all."""
    seed(chain, 6)
    if who == "stock":
        monkeypatch.setenv("DJO_TEST_FAIL", "3")
        chain.Square.populate(reserve_jobs=True, suppress_errors=True)
        chain.Total.populate(reserve_jobs=True, suppress_errors=True)
        monkeypatch.delenv("DJO_TEST_FAIL")
        seed(chain, 7)
        JobTable(chain.Square())._query(
            f"INSERT INTO {JobTable(chain.Square()).name} (item_id, status, priority) VALUES (6, 'pending', 5)")
        dead_reservation(chain.Square, 6)
        assert "attempts" not in JobTable(chain.Square()).columns
    elif who == "djo":
        seed(chain, 7)
        jt = JobTable(chain.Square())
        jt.enqueue()
        me = Owner.of(jt.conn)
        claims = {c.key["item_id"]: c for c in jt.claim(me, 7)}
        jt.fail(me, claims[3], "ValueError: item 3 is bad", None, Policy())
        jt.release(me, [c for k, c in claims.items() if k != 3])
        dead_reservation(chain.Square, 6)
    else:
        seed(chain, 7)


@pytest.mark.parametrize("who", ["none", "stock", "djo"])
def test_every_command_on_jobs_tables_declared_by(chain, db, monkeypatch, who):
    declared_by(who, chain, monkeypatch)
    failed = 0 if who == "none" else 1
    before = footprint(chain, db)

    # read-only commands: right content, nothing altered or created
    plan = {r["table"]: r for r in djo_json("plan", CHAIN)}
    assert plan["Square"]["error"] == failed and plan["Square"]["reserved"] == (0 if who == "none" else 1)
    status = {r["table"]: r for r in djo_json("status", CHAIN)["tables"]}
    assert status["Square"]["done"] == (5 if who == "stock" else 0) and status["Square"]["error"] == failed
    errors = djo_json("errors", CHAIN)
    assert [(e["table"], e["key"], e["attempts"]) for e in errors] == \
        ([] if who == "none" else [("Square", {"item_id": 3}, 0 if who == "stock" else 1)])
    if errors:
        assert errors[0]["error_message"].startswith("ValueError: item 3 is bad")
        assert {"backend_job_id", "log_path", "host"} <= set(errors[0])
    for text in (djo("status", CHAIN), djo("errors", CHAIN), djo("plan", CHAIN)):
        assert "Traceback" not in text.stdout + text.stderr
    assert footprint(chain, db) == before, "a read-only command altered or created something"

    # writing commands
    reconciled = djo_json("reconcile", CHAIN)
    dead = 0 if who == "none" else 1
    assert reconciled == {"back_to_pending": dead, "charged_an_attempt": dead, "already_done": 0, "became_errors": 0}
    assert djo_json("ignore", CHAIN, "--key", "[]") == {"Square": 0, "Total": 0}
    assert djo_json("ignore", CHAIN, "--table", "Square", "--key", '{"item_id": 3}') == {"Square": 1}
    assert djo_json("retry", CHAIN, "--table", "Square") == {"Square": 1}  # the ignored key, released
    run = djo_json("run", CHAIN, "--workers", "2")  # item 3 no longer fails
    assert run["state"] == "done"
    assert {t["table"]: (t["done"], t["error"]) for t in run["tables"]} == {"Square": (7, 0), "Total": (7, 0)}
    assert set(makes(chain).values()) == {1}, "a key was made twice"


def test_half_upgraded_jobs_table(chain, db, monkeypatch):
    """A process died after adding one of dj-orchestrate's columns to a stock jobs table:
    reading works with the others missing, the next write adds them."""
    monkeypatch.setenv("DJO_TEST_FAIL", "1")
    seed(chain, 3)
    chain.Square.populate(reserve_jobs=True, suppress_errors=True)
    jt = JobTable(chain.Square())
    jt._query(f"ALTER TABLE {jt.name} ADD COLUMN attempts integer NOT NULL DEFAULT 0")
    assert [(e["key"], e["attempts"], e["backend_job_id"]) for e in djo_json("errors", CHAIN)] == [({"item_id": 1}, 0, "")]
    assert JobTable(chain.Square()).columns >= {"attempts"} and "log_path" not in JobTable(chain.Square()).columns
    assert djo_json("retry", CHAIN) == {"Square": 1, "Total": 0}
    assert {"attempts", "backend_job_id", "log_path"} <= JobTable(chain.Square()).columns


def test_stock_populate_declares_the_jobs_tables_while_run_starts(chain, db):
    """A colleague's stock populate(reserve_jobs=True) starts beside ``run`` on a pipeline
    whose jobs tables nobody declared yet: both work, no key is made twice."""
    seed(chain, 12)
    colleague = subprocess.Popen(
        [sys.executable, "-c", "import chain; chain.Square.populate(reserve_jobs=True)"],
        env={**db.env, "DJO_TEST_SLEEP": "0.2"}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        out = db.cli("run", CHAIN, "--workers", "2", "--no-progress", "--json", env={"DJO_TEST_SLEEP": "0.2"})
    finally:
        _, err = colleague.communicate(timeout=120)
    assert colleague.returncode == 0, err
    assert out.returncode == 0, out.stdout + out.stderr
    assert "Traceback" not in out.stderr
    assert {t["table"]: t["done"] for t in json.loads(out.stdout)["tables"]} == {"Square": 12, "Total": 12}
    assert set(makes(chain).values()) == {1}, makes(chain)


def test_ignore_and_retry_on_pending_failed_and_ignored_keys(chain, db):
    seed(chain, 6)
    jt = JobTable(chain.Square())
    jt.enqueue()
    me = Owner.of(jt.conn)
    claims = jt.claim(me, 6)
    for c in claims[:2]:
        jt.fail(me, c, "ValueError: bad", None, Policy())  # items 0, 1 failed
    jt.release(me, claims[2:])  # 2..5 pending
    assert jt.ignore(Restriction([{"item_id": 2}])) == 1  # item 2 ignored

    def statuses():
        return {r["item_id"]: r["status"] for r in jobs_rows(chain.Square)}

    start = statuses()
    assert start == {0: "error", 1: "error", 2: "ignore", 3: "pending", 4: "pending", 5: "pending"}
    # an empty list of keys is no key at all, never every key
    assert djo_json("ignore", CHAIN, "--table", "Square", "--key", "[]") == {"Square": 0}
    assert djo_json("retry", CHAIN, "--table", "Square", "--key", "[]") == {"Square": 0}
    assert djo_json("plan", CHAIN, "--key", "[]")[0]["total"] == 0
    assert statuses() == start
    # {} would be every key: refused
    for command in ("ignore", "retry"):
        out = djo(command, CHAIN, "--key", "{}", code=2)
        assert "names no attribute" in out.stderr and len(out.stderr.strip().splitlines()) <= 2
    assert statuses() == start
    # failed -> ignored, ignored stays, pending -> ignored: two keys (MariaDB counted rows twice)
    keys = json.dumps([{"item_id": 0}, {"item_id": 2}, {"item_id": 3}])
    assert djo_json("ignore", CHAIN, "--table", "Square", "--key", keys) == {"Square": 2}
    assert statuses() == {**start, 0: "ignore", 3: "ignore"}
    text = djo("ignore", CHAIN, "--table", "Square", "--key", '{"item_id": 4}')
    assert "1 keys now ignored" in text.stdout
    # retry: ignored and failed keys back to pending, pending untouched
    keys = json.dumps([{"item_id": 0}, {"item_id": 1}, {"item_id": 5}])
    assert djo_json("retry", CHAIN, "--table", "Square", "--key", keys) == {"Square": 2}
    assert statuses() == {0: "pending", 1: "pending", 2: "ignore", 3: "ignore", 4: "ignore", 5: "pending"}
    assert "3 keys back to pending" in djo("retry", CHAIN).stdout
    assert set(statuses().values()) == {"pending"}
    assert all(r["attempts"] == 0 for r in jobs_rows(chain.Square))


def test_reconcile_says_what_happened_to_the_keys(chain, db):
    seed(chain, 4)
    jt = JobTable(chain.Square())
    jt.enqueue()
    for item in range(4):  # two dead workers: items 0, 1 and items 2, 3
        dead_reservation(chain.Square, item, DEAD + item // 2)
    chain.Square.insert1({"item_id": 1, "square": 1.0}, allow_direct_insert=True)  # made, never marked done
    jt._query(f"UPDATE {jt.name} SET attempts = 2 WHERE item_id = 0")  # in flight, its third loss: an error
    # item 2 was in flight too (charged, pending); item 3 was not started (pending)
    out = djo("reconcile", CHAIN, "--max-attempts", "3")
    assert "2 keys back to pending (1 charged an attempt), 1 already done, 1 became errors" in out.stdout, out.stdout


def test_select_only_account_reads_and_is_refused_writes(chain, db, tmp_path, monkeypatch):
    """A real database user that may only SELECT: status, errors and plan work (on
    tables a stock populate declared); a write names the missing privilege and changes
    nothing."""
    monkeypatch.setenv("DJO_TEST_FAIL", "2")
    seed(chain, 4)
    chain.Square.populate(reserve_jobs=True, suppress_errors=True)
    with read_only_user(db) as (user, password):
        env = {"DJ_USER": user, "DJ_PASS": password}
        before = footprint(chain, db)
        for command in ("status", "errors", "plan"):
            out = db.cli(command, CHAIN, "--json", env=env)
            assert out.returncode == 0, out.stderr
            rows = json.loads(out.stdout)
            rows = rows["tables"] if command == "status" else rows
            if command == "errors":
                assert [e["key"] for e in rows] == [{"item_id": 2}]
            else:
                assert {r["table"]: r["error"] for r in rows}["Square"] == 1
        out = db.cli("retry", CHAIN, env=env)
        assert out.returncode == 2, out.stdout + out.stderr
        assert "ALTER" in out.stderr or "owner" in out.stderr, out.stderr
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 2
        assert footprint(chain, db) == before
        assert [r["status"] for r in jobs_rows(chain.Square)] == ["error"]


BROKEN = {
    "syntax.py": "import datajoint as dj\ndef oops(:\n    pass\n",
    "raises.py": "import os\nraise RuntimeError('no config file at ' + os.environ['DJO_TEST_SCHEMA'])\n",
}


@pytest.mark.parametrize(
    "args, message",
    [
        (["plan", "{tmp}/syntax.py"], "SyntaxError: invalid syntax"),
        (["run", "{tmp}/raises.py"], "RuntimeError: no config file at"),
        (["plan", "{tmp}"], "is a directory"),
        (["plan", CHAIN, "--key", '{"item_id": 1.5}'], "must be an integer"),
        (["ignore", CHAIN, "--key", '{"item_id": 3000000000}'], "out of range for int"),
        (["run", CHAIN, "--key", '{"item_id": -3000000000}'], "out of range for int"),
        (["ignore", CHAIN, "--key", "{}"], "names no attribute"),
    ],
)
def test_bad_input_is_one_or_two_lines_exit_2_nothing_written(chain, db, tmp_path, args, message):
    seed(chain, 3)
    for name, text in BROKEN.items():
        (tmp_path / name).write_text(text)
    out = djo(*[a.replace("{tmp}", str(tmp_path)) for a in args], code=2)
    assert message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 2
    assert not JobTable(chain.Square()).declared and not schema_exists(db.ledger)


def test_bad_input_in_a_real_process(db, tmp_path):
    """Import-time configuration errors and what --debug adds, as the user's shell sees them."""
    out = db.cli("status", CHAIN, env={"DJ_BACKEND": "oracle"})
    assert out.returncode == 2, out.stderr
    assert "DJ_BACKEND='oracle'" in out.stderr and "'mysql' or 'postgresql'" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) <= 2
    (tmp_path / "syntax.py").write_text(BROKEN["syntax.py"])
    out = db.cli("--debug", "plan", str(tmp_path / "syntax.py"))
    assert out.returncode == 2 and "Traceback" in out.stderr and "SyntaxError" in out.stderr.splitlines()[-2]


def test_status_shows_only_this_pipelines_runs(chain, db, tmp_path):
    """Runs of the same file by path and by module name are one pipeline's; the same file
    against another schema, another file, and runs an earlier version recorded (without
    an identity) for another spec are not."""
    seed(chain, 2)
    mine = [djo_json("run", CHAIN, "--key", "[]")["run_id"], djo_json("run", "chain", "--key", "[]")["run_id"]]
    other_schema = db.schema + "_b"
    try:
        out = db.cli("run", CHAIN, "--key", "[]", "--json", env={"DJO_TEST_SCHEMA": other_schema})
        assert out.returncode == 0, out.stderr
        theirs = [json.loads(out.stdout)["run_id"]]
    finally:
        dj.Schema(other_schema, create_schema=False).drop(prompt=False)
    theirs.append(ledger.new_run(QUIRKS, "local", ["Quitter"], identity=(QUIRKS, [db.schema])))
    mine.append(ledger.new_run(pipeline.resolve_spec(CHAIN), "local", ["Square"]))  # an earlier version's record
    theirs.append(ledger.new_run(QUIRKS, "local", ["Quitter"]))
    shown = djo("status", CHAIN).stdout
    assert all(r in shown for r in mine), shown
    assert not any(r in shown for r in theirs), shown


def test_pipelines_from_datajoints_own_tests_and_tutorials(db):
    """The quirks pipeline end to end, as a user's shell runs it, with DataJoint left to
    negotiate TLS (on PostgreSQL it logs a fallback line on every connection): the
    hidden dependency is ordered and warned about, the table without a jobs table is
    made too, a make raising SystemExit is an error of that key only, and --json stays JSON."""
    env = {k: v for k, v in db.env.items() if k != "DJ_USE_TLS"}
    seeded = subprocess.run([sys.executable, "-c", "import quirks; quirks.seed(3, 2)"], env=env, cwd=db.home,
                            capture_output=True, text=True, timeout=120)
    assert seeded.returncode == 0, seeded.stderr
    out = subprocess.run([sys.executable, "-m", "dj_orchestrate", "run", QUIRKS, "--workers", "2", "--json"],
                         env={**env, "DJO_TEST_EXIT": "1"}, cwd=db.home, capture_output=True, text=True, timeout=240)
    assert out.returncode == 1, out.stdout + out.stderr  # one key failed, on purpose
    result = json.loads(out.stdout)
    assert "Traceback" not in out.stderr
    assert "SubjectSummary's make reads SessionSummary" in out.stderr
    tables = {t["table"]: t for t in result["tables"]}
    assert tables["Item"]["done"] == 2 and tables["Item"]["error"] == 0
    assert tables["Quitter"]["done"] == 2 and tables["Quitter"]["error"] == 1
    assert tables["SubjectSummary"]["done"] == 3

    from dj_orchestrate import db as djo_db

    djo_db.quiet_datajoint()
    quirks = pipeline.load(QUIRKS)
    summaries = {r["subject_id"]: (r["n_sessions"], r["total_trials"]) for r in quirks.SubjectSummary.to_dicts()}
    assert summaries == {s: (2, 20 * s + 1) for s in range(3)}  # what stock populate, in order, computes
    [failed] = jobs_rows(quirks.Quitter)
    assert failed["subject_id"] == 1 and failed["attempts"] == 1 and "SystemExit" in failed["error_message"]
    status = {r["table"]: r for r in djo_json("status", QUIRKS)["tables"]}
    assert status["Item"]["total"] == 2 and status["Item"]["done"] == 2 and "note" not in status["Item"]


def test_hidden_dependencies_and_declared_order(db):
    from dj_orchestrate import db as djo_db

    djo_db.quiet_datajoint()
    infos = {t.name: t for t in pipeline.discover(pipeline.load(QUIRKS))}
    summary, sessions = infos["SubjectSummary"], infos["SessionSummary"]
    assert summary.hidden == {"SessionSummary"} and sessions.full_name in summary.upstream
    assert summary.level > sessions.level
    assert not infos["Quitter"].hidden and not infos["Quitter"].upstream
    declared = pipeline.in_declared_order(list(infos.values()))
    assert [t.name for t in declared] == ["SessionSummary", "SubjectSummary", "Item", "Quitter"]
    assert [t.level for t in declared] == [0, 1, 2, 3]
    assert declared[2].upstream == {declared[0].full_name, declared[1].full_name}
    assert len(pipeline.levels_of(declared)) == 4
