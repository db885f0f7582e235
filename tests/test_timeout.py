"""``--timeout``: a make running past it ends as ``error`` "timed out after N s", whether
it hangs in Python (stopped by SIGALRM, same worker) or in C with signals blocked
(its worker killed by the watchdog and replaced), and the other keys are made."""

from __future__ import annotations

import json
import sys
import time

import pytest

from conftest import PIPELINES, jobs_rows, seed

HANG = str(PIPELINES / "hang.py")


@pytest.fixture
def hang(db):
    from dj_orchestrate import pipeline

    sys.modules.pop("hang", None)  # bound to the previous test's schema
    module = pipeline.load(HANG)
    seed(module, 8)
    return module


def outcome(hang) -> tuple[dict[int, dict], set[int]]:
    """(jobs rows by item id, item ids made)."""
    return ({r["item_id"]: r for r in jobs_rows(hang.Result)},
            {r["item_id"] for r in hang.Result.to_dicts()})


def test_timeout_in_python_and_in_c(hang, db, tmp_path):
    started = time.monotonic()
    r = db.cli("run", HANG, "--workers", "2", "--no-progress", "--timeout", "2", "--max-batch", "4",
               env={"DJO_TEST_HANG": "1:python,3:c"}, cwd=tmp_path, timeout=120)
    took = time.monotonic() - started
    assert r.returncode == 1, r.stdout + r.stderr
    rows, made = outcome(hang)
    assert made == {0, 2, 4, 5, 6, 7}
    assert {i: (row["status"], row["error_message"], row["attempts"]) for i, row in rows.items()} == {
        1: ("error", "timed out after 2 s", 1), 3: ("error", "timed out after 2 s", 1)}
    errors = json.loads(db.cli("errors", HANG, "--json", cwd=tmp_path).stdout)
    assert sorted(e["key"]["item_id"] for e in errors) == [1, 3]
    print(f"{db.backend}: run took {took:.1f} s")
    assert took < 30, f"hang guard: {took:.1f} s"


@pytest.mark.parametrize("db", ["mysql"], indirect=True)  # one database is enough for the config's plumbing
def test_timeout_from_the_config_file(hang, db, tmp_path):
    (tmp_path / "dj_orchestrate.toml").write_text("[local]\ntimeout = 600\n\n[local.tables.Result]\ntimeout = 2\n")
    r = db.cli("run", HANG, "--workers", "1", "--no-progress", env={"DJO_TEST_HANG": "5:python"}, cwd=tmp_path,
               timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    rows, made = outcome(hang)
    assert made == set(range(8)) - {5}
    assert [(i, row["status"], row["error_message"]) for i, row in rows.items()] == [(5, "error", "timed out after 2 s")]


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # one database is enough for the policy
def test_retries_turn_a_first_timeout_into_pending(hang, db, tmp_path):
    """The key is pending for its retry when the run ends: keys are left, so exit 1 (never "done")."""
    r = db.cli("run", HANG, "--workers", "1", "--no-progress", "--timeout", "Result=2", "--retries", "1",
               env={"DJO_TEST_HANG": "3:python"}, cwd=tmp_path, timeout=120)
    assert r.returncode == 1 and "1 wait for a retry after their --backoff" in r.stderr, r.stdout + r.stderr
    rows, made = outcome(hang)
    assert made == set(range(8)) - {3}
    assert [(i, row["status"], row["error_message"], row["attempts"]) for i, row in rows.items()] == [
        (3, "pending", "timed out after 2 s", 1)]
