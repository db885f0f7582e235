"""Proving the jobs engine under faults, on MariaDB and PostgreSQL.

Every test runs once per database (the ``db`` fixture). The faults are real: processes
are killed with SIGKILL, SIGTERM is sent to the driver, database connections are
killed by the server, the database server itself is restarted, a worker crashes on the
same key every time, stock DataJoint workers share the tables, and a property-based
test drives the jobs table through random interleavings of every operation.

``MakeLog`` rows are written inside each make's transaction, so they count committed
makes exactly: a key made twice shows up twice.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import datajoint as dj
import pytest
from conftest import PIPELINES, jobs_rows, makes, seed, wait_for

from processes import assert_all_made, assert_nothing_reserved, explain, finish, live_ids, reserved, restartable

from dj_orchestrate.jobs import JobTable, LiveConnections, Owner, Policy, Restriction

CHAIN = str(PIPELINES / "chain.py")


# ----------------------------------------------------------------- helpers

def kill_connection(connection_id: int) -> None:
    """End one database session from the server's side, as an administrator would."""
    conn = dj.conn()
    if conn.adapter.backend == "mysql":
        conn.query(f"KILL {int(connection_id)}")
    else:
        assert conn.query("SELECT pg_terminate_backend(%s)", args=(int(connection_id),)).fetchone()[0]


# ------------------------------------------------------------ 1. SIGKILL
def test_sigkill_whole_run_then_reconcile_and_rerun(chain, db, procs):
    """SIGKILL of the driver and every worker mid-flight loses nothing: after the
    database has noticed the dead sessions, ``reconcile`` charges an attempt to the key
    each dead worker was making (and only that key), ``run`` again completes every key
    with exactly the values a plain ``populate()`` gives, nothing stays reserved, and a
    key is re-made at most once per killed worker (killed transactions roll back)."""
    n = 16
    seed(chain, n)
    run = procs.cli("run", CHAIN, "--workers", "3", "--no-progress", env={"DJO_TEST_SLEEP": "0.4"}, name="run")
    wait_for(lambda: len({r["pid"] for r in reserved(chain.Square)}) >= 2 and len(chain.MakeLog()) >= 2,
             60, what="two workers in flight")
    procs.kill_all()  # the driver, and every worker it started (found before the driver died)
    workers = procs.pids - {run.pid}
    assert len(workers) >= 2, "the workers were not found"
    killed = {r["pid"] for r in reserved(chain.Square)}
    assert killed <= workers
    held = {r["connection_id"] for r in reserved(chain.Square) + reserved(chain.Total)}
    wait_for(lambda: not held & live_ids(), 30, what="the server to drop the killed sessions")

    rec = procs.cli("reconcile", CHAIN, "--json", name="reconcile")
    out = finish(procs, rec, 60)
    assert rec.returncode == 0, explain(procs, rec)
    result = json.loads(out[out.index("{"):])
    assert 1 <= result["charged_an_attempt"] <= len(killed), result
    charged = [r for r in jobs_rows(chain.Square) if r["attempts"] == 1]
    assert len(charged) == result["charged_an_attempt"]
    assert all("lost its database connection" in r["error_message"] and r["status"] == "pending" for r in charged)
    assert_nothing_reserved(chain)

    again = procs.cli("run", CHAIN, "--workers", "3", "--no-progress", name="rerun")
    finish(procs, again, 120)
    assert again.returncode == 0, explain(procs, again)
    assert_all_made(chain, n)
    assert_nothing_reserved(chain)
    counts = makes(chain)
    assert set(counts) == {(t, i) for t in ("Square", "Total") for i in range(n)}
    assert sum(c == 2 for c in counts.values()) <= len(workers) and max(counts.values()) <= 2
    assert not JobTable(chain.Square()).errors() and not JobTable(chain.Total()).errors()


# ------------------------------------------------------------ 2. SIGTERM
@pytest.mark.parametrize("sig, grace", [("SIGTERM", "0"), ("SIGTERM", "5"), ("SIGINT", "0")])
def test_sigterm_stops_run_quickly_and_cleanly(chain, db, procs, sig, grace):
    """SIGTERM (or Ctrl-C's SIGINT) to the driver is forwarded to its workers; the run
    exits within seconds (exit 130). The key in flight either commits within the grace
    period (grace 5) or is rolled back (grace 0); unstarted claims go back to ``pending``
    untouched; no key stays reserved; no ``error`` row appears; every committed make has
    its row. A key rolled back by SIGTERM (a scheduler's preemption) is charged an
    attempt; one rolled back by Ctrl-C is not."""
    n = 300
    seed(chain, n)
    run = procs.cli("run", CHAIN, "--workers", "3", "--no-progress", "--grace", grace,
                    env={"DJO_TEST_SLEEP": "0.02"}, name="run")

    def mid_flight() -> bool:
        """Batch sizes settled (tens of keys made), and twice as many keys reserved and
        not made yet as there are workers: batches of claims, most of them not started."""
        made = {r["item_id"] for r in chain.Square.to_dicts()}
        return len(made) >= 30 and len([r for r in reserved(chain.Square) if r["item_id"] not in made]) > 6

    wait_for(mid_flight, 60, interval=0.05, what="batches in flight")
    sent = time.monotonic()
    os.kill(run.pid, getattr(signal, sig))
    finish(procs, run, 30)
    took = time.monotonic() - sent
    assert run.returncode == 130, explain(procs, run)
    assert took < 15, f"the run took {took:.1f}s to stop"
    assert_nothing_reserved(chain)
    rows = jobs_rows(chain.Square)
    assert not [r for r in rows if r["status"] == "error"]
    done = {r["item_id"] for r in chain.Square.to_dicts()}
    assert makes(chain) == {("Square", i): 1 for i in done}  # MakeLog rows == Square rows
    pending = {r["item_id"]: r for r in rows if r["status"] == "pending"}
    assert set(pending) == set(range(n)) - done, "a key was lost"
    assert len(done) < n, "the run was not stopped"
    charged = [r for r in pending.values() if r["attempts"]]
    # claimed once (a reservation time), back to pending untouched: the unstarted claims
    released = [r for r in pending.values() if r["reserved_time"] is not None and not r["attempts"]]
    # SIGTERM charges the key it rolled back, never an unstarted one
    assert len(charged) <= 3 and all("SIGTERM" in r["error_message"] for r in charged), \
        [(r["error_message"], r["log_path"]) for r in charged]
    assert released, "no unstarted claim was released"
    print(f"{db.backend} {sig} grace {grace}: stopped in {took:.1f}s; {len(done)} done, {len(pending)} pending "
          f"({len(released)} of them unstarted claims), {len(charged)} rolled back and charged")
    if grace == "5" or sig == "SIGINT":
        assert not charged, f"{sig} with grace {grace} charged {charged}"


def test_interrupt_outside_make_leaves_no_transaction_open(chain, db, monkeypatch):
    """With grace 0 a stop signal may land in DataJoint's own part of ``_populate1``
    outside make's try: here its key-in-table check, after it opened the key's
    transaction. The worker still rolls that transaction back, so its release of the
    claims is not undone with it (the keys would stay reserved until a reconcile)."""
    from conftest import infos

    from dj_orchestrate.worker import Settings, Worker

    seed(chain, 3)
    JobTable(chain.Square()).enqueue()
    contains = chain.Square.__contains__

    def signalled_contains(self, item):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs on the next line of Python
        return contains(self, item)

    monkeypatch.setattr(chain.Square, "__contains__", signalled_contains)
    try:
        tally = Worker(infos(chain, "Square"), Settings(grace=0)).run()
        monkeypatch.undo()
        assert tally.stop_signal == signal.SIGTERM and tally.done == 0
        assert not dj.conn()._in_transaction, "the key's transaction was left open"
    finally:
        if dj.conn()._in_transaction:
            dj.conn().cancel_transaction()
    rows = {r["item_id"]: r for r in jobs_rows(chain.Square)}
    assert {k: (r["status"], r["attempts"]) for k, r in rows.items()} == {0: ("pending", 1), 1: ("pending", 0),
                                                                          2: ("pending", 0)}
    assert len(chain.Square()) == 0


def test_interrupt_after_the_commit_keeps_the_key_done(chain, db, monkeypatch):
    """With grace 0 a stop signal may also land in ``_populate1`` after the key's commit
    (its logging, its job metadata, its finally): the key is made, so it must end done,
    not released to ``pending`` beside its row (CI caught this once). The unstarted
    claims are released, uncharged by that key."""
    from conftest import infos

    from dj_orchestrate.worker import Settings, Worker

    seed(chain, 3)
    JobTable(chain.Square()).enqueue()
    after_commit = chain.Square._has_job_metadata_attrs

    def signalled(self):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs on the next line of Python
        return after_commit(self)

    monkeypatch.setattr(chain.Square, "_has_job_metadata_attrs", signalled)
    tally = Worker(infos(chain, "Square"), Settings(grace=0, max_batch=3)).run()
    monkeypatch.undo()
    assert tally.stop_signal == signal.SIGTERM and tally.done == 1
    assert not dj.conn()._in_transaction
    assert [r["item_id"] for r in chain.Square.to_dicts()] == [0]
    rows = {r["item_id"]: (r["status"], r["attempts"]) for r in jobs_rows(chain.Square)}
    assert rows.get(0, ("success", 0))[0] == "success", rows
    assert {k: v for k, v in rows.items() if k} == {1: ("pending", 0), 2: ("pending", 0)}
    assert makes(chain) == {("Square", 0): 1}


def test_stop_signal_while_launching_reaches_every_worker(chain, db, tmp_path, monkeypatch):
    """A stop signal that lands while the driver is still starting a level's workers
    (here: right after the first one started, before the driver recorded it) reaches
    that worker too, and no further worker is started: none is left running a whole
    level unattended while the driver waits for it."""
    from dj_orchestrate.backends.base import RunRequest
    from dj_orchestrate.backends.local import LocalBackend
    from dj_orchestrate.db import Target
    from dj_orchestrate.worker import Settings

    from conftest import DATABASES, infos

    cfg = DATABASES[db.backend]
    request = RunRequest(pipeline=CHAIN, tables=infos(chain, "Square"), restriction=Restriction(),
                         target=Target(db.backend, cfg["DJ_HOST"], int(cfg["DJ_PORT"]), cfg["DJ_USER"]),
                         worker=Settings(), run_id="launch-race", log_dir=tmp_path, workers=3)
    from dj_orchestrate.backends import local

    backend = LocalBackend()
    started = []

    def fork_worker(argv, env, log_path, connections, reconnect_seconds):
        proc = subprocess.Popen(["sleep", "60"])  # a stand-in worker
        started.append(proc)
        if len(started) == 1:
            backend._stop(signal.SIGTERM, None)  # the signal handler runs here
        return proc

    monkeypatch.setattr(local, "fork_worker", fork_worker)
    try:
        backend._launch(request, request.tables, range(3))
        monkeypatch.undo()
        assert len(started) == 1, "workers were started after the stop signal"
        assert started[0].wait(timeout=10) == -signal.SIGTERM, "the worker never got the signal"
    finally:
        for proc in started:
            proc.kill()
            proc.wait()


# ------------------------------------------------------- 3. lost connection
def test_lost_connection_mid_make_is_recovered(chain, db, procs):
    """A worker whose database session is killed (KILL / pg_terminate_backend) while it
    is inside a slow make reconnects, releases the key it was making (charging it one
    attempt), carries on, and in the end every key is made exactly once: the killed
    transaction was rolled back, nothing is lost, nothing is left reserved."""
    n = 3
    seed(chain, n)
    JobTable(chain.Square()).enqueue()
    w = procs.cli("work", CHAIN, "--table", "Square", env={"DJO_TEST_SLEEP": "1.5"}, name="worker")
    row = wait_for(lambda: reserved(chain.Square), 30, what="the worker's first claim")[0]
    time.sleep(0.5)  # now inside make's sleep, in the make transaction
    kill_connection(row["connection_id"])
    # the key in flight comes back with one attempt charged, under the worker's new connection
    again = wait_for(lambda: [r for r in jobs_rows(chain.Square)
                              if r["item_id"] == row["item_id"] and r["attempts"] == 1], 20,
                     interval=0.05, what="the killed key to be charged an attempt")[0]
    assert "lost its database connection" in again["error_message"]
    finish(procs, w, timeout=60)
    assert w.returncode == 0, explain(procs, w)
    assert "Traceback" not in procs.output(w)
    assert makes(chain) == {("Square", i): 1 for i in range(n)}
    assert {r["item_id"]: r["square"] for r in chain.Square.to_dicts()} == {i: float(i) ** 2 for i in range(n)}
    assert jobs_rows(chain.Square) == []  # done keys leave the jobs table; nothing pending, reserved, error


# ------------------------------------------------------- 4. database restart
def test_database_restart_during_a_run(chain, db, procs):
    """The database server restarts in the middle of a run. Workers back off and
    reconnect, the driver survives it too, and the run completes every key exactly once
    with nothing left reserved. A reservation made before the restart counts as dead
    even when its connection id now belongs to a live session (MariaDB numbers sessions
    from 1 again after a restart). The server is always brought back."""
    server = restartable(db.backend)
    n = 12
    seed(chain, n)
    # a worker that died with the old server: it held the last key under a connection id
    # that, after the restart, a live session will have again
    jt = JobTable(chain.Square())
    jt.enqueue()
    ghost = dataclasses.replace(Owner.of(jt.conn), pid=999_999)
    jt._query(f"UPDATE {jt.name} SET priority = 0 WHERE item_id = %s", (n - 1,))
    assert [c.key for c in jt.claim(ghost, 1)] == [{"item_id": n - 1}]
    run = procs.cli("run", CHAIN, "--workers", "2", "--no-progress", env={"DJO_TEST_SLEEP": "0.4"}, name="run")
    try:
        wait_for(lambda: len(reserved(chain.Square)) >= 3 and len(chain.MakeLog()) >= 2, 60, what="workers in flight")
        down = server.restart()
    finally:
        server.ensure_up()
        # this process's session died too; DataJoint reconnects by itself only on MySQL
        # (psycopg2's "server closed the connection" is not a LostConnectionError to it)
        dj.conn().connect()
    # (Owner.of asks the server: DataJoint's connection.connection_id keeps the old session's id)
    jt._query(f"UPDATE {jt.name} SET connection_id = %s WHERE pid = %s", (Owner.of(jt.conn).connection_id, ghost.pid))
    finish(procs, run, 150)
    first = explain(procs, run)
    print(f"{db.backend}: server restarted in {down:.1f}s; the run exited {run.returncode}")
    assert "Traceback" not in procs.output(run), first
    assert run.returncode == 0, first  # the workers backed off and resumed; the driver too
    assert_all_made(chain, n)
    assert_nothing_reserved(chain)
    assert max(makes(chain).values()) == 1


# ------------------------------------------------------------ 5. crash loop
def test_crash_loop_ends_as_error_after_max_attempts(chain, db, procs):
    """A key whose make kills its worker every time (SIGKILL) does not stall the run:
    after ``--max-attempts`` dead workers it becomes ``error`` saying it gave up after
    that many attempts; every other key is done, nothing is reserved."""
    n, bad = 8, 5
    seed(chain, n)
    run = procs.cli("run", CHAIN, "--workers", "2", "--no-progress", "--max-attempts", "2",
                    env={"DJO_TEST_CRASH": str(bad)}, name="run")
    finish(procs, run, 120)
    assert run.returncode == 1, explain(procs, run)
    errors = JobTable(chain.Square()).errors()
    assert [e["key"] for e in errors] == [{"item_id": bad}], explain(procs, run)
    assert errors[0]["attempts"] == 2
    assert "gave up after 2 attempts" in errors[0]["error_message"]
    # the local backend names its workers: the dead one's id and log are on the error
    assert errors[0]["backend_job_id"].startswith("local-") and errors[0]["backend_job_id"] in errors[0]["error_message"]
    assert Path(errors[0]["log_path"]).is_file()
    assert_all_made(chain, n, skip={bad})
    assert_nothing_reserved(chain)
    assert max(makes(chain).values()) == 1


# ------------------------------------------------------------ 6. mixed fleet
STOCK = f"""
import sys
sys.path.insert(0, {str(PIPELINES)!r})
import datajoint as dj
import chain
r = chain.Square.populate(reserve_jobs=True, suppress_errors=True)
print("stock", r["success_count"], len(r["error_list"]))
"""


def test_mixed_fleet_with_failures_exactly_once(chain, db, procs):
    """dj-orchestrate workers and two stock ``populate(reserve_jobs=True)`` processes on
    the same tables at once, with failing keys: every good key is made exactly once,
    every failing key is attempted once and recorded once as ``error``."""
    n, bad = 240, {7, 100, 201}
    seed(chain, n)
    env = {"DJO_TEST_SLEEP": "0.01", "DJO_TEST_FAIL": ",".join(map(str, bad))}
    # The jobs table exists before the fleet starts: stock DataJoint's own declaration
    # races (CREATE TABLE IF NOT EXISTS on PostgreSQL: duplicate pg_type key) kill the
    # stock process, not ours. The keys are enqueued by both sides, at once.
    JobTable(chain.Square()).ensure()
    fleet = [procs.cli("work", CHAIN, "--table", "Square", "--enqueue", "--max-batch", "10", env=env, name="worker")
             for _ in range(3)]
    fleet += [procs.start([sys.executable, "-c", STOCK], env=env, name="stock") for _ in range(2)]
    for p in fleet:
        finish(procs, p, 120)
    assert all(p.returncode == 0 for p in fleet), "\n".join(explain(procs, p) for p in fleet)
    assert makes(chain) == {("Square", i): 1 for i in range(n) if i not in bad}
    errors = JobTable(chain.Square()).errors()
    assert sorted(e["key"]["item_id"] for e in errors) == sorted(bad)
    assert all(e["error_message"].startswith("ValueError: item") for e in errors)
    outs = [procs.output(p).strip().splitlines()[-1].split() for p in fleet]
    failed = sum(int(o[4]) for o in outs[:3]) + sum(int(o[2]) for o in outs[3:])
    assert failed == len(bad), outs  # each failing key was attempted once, by one process
    stock_made = sum(int(o[1]) for o in outs[3:])
    assert stock_made > 0, "the stock populate took no part"
    assert_nothing_reserved(chain)


# --------------------------------------------------- 7. property-based jobs
K, P = 8, 3  # keys, simulated worker processes
DEAD_BASE = 10**12  # simulated connection ids: never a real session's id


class SimulatedLive(LiveConnections):
    """The real liveness check, with the simulated owners' connection ids added to the
    live sessions: a simulated owner is dead once its id leaves ``alive``."""

    def __init__(self, conn, alive: set[int]) -> None:
        super().__init__(conn)
        self.alive = alive

    def snapshot(self) -> set[int]:
        return super().snapshot() | self.alive


@dataclasses.dataclass
class Proc:
    """One simulated worker process: its current owner, what it believes it holds, and
    the owners it had before its connection died (which may still try to report)."""

    owner: Owner
    held: list = dataclasses.field(default_factory=list)       # claimed, not started or in flight
    committed: list = dataclasses.field(default_factory=list)  # made, completion not flushed yet
    stale: list = dataclasses.field(default_factory=list)      # [(old owner, held, committed)]


KINDS = ["claim", "claim", "claim", "make", "make", "fail", "fail", "flush", "release", "die", "stale", "reconcile",
         "enqueue", "takeover"]
STALE_KINDS = ["complete", "fail", "release"]


def _ops():
    """An interleaving: an enqueue first, then 15 to 40 steps (claims and makes weighted up).
    A step is (kind, process, n in 1..4, flag, key subset); each kind reads what it needs."""
    from hypothesis import strategies as st

    subset = st.frozensets(st.integers(0, K - 1), min_size=1)
    step = st.tuples(st.sampled_from(KINDS), st.integers(0, P - 1), st.integers(1, 4), st.booleans(), subset)
    return st.tuples(subset, st.lists(step, min_size=15, max_size=40)).map(
        lambda t: [("enqueue", 0, 1, False, t[0]), *t[1]])


class JobsModel:
    """Runs one interleaving against the real jobs table and checks, after every step,
    what must always hold."""

    def __init__(self, chain) -> None:
        self.chain = chain
        self.jt = JobTable(chain.Square())
        self.jt.ensure()
        self.conn = self.jt.conn
        self.base = Owner.of(self.conn)
        self.next_cid = DEAD_BASE
        self.alive: set[int] = set()
        self.enqueued: set[int] = set()
        self.procs = [Proc(self._connect(i)) for i in range(P)]

    def _connect(self, i: int) -> Owner:
        self.next_cid += 1
        self.alive.add(self.next_cid)
        return dataclasses.replace(self.base, pid=10_000 + i, connection_id=self.next_cid)

    def reset(self) -> None:
        self.jt._query(f"DELETE FROM {self.jt.name}")
        self.jt._query(f"DELETE FROM {self.chain.Square.full_table_name}")

    # ------------------------------------------------------------ database
    def rows(self) -> dict[int, dict]:
        cur = self.conn.query(f"SELECT * FROM {self.jt.name}", as_dict=True)
        return {r["item_id"]: dict(r) for r in cur.fetchall()}

    def done(self) -> set[int]:
        return {r[0] for r in self.conn.query(f"SELECT item_id FROM {self.chain.Square.full_table_name}").fetchall()}

    @staticmethod
    def owned_by(row: dict, owner: Owner) -> bool:
        return (row["status"] == "reserved" and row["host"] == owner.host and int(row["pid"]) == owner.pid
                and int(row["connection_id"]) == owner.connection_id)

    # ------------------------------------------------------------ steps
    def pick(self, p: int, has) -> int:
        """Process ``p``, or the next one for which the step would do something."""
        return next((q % P for q in range(p, p + P) if has(self.procs[q % P])), p)

    def step(self, op: tuple) -> None:
        kind, p, n, flag, subset = op
        if kind in ("make", "fail", "release"):
            p = self.pick(p, lambda proc: proc.held)
        elif kind == "flush":
            p = self.pick(p, lambda proc: proc.committed)
        elif kind == "stale":
            p = self.pick(p, lambda proc: proc.stale and (proc.stale[-1][1] or proc.stale[-1][2]))
        elif kind in ("die", "takeover"):
            p = self.pick(p, lambda proc: proc.held or proc.committed)
        if kind == "takeover":  # the usual way to a stale owner: die, reconcile, re-claim, report late
            for sub in (("die", p, n, flag, subset), ("reconcile", p, 3, flag, subset),
                        ("claim", (p + 1) % P, K, flag, subset), ("stale", p, n, flag, subset)):
                self.step(sub)
            return
        {
            "enqueue": lambda: self.op_enqueue(subset),
            "claim": lambda: self.op_claim(p, n),
            "make": lambda: self.op_make(p),
            "flush": lambda: self.op_flush(p),
            "fail": lambda: self.op_fail(p, retry=flag),
            "release": lambda: self.op_release(p, charge=flag, max_attempts=min(n, 3)),
            "die": lambda: self.op_die(p),
            "stale": lambda: self.op_stale(p, STALE_KINDS[n % 3]),
            "reconcile": lambda: self.op_reconcile(max_attempts=min(n, 3)),
        }[kind]()
        self.check()

    def op_enqueue(self, subset) -> None:
        self.jt.enqueue(Restriction([{"item_id": i} for i in sorted(subset)]))
        self.enqueued |= set(subset)

    def op_claim(self, p: int, n: int) -> None:
        proc = self.procs[p]
        done = self.done()
        claims = self.jt.claim(proc.owner, n)
        others = {c.raw for q in self.procs if q is not proc for c in q.held + q.committed}
        for c in claims:
            assert c.raw not in others, f"key {c.key} given to two live owners"
            assert c.key["item_id"] not in done, f"done key {c.key} handed out again"
        proc.held += claims

    def op_make(self, p: int) -> None:
        proc = self.procs[p]
        if proc.held:
            claim = proc.held.pop(0)  # workers make keys in claim order
            self.chain.Square.insert1({**claim.key, "square": 0.0}, allow_direct_insert=True)
            proc.committed.append(claim)

    def op_flush(self, p: int) -> None:
        proc = self.procs[p]
        assert self.jt.complete(proc.owner, proc.committed) == len(proc.committed)
        proc.committed = []

    def op_fail(self, p: int, retry: bool) -> None:
        proc = self.procs[p]
        if proc.held:
            claim = proc.held.pop(0)
            status = self.jt.fail(proc.owner, claim, "ValueError: boom", None, Policy(retries=int(retry), backoff=0))
            assert self.rows()[claim.key["item_id"]]["status"] == status

    def op_release(self, p: int, charge: bool, max_attempts: int) -> None:
        proc = self.procs[p]
        held, proc.held = proc.held, []
        n = self.jt.release(proc.owner, held, charge=held[0] if charge and held else None, reason="was stopped",
                            policy=Policy(max_attempts=max_attempts))
        assert n == len(held)

    def op_die(self, p: int) -> None:
        """The process's connection dies; its uncommitted work is gone, it reconnects."""
        proc = self.procs[p]
        self.alive.discard(proc.owner.connection_id)
        proc.stale.append((proc.owner, proc.held, proc.committed))
        proc.owner, proc.held, proc.committed = self._connect(p), [], []

    def op_stale(self, p: int, kind: str) -> None:
        """An owner whose connection died reports late, as a worker does after reconnecting.
        It may settle its own reservations, and must change nothing else."""
        proc = self.procs[p]
        if not proc.stale:
            return
        old, held, committed = proc.stale[-1]
        before = {k: r for k, r in self.rows().items() if not self.owned_by(r, old)}
        if kind == "complete" and committed:
            self.jt.complete(old, committed)
        elif kind == "fail" and held:
            self.jt.fail(old, held[0], "ValueError: late", None, Policy())
        elif kind == "release" and held:
            self.jt.release(old, held, charge=held[0], reason="lost its connection", policy=Policy())
        after = self.rows()
        for k, row in before.items():
            assert after.get(k) == row, f"a stale owner changed key {k}: {row} -> {after.get(k)}"

    def op_reconcile(self, max_attempts: int) -> None:
        rows = self.rows()
        dead = {(r["pid"], r["connection_id"]) for r in rows.values()
                if r["status"] == "reserved" and int(r["connection_id"]) not in self.alive}
        result = self.jt.reconcile(SimulatedLive(self.conn, self.alive), policy=Policy(max_attempts=max_attempts))
        assert result["charged"] <= len(dead), "more than one key charged per dead owner"
        for r in self.rows().values():
            assert r["status"] != "reserved" or int(r["connection_id"]) in self.alive, "a dead owner still holds a key"

    # ------------------------------------------------------------ invariants
    def check(self) -> None:
        rows, done = self.rows(), self.done()
        for k in self.enqueued:
            row = rows.get(k)
            # never lose a key: done, or exactly one jobs row that says where it is
            assert k in done or (row and row["status"] in ("pending", "reserved", "error")), f"key {k} lost"
            if k in done and row:
                assert row["status"] == "reserved", f"done key {k} is {row['status']}"
        assert set(rows) <= self.enqueued
        seen: set = set()
        for proc in self.procs:
            for c in proc.held + proc.committed:
                assert c.raw not in seen, f"key {c.key} held by two live owners"
                seen.add(c.raw)
                row = rows.get(c.key["item_id"])
                assert row and self.owned_by(row, proc.owner), f"live owner lost its claim on {c.key}: {row}"


def test_property_jobs_table_interleavings(chain, db):
    """Random interleavings of enqueue / claim / make / complete / fail / release /
    connection death / late reports from dead owners / reconcile, over several simulated
    owners on the real jobs table: a key is never lost (always done, pending, reserved
    or error), never held by two live owners, never handed out again once done; a stale
    owner's complete/fail/release never changes a row it does not hold; reconcile
    releases every dead owner's keys and charges at most one key per dead owner."""
    from hypothesis import HealthCheck, Phase, given, settings

    seed(chain, K)

    # derandomized: the same 40 interleavings every run; no shrinking (each step is real
    # SQL, so shrinking a failure would take minutes: the failing steps are printed whole)
    @settings(max_examples=40, deadline=None, derandomize=True, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(ops=_ops())
    def run(ops):
        model = JobsModel(chain)
        model.reset()  # every example starts from a clean jobs table
        for op in ops:
            model.step(op)

    run()
