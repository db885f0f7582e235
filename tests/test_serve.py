"""``dj-orchestrate serve``: the always-on mode, on MariaDB and PostgreSQL.

Each server runs as a user runs it: its own process (``procs``), started with
``--interval 1``; the rows it makes are checked against what a plain ``populate()``
gives, and ``MakeLog`` (written inside each make's transaction) counts every make.
"""

from __future__ import annotations

import datetime
import json
import re
import signal
import subprocess
import time

import pytest
from conftest import PIPELINES, jobs_rows, makes, seed, wait_for
from processes import assert_all_made, assert_nothing_reserved, restartable
from test_slurm import cluster  # noqa: F401  (the fixture)

from dj_orchestrate import ledger, pipeline, reports, serve

CHAIN = str(PIPELINES / "chain.py")


def servers(chain) -> list[dict]:
    """What ``status`` shows of the pipeline's servers (read here, many times a second)."""
    return reports.server_rows(pipeline.identity(chain)[1])


def roles(chain) -> dict[int, str]:
    return {r["pid"]: r["role"] for r in servers(chain)}


def all_made(chain, n: int):
    return lambda: len(chain.Square()) == n and len(chain.Total()) == n


def start(procs, *args: str, env: dict | None = None, name: str = "serve") -> subprocess.Popen:
    return procs.cli("serve", CHAIN, "--interval", "1", "--workers", "2", *args, env=env, name=name)


def stop(procs, p: subprocess.Popen, grace: float = 5) -> float:
    """SIGTERM; how long it took to exit (it must exit 0)."""
    sent = time.monotonic()
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(timeout=grace + 5)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"serve still running {grace + 5:.0f}s after SIGTERM:\n{procs.output(p)[-3000:]}")
    assert p.returncode == 0, procs.output(p)[-3000:]
    return time.monotonic() - sent


def test_serve_makes_what_arrives_once_and_stops_on_sigterm(chain, db, procs):
    """Everything made; rows inserted while it runs are made within two intervals plus
    their make time (and a run's start); each make exactly once; one log line per change;
    SIGTERM mid-make: exit 0 within --grace + 5 s, nothing left reserved."""
    seed(chain, 6)
    p = start(procs, env={"DJO_TEST_SLEEP": "0.3"})
    wait_for(all_made(chain, 6), 60, "the seeded keys", detail=lambda: procs.output(p)[-2000:])
    time.sleep(3)  # idle intervals: nothing started, nothing logged
    chain.Item.insert([{"item_id": i, "value": float(i)} for i in range(6, 10)])
    inserted = time.monotonic()
    wait_for(all_made(chain, 10), 60, "the new keys", detail=lambda: procs.output(p)[-2000:])
    # 2 intervals + 4 keys × 2 tables × 0.3 s on 2 workers + a run's start (a Python process: ~3 s here)
    assert time.monotonic() - inserted < 2 * 1 + 1.2 + 8, procs.output(p)
    assert set(makes(chain).values()) == {1} and len(makes(chain)) == 20
    log = procs.output(p)
    assert len(re.findall(r"started a local \(Square, Total\) run", log)) == 2, log  # none while idle
    assert "+4 keys Square" in log
    chain.Item.insert([{"item_id": i, "value": float(i)} for i in range(10, 30)])
    wait_for(lambda: any(r["status"] == "reserved" for r in jobs_rows(chain.Square)), 30, "a key in the making")
    stop(procs, p)
    assert_nothing_reserved(chain)
    made = {r["item_id"] for r in chain.Square.to_dicts()}
    assert {r["item_id"]: r["square"] for r in chain.Square.to_dicts()} == {i: float(i) ** 2 for i in made}
    assert not servers(chain)  # a server that stopped is no longer listed


def test_serve_http_runs_the_dashboard_beside_it(chain, db, procs):
    """``serve --http PORT``: the dashboard answers while the server runs (its status is
    ``status --json``'s tables) and is gone after SIGTERM."""
    from test_dashboard import free_port, get

    seed(chain, 3)
    port = free_port()
    p = start(procs, "--http", str(port), env={"DJO_DASHBOARD_TOKEN": "t-" + db.schema})
    wait_for(all_made(chain, 3), 60, "the seeded keys")
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: get(base + "/healthz")[0] == 200, 60, "the dashboard", detail=lambda: procs.output(p)[-2000:])
    cli = json.loads(db.cli("status", CHAIN, "--json").stdout)["tables"]
    # the dashboard's counts are a snapshot (taken as it starts, then every few seconds)
    wait_for(lambda: json.loads(get(base + "/api/status")[1]) == cli, 30, "/api/status to be status --json's",
             detail=lambda: get(base + "/api/status")[1])
    stop(procs, p)
    wait_for(lambda: get(base + "/healthz")[0] != 200, 15, "the dashboard to stop")
    assert "t-" + db.schema not in procs.output(p)


def test_failing_keys_stop_at_their_budget(chain, db, procs):
    """Keys that fail are not retried in a loop: over 20 intervals their attempts stop at
    the budget (--retries 1: two attempts) and few runs are started."""
    seed(chain, 5)
    p = start(procs, "--retries", "1", "--backoff", "1", env={"DJO_TEST_FAIL": "1,3"})
    wait_for(lambda: len(chain.Square()) == 3, 60, "the good keys")
    time.sleep(20)
    failed = {r["item_id"]: r for r in jobs_rows(chain.Square) if r["status"] == "error"}
    assert sorted(failed) == [1, 3], jobs_rows(chain.Square)
    assert [makes(chain).get(("Square", i)) for i in (1, 3)] == [None, None]
    errors = json.loads(db.cli("errors", CHAIN, "--json").stdout)
    assert sorted((e["key"]["item_id"], e["attempts"]) for e in errors) == [(1, 2), (3, 2)]
    assert len(re.findall(r"started a local", procs.output(p))) <= 3, procs.output(p)
    stop(procs, p)


def test_two_servers_one_leads_and_the_standby_takes_over(chain, db, procs):
    """Two servers of one pipeline: one leader, one standby in ``status --json``; SIGKILL
    of the leader: the standby leads within 30 s and makes later rows; at no sampled
    moment two leaders."""
    seed(chain, 3)
    first = start(procs, name="first")
    wait_for(lambda: roles(chain).get(first.pid) == "leader", 60, "the first server to lead")
    second = start(procs, name="second")
    wait_for(lambda: roles(chain).get(second.pid) == "standby", 60, "the second to stand by")
    shown = json.loads(db.cli("status", CHAIN, "--json").stdout)["servers"]
    assert sorted(r["role"] for r in shown) == ["leader", "standby"], shown
    wait_for(all_made(chain, 3), 60, "the seeded keys")
    first.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    samples = []
    while roles(chain).get(second.pid) != "leader":
        samples.append(list(roles(chain).values()))
        assert time.monotonic() - killed < 30, f"no new leader after 30 s: {servers(chain)}"
        time.sleep(0.2)
    samples.append(list(roles(chain).values()))
    assert all(s.count("leader") <= 1 for s in samples), samples
    assert roles(chain)[first.pid] == "lost"
    chain.Item.insert([{"item_id": i, "value": float(i)} for i in range(3, 6)])
    wait_for(all_made(chain, 6), 60, "rows made by the new leader", detail=lambda: procs.output(second)[-2000:])
    assert set(makes(chain).values()) == {1}
    stop(procs, second)


def test_database_restart_under_serve(chain, db, procs):
    """The database server restarts under a running ``serve``: it says so once, carries
    on when the server is back, and later rows are made exactly once."""
    server = restartable(db.backend)
    seed(chain, 4)
    p = start(procs)
    wait_for(all_made(chain, 4), 60, "the seeded keys")
    try:
        server.restart()
    finally:
        server.ensure_up()
    time.sleep(2)
    wait_for(lambda: chain.Item.insert1({"item_id": 4, "value": 4.0}, skip_duplicates=True) or True, 60, "an insert")
    chain.Item.insert([{"item_id": i, "value": float(i)} for i in range(5, 8)])
    wait_for(all_made(chain, 8), 90, "rows after the restart", detail=lambda: procs.output(p)[-3000:])
    assert_all_made(chain, 8)
    assert set(makes(chain).values()) == {1}
    log = procs.output(p)
    assert log.count("database unreachable") <= 1 and "leading" in log, log
    stop(procs, p)


@pytest.mark.timeout(400)
def test_a_table_routed_to_slurm(chain, db, procs, cluster, tmp_path):
    """``[run.tables.Total] backend = "slurm"``: ``run`` and ``serve`` make Square in
    local runs and Total in SLURM arrays only, never two live at once; every key once.
    A backend's own option is refused when the tables go to several backends."""
    config = tmp_path / "dj_orchestrate.toml"
    config.write_text('[run.tables.Total]\nbackend = "slurm"\n\n[slurm]\npull_workers = 2\n')
    seed(chain, 4)
    refused = db.cli("run", CHAIN, "--config", str(config), "--scheduler", "tcp://x:1")
    assert refused.returncode == 2 and "--scheduler belongs to one backend" in refused.stderr, refused.stderr
    try:
        ran = db.cli("run", CHAIN, "--config", str(config), "--no-progress", "--json", env={"DJO_LOG_DIR": str(tmp_path)})
        assert ran.returncode == 0, ran.stderr
        assert [(r["route"], r["exit"]) for r in json.loads(ran.stdout)["runs"]] == [("local", 0), ("slurm", 0)]
        assert_all_made(chain, 4)
        p = start(procs, "--config", str(config))
        chain.Item.insert([{"item_id": i, "value": float(i)} for i in range(4, 7)])
        wait_for(all_made(chain, 7), 240, "later rows", detail=lambda: procs.output(p)[-3000:])
        stop(procs, p, grace=30)
    finally:
        runs = ledger.recent_runs(limit=50)
        arrays = [i for r in runs if r["backend"] == "slurm" for i in re.findall(r"\d+", r["backend_info"] or "")]
        if arrays:
            subprocess.run(["scancel", *arrays], capture_output=True, timeout=60)
    assert {r["backend"]: r["tables"] for r in runs} == {"local": "Square", "slurm": "Total"}
    slurm_runs = sorted((r["started"], r["ended"]) for r in runs if r["backend"] == "slurm")
    assert len(slurm_runs) >= 2 and all(a[1] is not None and a[1] <= b[0] for a, b in zip(slurm_runs, slurm_runs[1:]))
    assert_all_made(chain, 7)
    assert set(makes(chain).values()) == {1} and len(makes(chain)) == 14


@pytest.mark.parametrize("args, config, message", [
    (["--interval", "0"], "", "--interval must be a positive number of seconds"),
    (["--until", "noon"], "", "--until 'noon' is not a time"),
    ([], '[run.tables.Total]\nbackend = "slurmm"\n', "backend 'slurmm' in"),
    ([], '[serve]\ninterval = "soon"\n', "interval in"),
])
def test_serve_bad_input_one_line_exit_2_nothing_written(chain, db, tmp_path, args, config, message):
    """Bad options and config: one line naming the mistake (and the valid values), exit 2,
    no server started, no ledger written."""
    path = tmp_path / "dj_orchestrate.toml"
    path.write_text(config)
    out = db.cli("serve", CHAIN, "--config", str(path), *args)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    assert "Traceback" not in out.stderr and not servers(chain)
    assert not ledger.schema._existing()


def test_until_is_the_next_such_time():
    now = datetime.datetime.now()
    at = serve.parse_until("00:00")
    assert at > now and at - now <= datetime.timedelta(days=1) and (at.hour, at.minute) == (0, 0)
    assert serve.parse_until("2030-01-02T03:04") == datetime.datetime(2030, 1, 2, 3, 4)


def test_max_idle_ends_a_server_with_nothing_to_do(chain, db, procs):
    """``--max-idle 2``: once everything is made and nothing comes, exit 0 by itself,
    saying why; no server left listed."""
    seed(chain, 2)
    p = start(procs, "--max-idle", "2")
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"serve --max-idle 2 still running after 60 s:\n{procs.output(p)[-3000:]}")
    assert p.returncode == 0 and "--max-idle 2s with nothing to do" in procs.output(p), procs.output(p)
    assert_all_made(chain, 2)
    assert not servers(chain)
