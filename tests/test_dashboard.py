"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright for
Python (``executable_path``: no browser download), against a real ``dj-orchestrate
dashboard`` process on both databases."""

from __future__ import annotations

import contextlib
import datetime
import html
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import PIPELINES, ROOT, jobs_rows, password_env, read_only_user, require, seed, wait_for
from test_interop import declared_by

from dj_orchestrate import durations, jobs, ledger, pipeline, queries
from dj_orchestrate.dashboard.snapshot import TTL, Keeper, Snapshot
from dj_orchestrate.jobs import STATUSES, JobTable

CHAIN = str(PIPELINES / "chain.py")
KEYLESS = str(PIPELINES / "keyless.py")
CHROMIUM = "/usr/bin/chromium"
TOKEN = "tok-" + secrets.token_hex(8)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dashboard(db, tmp_path: Path, env: dict | None = None, spec: str = CHAIN):
    """A dashboard process on a free port; yields its base URL and its output file."""
    port = free_port()
    out = tmp_path / f"dashboard-{port}.log"
    with open(out, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dj_orchestrate", "dashboard", spec, "--port", str(port)],
                                env={**db.env, "DJO_DASHBOARD_TOKEN": TOKEN, **(env or {})}, cwd=tmp_path,
                                stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: proc.poll() is None and get(base + "/healthz")[0] == 200 or proc.poll() is not None, 60,
                 "the dashboard to answer", detail=out.read_text)
        assert proc.poll() is None, out.read_text()
        yield base, out
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()
    except OSError:
        return 0, ""


def statements(url: str) -> int:
    """The statements the page ran, as its Server-Timing header says."""
    with urllib.request.urlopen(url, timeout=30) as r:
        timing = r.headers["Server-Timing"]
    found = re.fullmatch(r'app;dur=[0-9.]+, db;dur=[0-9.]+;desc="([0-9]+) statements"', timing)
    assert found, timing
    return int(found.group(1))


@pytest.fixture(scope="module")
def browser():
    require(Path(CHROMIUM).exists(), f"Debian's chromium at {CHROMIUM} (scripts/tools.sh installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def recorded(context) -> list[str]:
    """Every URL a page of ``context`` requests, to show none leaves 127.0.0.1."""
    urls: list[str] = []
    context.on("request", lambda r: urls.append(r.url))
    return urls


def shot(page, tmp_path: Path, name: str) -> None:
    page.screenshot(path=str(tmp_path / name), full_page=True)
    if os.environ.get("DJO_UPDATE_SCREENSHOTS") == "1":
        (ROOT / "docs").mkdir(exist_ok=True)
        shutil.copy(tmp_path / name, ROOT / "docs" / name)


def counts_of(page, table: str) -> dict[str, str]:
    cells = page.locator(f"#counts tr[data-table='{table}'] td").all_inner_texts()
    return dict(zip(["table", "total", "done", "pending", "reserved", "error", "ignore", "eta", "made_last_hour"], cells))


def test_dashboard_follows_a_run_groups_failures_and_retries(chain, db, tmp_path, browser):
    """The overview updates itself while a run progresses; the failures page groups the
    three failed keys under one cause and opens to their stacks; without the token no
    button shows and a POST is refused; the token holder retries the group and its keys
    go back to pending. No request leaves 127.0.0.1; no password is shown anywhere."""
    seed(chain, 24)
    with password_env(db) as secret_env, dashboard(db, tmp_path, secret_env) as (base, out):
        context = browser.new_context()
        urls = recorded(context)
        page = context.new_page()
        page.goto(base + "/")
        assert counts_of(page, "Square")["done"] == "0"
        assert page.locator("svg g.table").count() == 2 and page.locator("svg path.edge").count() == 1
        # a make takes 1 s: the run lasts longer than the counts' snapshot lives (TTL) and one poll
        run = subprocess.Popen([sys.executable, "-m", "dj_orchestrate", "run", CHAIN, "--workers", "2", "--no-progress"],
                               env={**db.env, **secret_env, "DJO_TEST_SLEEP": "1.0", "DJO_TEST_FAIL": "2,5,7"},
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            # the page is not reloaded: the poller swaps the counts in while keys are made
            wait_for(lambda: 0 < int(counts_of(page, "Square")["done"]) < 21, 120, "the overview to show progress",
                     detail=lambda: counts_of(page, "Square"))
        finally:
            output = run.communicate(timeout=240)[0]
        assert run.returncode == 1, output
        wait_for(lambda: counts_of(page, "Square")["error"] == "3" and counts_of(page, "Total")["done"] == "21", 60,
                 "the overview to show the run's end", detail=lambda: counts_of(page, "Square"))
        assert counts_of(page, "Square")["eta"] == "done"  # and durations were recorded
        made = {name: s["n"] for name, s in durations.totals(["Square", "Total"]).items()}
        assert made == {"Square": 21, "Total": 21}  # every key made has its duration (the run declared the table)
        assert counts_of(page, "Square")["made_last_hour"] == "21" and counts_of(page, "Total")["made_last_hour"] == "21"
        shot(page, tmp_path, "dashboard-overview.png")

        page.goto(base + "/failures")
        groups = page.locator("tr.group")
        assert groups.count() == 1 and "item <n> is bad" in groups.inner_text() and groups.locator("td").first.inner_text() == "3"
        assert page.locator("button.act").count() == 0  # no token: no buttons
        page.locator("a.cause").click()
        assert page.locator("details.failed").count() == 3 and "3 failed keys" in page.locator("h2").inner_text()
        assert "Traceback" in page.locator("pre.stack").first.inner_text()
        assert "ValueError: item 2 is bad" in page.locator("pre.stack").first.inner_text()

        forged = context.request.post(base + "/actions/retry", form={"cause": "item <n> is bad"},
                                      headers={"Origin": base})
        assert forged.status == 403 and "token" in forged.text()
        foreign = context.request.post(base + "/actions/retry", form={"cause": "item <n> is bad"},
                                       headers={"Origin": "http://evil.example", "Authorization": f"Bearer {TOKEN}"})
        assert foreign.status == 403 and "Origin" in foreign.text()

        page.goto(base + "/?token=" + TOKEN)  # the URL printed at start: a cookie, and the token gone from the URL
        assert "token" not in page.url
        page.goto(base + "/tables/Square?status=error")  # a table's keys, filtered: retry one of them
        assert page.locator("table.keys tbody tr").count() == 3
        page.locator("table.keys tr", has_text='"item_id": 7').locator("button.retry").click()
        assert "1 keys back to pending" in page.locator("#msg").inner_text()
        assert page.locator("table.keys tbody tr").count() == 2
        page.goto(base + "/failures")
        shot(page, tmp_path, "dashboard-failures.png")
        page.locator("tr.group button.retry").click()
        assert "2 keys back to pending" in page.locator("#msg").inner_text()
        assert sorted((r["item_id"], r["status"]) for r in jobs_rows(chain.Square) if r["item_id"] in (2, 5, 7)) == \
            [(2, "pending"), (5, "pending"), (7, "pending")]

        page.goto(base + "/runs")
        assert page.locator("table.runs tbody tr").count() == 1 and "errors" in page.locator("table.runs").inner_text()
        jt = JobTable(chain.Square())  # a worker that died holding item 2: its owner is gone, reconcile releases it
        jt._query(f"UPDATE {jt.name} SET status = 'reserved', connection_id = 999999999, host = 'gone-node' "
                  f"WHERE item_id = 2")
        page.goto(base + "/runs")
        assert "gone-node" in page.locator("#owners tr.gone").inner_text()
        assert "1 owners gone, holding 1 keys" in page.locator("#owners").inner_text()
        page.locator("button.reconcile").click()
        assert "1 keys back to pending" in page.locator("#msg").inner_text()
        assert page.locator("#owners tr.gone").count() == 0

        api = json.loads(get(base + "/api/status")[1])
        cli = json.loads(db.cli("status", CHAIN, "--json", env=secret_env, cwd=tmp_path).stdout)["tables"]
        assert api == cli
        assert json.loads(get(base + "/api/errors")[1]) == []
        plan = json.loads(get(base + "/api/plan")[1])  # the three retried keys: ETA as status has it
        assert plan == json.loads(db.cli("plan", CHAIN, "--json", env=secret_env, cwd=tmp_path).stdout)
        assert [(p["table"], p["missing"], p["eta"]) for p in plan] == [("Square", 3, api[0]["eta"]), ("Total", 0, "done")]
        assert re.fullmatch(r"[0-9]+s", api[0]["eta"]), api  # 3 keys × about 1 s, on one worker
        text = db.cli("plan", CHAIN, env=secret_env, cwd=tmp_path).stdout
        assert re.search(r"^Square .* " + api[0]["eta"] + r"\s*$", text, re.MULTILINE) and " eta" in text, text
        metrics = get(base + "/metrics")[1]
        assert 'djo_keys{status="done",table="Square"} 21.0' in metrics and "djo_database_up 1.0" in metrics
        assert 'djo_keys_made_last_hour{table="Square"} 21.0' in metrics
        assert 'djo_workers{table="Square"} 0.0' in metrics  # the run is over: none holds a key
        def made_counted() -> float:  # workers flush their make durations every few seconds and as they end
            found = re.search(r'djo_make_duration_seconds_count\{table="Square"\} ([0-9.]+)', get(base + "/metrics")[1])
            return float(found.group(1)) if found else 0.0

        wait_for(lambda: made_counted() > 0, 30, "Square's make durations in /metrics", detail=made_counted)

        bearer = {"Authorization": f"Bearer {TOKEN}"}  # a machine's POST: the token in a header, no Origin
        assert context.request.post(base + "/actions/ignore", form={"table": "Square"}, headers=bearer).status == 400
        bad = context.request.post(base + "/actions/retry", form={"key": '{"nope": 1}'}, headers=bearer)
        assert bad.status == 400 and "unknown attribute" in bad.text()
        assert context.request.get(base + "/tables/Square?key=%7B%22item_id%22%3A%20%22x%22%7D").status == 400

        assert {urllib.parse.urlsplit(u).hostname for u in urls} == {"127.0.0.1"}, urls
        # no secret anywhere: not the password, nor the token (chosen by DJO_DASHBOARD_TOKEN: not printed)
        password = secret_env.get("DJ_PASS")
        assert password, "password_env gives the account a password"
        paths = ("/", "/fragment/overview", "/failures", "/failures/group?cause=item+%3Cn%3E+is+bad", "/runs",
                 "/tables/Square", "/api/status", "/api/errors?stack=1", "/api/plan", "/metrics", "/healthz")
        pages = [context.request.get(base + p).text() for p in paths]  # with the token's cookie
        printed = out.read_text()
        assert not any(secret in text for secret in (password, TOKEN) for text in pages + [printed])
        assert f"http://127.0.0.1:{urllib.parse.urlsplit(base).port}/?token=$DJO_DASHBOARD_TOKEN" in printed, printed
        context.close()


def test_dashboard_read_only_account_sees_no_buttons_and_is_refused(chain, db, tmp_path, browser, monkeypatch):
    """A SELECT-only account: the pages work, show no action, and a POST with the token
    gets 403 naming the privilege it lacks; nothing changes."""
    monkeypatch.setenv("DJO_TEST_FAIL", "2")
    seed(chain, 4)
    chain.Square.populate(reserve_jobs=True, suppress_errors=True)
    with read_only_user(db) as (user, password):
        with dashboard(db, tmp_path, {"DJ_USER": user, "DJ_PASS": password}) as (base, out):
            context = browser.new_context()
            page = context.new_page()
            page.goto(base + "/?token=" + TOKEN)
            assert "lacks UPDATE" in page.locator("body").inner_text(), out.read_text()
            for path in ("/", "/failures", "/runs", "/tables/Square?status=error"):
                page.goto(base + path)
                assert page.locator("button.act").count() == 0, path
            for path in ("/api/status", "/api/plan", "/api/errors", "/metrics", "/fragment/overview", "/healthz",
                         "/failures/group?cause=item+%3Cn%3E+is+bad", "/tables/Square?status=pending"):
                assert get(base + path)[0] == 200, path  # GET writes nothing: all work on SELECT alone
            page.goto(base + "/failures")
            assert "item <n> is bad" in page.locator("tr.group").inner_text()
            forged = context.request.post(base + "/actions/retry", form={"cause": "item <n> is bad"},
                                          headers={"Origin": base})
            assert forged.status == 403 and "UPDATE" in forged.text(), forged.text()
            assert [r["status"] for r in jobs_rows(chain.Square)] == ["error"]
            assert password not in out.read_text() and password not in page.content()
            context.close()


def test_make_durations_add_up_across_flushes_in_one_row_per_worker(db):
    """A worker's sums grow in its own row (not a row per key); what a flush wrote is not
    written again; the ETA is keys left × mean duration ÷ workers. The keys made per minute
    add up the same way; the last hour counts this minute and the 59 before it, and a
    worker deletes every worker's minutes older than two hours."""
    for seconds in (0.05, 2.0, 30.0):
        durations.note("run-a", "Square", seconds)
    durations.flush()
    durations.note("run-a", "Square", 0.5)
    durations.flush()
    [row] = ledger.make_stats().to_dicts()
    assert (row["n"], row["total"], row["longest"]) == (4, 32.55, 30.0)
    assert json.loads(row["buckets"]) == [1, 1, 1, 1, 0, 0, 0]
    assert durations.totals(["Square"])["Square"]["n"] == 4
    assert durations.etas({"Square": (4, 10)}, {"Square": 2}) == {"Square": durations.human(4 * 32.55 / 4 / 2)}
    assert durations.etas({"Square": (0, 10), "Total": (0, 0), "Other": (5, 5)}, {}) == \
        {"Square": "done", "Total": "-", "Other": "?"}

    minutes = ledger.make_minutes()
    assert sum(r["n"] for r in minutes.to_dicts()) == 4 and len(minutes()) <= 2  # a row per minute (a flush may span two)
    now = ledger.now().replace(second=0, microsecond=0)
    old = {"table_name": "Square", "worker": "elsewhere:1", "n": 100}
    minutes.insert([{**old, "minute": now - datetime.timedelta(minutes=59)},  # in the last hour
                    {**old, "minute": now - datetime.timedelta(minutes=60)},  # not
                    {**old, "minute": now - durations.KEEP - datetime.timedelta(minutes=1)}])  # deleted at the next prune
    assert durations.made_lately(["Square", "Total"]) == {"Square": 104}
    durations._pruned[0] = float("-inf")
    durations.note("run-a", "Square", 1.0)
    durations.flush()
    assert durations.made_lately(["Square"]) == {"Square": 105} and len(minutes() & {"worker": "elsewhere:1"}) == 2


def by_definition(table) -> dict[str, int]:
    """``JobTable.counts`` of a chain table as defined, from DataJoint's own fetches: every
    key_source key, done (in the table) or not, and then by its jobs row's status."""
    keys = [k["item_id"] for k in table.key_source.keys()]
    done = {k["item_id"] for k in table.keys()}
    status = {r["item_id"]: r["status"] for r in jobs_rows(type(table))}
    left = [k for k in keys if k not in done]
    by_status = {s: sum(status.get(k) == s for k in left) for s in STATUSES}
    blocked = by_status["reserved"] + by_status["error"] + by_status["ignore"]
    return {"total": len(keys), "done": len(keys) - len(left), **by_status, "missing": len(left) - blocked}


@pytest.mark.parametrize("who", ["none", "stock", "djo"])
def test_counts_of_every_table_at_once_are_each_tables_counts(chain, db, monkeypatch, who):
    """``counts_of`` (the dashboard's one statement) and ``counts`` (a table's) say what the
    definition says, on jobs tables that are missing, stock DataJoint's, and ours; with a
    done key that still has a jobs row and a jobs row whose key left the key_source."""
    declared_by(who, chain, monkeypatch)
    chain.Square.insert1({"item_id": 0, "square": 0.0}, allow_direct_insert=True, skip_duplicates=True)
    jt = JobTable(chain.Square())
    if jt.declared:
        jt._query(f"DELETE FROM {jt.name} WHERE item_id IN (0, 99)")
        jt._query(f"INSERT INTO {jt.name} (item_id, status, priority) VALUES (0, 'error', 5), (99, 'ignore', 5)")
    tables = [chain.Square(), chain.Total()]
    expected = [by_definition(t) for t in tables]
    assert [JobTable(t).counts() for t in tables] == expected
    assert jobs.counts_of([JobTable(t) for t in tables]) == expected
    assert expected[0]["done"] >= 1 and expected[0]["ignore"] == 0


def test_counts_of_tables_without_a_jobs_key_are_theirs(db):
    """A table that can have no jobs table (``serial``) is counted by its own ``counts``
    beside the others' one statement."""
    sys.modules.pop("keyless", None)
    keyless = pipeline.load(str(PIPELINES / "keyless.py"))
    keyless.seed(["a", "b", "c"])
    keyless.Item.populate(keyless.Topic & {"topic": "a"})
    jts = [JobTable(t.instance()) for t in pipeline.discover(keyless)]
    assert [jt.supported for jt in jts] == [False, True, True]
    found = jobs.counts_of(jts)
    assert found == [jt.counts() for jt in jts]
    assert (found[0]["total"], found[0]["done"], found[0]["missing"]) == (3, 1, 2)


def test_a_snapshot_is_warmed_kept_fresh_while_viewed_and_invalidated():
    """Warmed, a snapshot is served at once; the keeper takes it again once it is TTL old
    while a page asked for it lately (no reader waits, none sees one older than TTL and a
    refresh); not asked for, it is left alone, and the next reader waits for a fresh one,
    as after an invalidation. A value taken across an invalidation is not served again."""
    computed, release = [], threading.Event()
    release.set()

    def compute() -> int:
        release.wait(10)
        computed.append(threading.current_thread().name)
        return len(computed)

    snap = Snapshot("test", compute, threading.Lock(), ttl=0.3, stale=3.0)
    keeper = Keeper([snap])
    snap.warm()
    keeper.start()
    try:
        assert snap.get()[0] == 1 and computed == ["MainThread"]
        wait_for(lambda: len(computed) >= 3, 5, "the keeper to refresh it twice")
        assert set(computed[1:]) == {"snapshots"}
        for _ in range(5):  # read while kept: at once, never older than the TTL and a refresh
            started = time.monotonic()
            value, taken = snap.get()
            assert time.monotonic() - started < 0.5 and datetime.datetime.now() - taken < datetime.timedelta(seconds=1.5)
            time.sleep(0.2)
        time.sleep(3.2)  # not asked for: left alone
        n = len(computed)
        time.sleep(0.7)
        assert len(computed) == n
        assert snap.get()[0] == n + 1 and computed[-1] == "MainThread"  # waited for
        snap.invalidate()
        assert snap.get()[0] == n + 2 and computed[-1] == "MainThread"  # at once, in this thread
        release.clear()
        wait_for(snap.busy.locked, 5, "the keeper to start a refresh")
        snap.invalidate()  # taken across this: not served
        release.set()
        assert snap.get()[0] > n + 3
    finally:
        release.set()
        keeper.stop()


def test_pages_read_snapshots_that_actions_refresh(chain, db, tmp_path):
    """Counts shown come from a snapshot shared by the pages, taken before the server
    accepts a request: the first page computes none (its statements are its own); a change
    by someone else shows within its TTL and one refresh; the dashboard's own action takes
    the snapshots again before it answers, so the next page computes none and shows it.
    Every answer says its server time and statements."""
    seed(chain, 5)
    with dashboard(db, tmp_path) as (base, out):
        def status() -> dict[str, dict]:
            return {r["table"]: r for r in json.loads(get(base + "/api/status")[1])}

        assert statements(base + "/failures") == 0  # the first page: failures grouped, privileges read
        assert statements(base + "/") == statements(base + "/")  # counted before it: nothing more the first time
        assert status()["Square"]["total"] == 5
        seed(chain, 8)  # someone else's change
        wait_for(lambda: status()["Square"]["total"] == 8, TTL + 30, "the new keys in /api/status",
                 detail=lambda: status()["Square"])
        request = urllib.request.Request(base + "/actions/ignore", method="POST", data=urllib.parse.urlencode(
            {"table": "Square", "key": '{"item_id": 1}'}).encode(), headers={"Authorization": f"Bearer {TOKEN}"})
        with urllib.request.urlopen(request, timeout=30) as r:
            assert "1 keys now ignored" in urllib.parse.unquote(r.url)
        assert statements(base + "/failures") == 0  # taken again by the action
        assert status()["Square"]["ignore"] == 1  # at once: the action took the counts again
        assert "Counted at" in get(base + "/")[1] and "Grouped at" in get(base + "/failures")[1]
        assert statements(base + "/tables/Square") == 1
        assert statements(base + "/api/status") >= 1

        seed(chain, 60)  # a table's keys, 50 a page: the next page follows the last key shown
        JobTable(chain.Square()).enqueue()

        def keys_on(url: str) -> tuple[list[int], str | None]:
            text = get(url)[1]
            found = re.search(r'<a href="([^"]+)">next page', text)
            return ([int(k) for k in re.findall(r'<code>\{&#34;item_id&#34;: ([0-9]+)\}</code>', text)],
                    found and html.unescape(found.group(1)))

        first, more = keys_on(base + "/tables/Square?status=pending")  # (1 is ignored)
        assert first == [0, *range(2, 51)] and more and "after=" in more
        assert keys_on(base + "/tables/Square" + more) == (list(range(51, 60)), None)


def test_runs_page_lists_the_servers_and_metrics_their_heartbeat_age(chain, db, tmp_path, browser, procs):
    """The pipeline's ``serve`` processes on /runs (host, pid, role, last beat, beat age) and
    their heartbeat age in /metrics: none before a server ran (no Server table; the page
    creates none); a leader that beats, shown by the page's own poll; lost once it stopped
    beating without a goodbye (SIGKILL). A SELECT-only account that may read the ledger
    sees them; one that may not sees none, and the page works."""
    with dashboard(db, tmp_path) as (base, _):
        context = browser.new_context()
        page = context.new_page()
        page.goto(base + "/runs")
        assert "No dj-orchestrate serve" in page.locator("#servers").inner_text()
        assert "djo_server_heartbeat_age_seconds{" not in get(base + "/metrics")[1]
        assert ledger.schema._optional(ledger.heartbeats._define_servers, False) is None
        server = procs.cli("serve", CHAIN, "--interval", "1", "--workers", "1", name="serve")
        wait_for(lambda: page.locator("#servers tr.leader").count() == 1, 60, "the leader on /runs (not reloaded)",
                 detail=lambda: procs.output(server)[-2000:])
        cells = page.locator("#servers tr.leader td").all_inner_texts()
        assert cells[1:3] == [str(server.pid), "leader"] and float(cells[5].split()[0]) < 10, cells
        found = re.search(r'djo_server_heartbeat_age_seconds\{role="leader",server="([^"]+)"\} ([0-9.]+)',
                          get(base + "/metrics")[1])
        assert found and found.group(1).split(":")[1] == str(server.pid) and float(found.group(2)) < 10
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        wait_for(lambda: page.locator("#servers tr.lost").count() == 1, 30, "the killed leader shown as lost")
        assert re.search(r'djo_server_heartbeat_age_seconds\{role="lost",server="[^"]+"\} ([0-9.]+)',
                         get(base + "/metrics")[1])
        context.close()
    for grants, shown in (((db.ledger,), 1), ((), 0)):
        with read_only_user(db, *grants) as (user, password), \
                dashboard(db, tmp_path, {"DJ_USER": user, "DJ_PASS": password}) as (base, out):
            page = browser.new_page()
            page.goto(base + "/runs")
            assert page.locator("#servers tr.lost").count() == shown, out.read_text()
            assert ("No dj-orchestrate serve" in page.locator("#servers").inner_text()) == (not shown)
            page.close()


def test_failures_of_a_table_without_a_jobs_table_are_grouped_opened_and_retried(db, tmp_path, browser):
    """``keyless.Item`` can have no jobs table (``serial``): its failed keys, in the ledger's
    KeyFailure, are grouped by cause on /failures, the group opens to each key's stack and
    log, and the group's retry clears them: the next run makes them."""
    sys.modules.pop("keyless", None)
    keyless = pipeline.load(KEYLESS)
    keyless.seed(["x1", "x2", "x3"])
    env = {"DJO_LOG_DIR": str(tmp_path / "logs")}
    run = db.cli("run", KEYLESS, "--table", "Item", "--workers", "2", env={**env, "DJO_TEST_FAIL": "x2,x3"}, cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    with dashboard(db, tmp_path, spec=KEYLESS) as (base, _):
        context = browser.new_context()
        page = context.new_page()
        page.goto(base + "/failures")
        group = page.locator("tr.group")
        assert group.count() == 1, page.locator("main").inner_text()
        assert group.locator("td").first.inner_text() == "2" and "ValueError: topic x<n> is bad" in group.inner_text()
        assert "Item (2)" in group.inner_text() and '{"topic": "x2"}' in group.inner_text()
        page.locator("a.cause").click()
        assert page.locator("details.failed").count() == 2
        assert "ValueError: topic x2 is bad" in page.locator("pre.stack").first.inner_text()
        assert "Traceback" in page.locator("pre.stack").first.inner_text()
        assert json.loads(get(base + "/api/errors")[1]) == json.loads(db.cli("errors", KEYLESS, "--json", cwd=tmp_path).stdout)
        retried = context.request.post(base + "/actions/retry", form={"cause": "ValueError: topic x<n> is bad"},
                                       headers={"Authorization": f"Bearer {TOKEN}"})
        assert retried.ok and "2 keys back to pending" in urllib.parse.unquote(retried.url)
        page.goto(base + "/failures")
        assert page.locator("tr.group").count() == 0 and "No failed keys." in page.locator("main").inner_text()
        context.close()
    assert db.cli("run", KEYLESS, "--table", "Item", env=env, cwd=tmp_path).returncode == 0
    assert sorted(r["topic"] for r in keyless.MakeLog.to_dicts()) == ["x1", "x2", "x3"]


def test_causes_are_the_same_in_python_and_in_the_database(chain, db):
    """A failure listed (``serial``) is grouped under the cause its message has in SQL."""
    jt = JobTable(chain.Square())
    value = f"CAST(%s AS {'CHAR' if jt.mysql else 'TEXT'})"
    for message in ["ValueError: item 12 is bad", "OSError: [Errno 2] No such file: '/data/s12/raw.dat' (try 3.5)",
                    "KeyError: {'session': 3, 'probe': 'A'} at 0x7f3a2b in 123e4567-e89b-12d3-a456-426614174000",
                    "write /scratch/job_991/out.h5: disk full; retry 2", "no digits, no paths"]:
        found = jt._query(f"SELECT {queries.cause_sql(jt, value)}", [message]).fetchone()[0]
        assert queries.cause_of(message) == found, message


def test_keys_of_a_table_without_a_jobs_table_are_listed_with_their_failures(db, tmp_path, browser):
    """/tables/NAME of ``keyless.Item`` (no jobs table: ``serial``): its counts, its keys not
    made in key order, 50 a page, each with its failure from the ledger; filtered by status
    and key. An account that may not change the ledger's failures sees no button and is
    refused; the token holder ignores a key and retries it, ignores the failures' group and
    retries every failed or ignored key, from the pages."""
    sys.modules.pop("keyless", None)
    keyless = pipeline.load(KEYLESS)
    keyless.seed(["x1", "x2", "x3"])
    run = db.cli("run", KEYLESS, "--table", "Item", env={"DJO_TEST_FAIL": "x2,x3"}, cwd=tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    keyless.seed([f"y{i:02d}" for i in range(52)])
    with dashboard(db, tmp_path, spec=KEYLESS) as (base, _):
        context = browser.new_context()
        page = context.new_page()

        def listed(query: str = "") -> list[list[str]]:
            page.goto(base + "/tables/Item" + query)
            return [row.locator("td").all_inner_texts()[:2] for row in page.locator("table.keys tbody tr").all()]

        rows = listed()
        assert "55 keys: 1 done, 52 to make, 0 reserved, 2 error, 0 ignored" in page.locator("#key-counts").inner_text()
        assert len(rows) == 50 and rows[:3] == [['{"topic": "x2"}', "error"], ['{"topic": "x3"}', "error"],
                                                ['{"topic": "y00"}', "pending"]]
        assert "topic x2 is bad" in page.locator("table.keys tbody tr").first.inner_text()
        page.locator("a", has_text="next page").click()
        assert [r[0] for r in listed("?" + page.url.split("?")[1])] == [f'{{"topic": "y{i}"}}' for i in range(48, 52)]
        assert listed("?status=error") == [['{"topic": "x2"}', "error"], ['{"topic": "x3"}', "error"]]
        pending = listed("?status=pending")
        assert len(pending) == 50 and {s for _, s in pending} == {"pending"} and pending[0][0] == '{"topic": "y00"}'
        assert listed("?status=reserved") == [] and listed("?status=ignore") == []
        assert listed("?key=" + urllib.parse.quote('{"topic": "x3"}')) == [['{"topic": "x3"}', "error"]]
        assert "Within this key: 1 keys: 0 done, 0 to make" in page.locator("#key-counts").inner_text()
        context.close()
    # an account that may only read the ledger: no buttons, and a forged retry is refused naming the privilege
    with read_only_user(db, db.ledger) as (user, password), \
            dashboard(db, tmp_path, {"DJ_USER": user, "DJ_PASS": password}, spec=KEYLESS) as (base, out):
        context = browser.new_context()
        page = context.new_page()
        page.goto(base + "/?token=" + TOKEN)
        page.goto(base + "/tables/Item")
        assert page.locator("table.keys tbody tr").count() == 50 and page.locator("button.act").count() == 0
        note = page.locator("p.note").inner_text()
        assert "lacks DELETE on" in note and "key_failure" in note, (note, out.read_text())
        forged = context.request.post(base + "/actions/retry", form={"table": "Item", "key": '{"topic": "x2"}'},
                                      headers={"Origin": base})
        assert forged.status == 403 and "DELETE on" in forged.text(), forged.text()
        context.close()
    assert [e["key"] for e in JobTable(keyless.Item()).errors()] == [{"topic": "x2"}, {"topic": "x3"}]
    with dashboard(db, tmp_path, spec=KEYLESS) as (base, _):
        context = browser.new_context()
        page = context.new_page()
        page.goto(base + "/?token=" + TOKEN)
        listed()
        page.locator("table.keys tr", has_text='"topic": "y01"').locator("button.ignore").click()
        assert "1 keys now ignored" in page.locator("#msg").inner_text()
        assert listed("?status=ignore") == [['{"topic": "y01"}', "ignore"]]
        page.locator("table.keys tr", has_text='"topic": "y01"').locator("button.retry").click()
        assert "1 keys back to pending" in page.locator("#msg").inner_text() and listed("?status=ignore") == []
        page.goto(base + "/failures")  # the group ignored, then every failed or ignored key retried
        page.locator("tr.group button.ignore").click()
        assert "2 keys now ignored" in page.locator("#msg").inner_text()
        assert listed("?status=ignore") == [['{"topic": "x2"}', "ignore"], ['{"topic": "x3"}', "ignore"]]
        page.locator("button.retry", has_text="Retry these").click()
        assert "2 keys back to pending" in page.locator("#msg").inner_text()
        assert listed("?status=ignore") == [] and listed("?status=error") == []
        context.close()
    assert JobTable(keyless.Item()).errors() == []


def test_metrics_say_when_the_database_does_not_answer():
    """/metrics answers while the database does not: ``djo_database_up 0`` and no keys."""
    from types import SimpleNamespace

    from dj_orchestrate.dashboard import view

    def unreachable() -> None:
        raise ConnectionError("the database went away")

    text = view.metrics(SimpleNamespace(status=unreachable, infos=[], jts={})).decode()
    assert "djo_database_up 0.0" in text and "djo_keys{" not in text


def test_the_dashboard_is_packaged_and_in_compose_on_localhost_only():
    """``[dashboard]`` is in ``all`` (and in the worker image's extra); its templates and
    assets ship with the package; compose runs it, published on 127.0.0.1 only, its
    healthcheck on /healthz."""
    import tomllib

    import yaml

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extras = project["project"]["optional-dependencies"]
    assert {"starlette", "uvicorn", "jinja2", "prometheus-client"} <= {re.split("[<>=\\[]", d)[0] for d in extras["dashboard"]}
    for extra in ("all", "image"):
        assert any("dashboard" in re.search(r"\[(.*)\]", d).group(1).split(",") for d in extras[extra] if "[" in d), extra
    assert project["tool"]["setuptools"]["package-data"]["dj_orchestrate.dashboard"] == ["templates/*.html", "static/*"]
    service = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["dashboard"]
    assert service["command"][0] == "dashboard" and service["ports"] == ["127.0.0.1:${DJO_DASHBOARD_PORT:-8050}:8050"]
    assert "/healthz" in " ".join(service["healthcheck"]["test"])


def test_the_overview_draws_60_tables_in_levels_left_to_right_and_gates_dashed():
    """A 60-table pipeline (three levels of 20): a column per level, left to right, its
    boxes one under another without overlap, the graph as wide as its columns (the page
    scrolls it sideways); foreign keys and the gate found in make (dashed) as edges; each
    box's bar split by its counts."""
    from dj_orchestrate.dashboard import view

    def name(i: int) -> str:
        return f"`lab`.`_t{i:02d}`"

    infos = [pipeline.TableInfo(object, f"T{i:02d}", name(i), i, i // 20,
                                upstream=frozenset({name(i - 20)} if i >= 20 else set()) | ({name(0)} if i == 59 else set()),
                                hidden=frozenset({"T00"} if i == 59 else set())) for i in range(60)]
    g = view.graph(infos, {"T00": {"done": 3, "pending": 1}})
    columns: dict[int, list] = {}
    for box in g["boxes"]:
        columns.setdefault(box.x, []).append(box)
    assert [sorted(b.name for b in boxes) == [f"T{i:02d}" for i in range(20 * c, 20 * c + 20)]
            for c, (_, boxes) in enumerate(sorted(columns.items()))] == [True, True, True]
    for boxes in columns.values():
        ys = sorted(b.y for b in boxes)
        assert all(b - a >= g["box_h"] for a, b in zip(ys, ys[1:]))
    assert g["width"] == max(columns) + g["box_w"] + g["pad"] and g["height"] >= 20 * g["box_h"]
    assert len(g["edges"]) == 41 and [(e.x1 < e.x2, e.gate) for e in g["edges"] if e.gate] == [(True, True)]
    t00 = next(b for b in g["boxes"] if b.name == "T00")
    assert [(s, round(w / (g["box_w"] - 2 * g["pad"]), 2)) for s, _, w in t00.bars] == [("done", 0.75), ("pending", 0.25)]
    css = (ROOT / "dj_orchestrate" / "dashboard" / "static" / "dashboard.css").read_text()
    assert re.search(r"\.graph \{[^}]*overflow-x: auto", css) and re.search(r"\.edge\.gate \{[^}]*stroke-dasharray", css)


def test_a_keys_log_is_its_tail_when_readable_else_the_command_that_shows_it(tmp_path):
    """The group page's log of a failed key: the file's last lines when this machine can
    read it; else ``kubectl logs`` for a pod, ``ssh HOST tail`` for a path elsewhere, the
    scheduler's accounting for a job id."""
    log = tmp_path / "worker.log"
    log.write_text("".join(f"line {i}\n" for i in range(500)))
    kind, text = queries.log_of({"log_path": str(log)}, lines=3)
    assert (kind, text) == ("tail", "line 497\nline 498\nline 499")
    assert queries.log_of({"backend_job_id": "kubernetes:lab/djo-run-abc-0"}) == ("command", "kubectl logs -n lab djo-run-abc-0")
    assert queries.log_of({"log_path": "/elsewhere/w.log", "host": "node7"}, lines=100) == \
        ("command", "ssh node7 tail -n 100 /elsewhere/w.log")
    assert queries.log_of({"backend_job_id": "4242"})[1].startswith("sacct -j 4242")
    assert queries.log_of({}) == ("command", "no log path was recorded for this key")
