"""With no database configured: the embedded PostgreSQL, the demo, and no orphan server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import ROOT


def clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJ_", "DJO_"))}
    env["PYTHONPATH"] = str(ROOT)
    return env


def djo(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dj_orchestrate", *args], cwd=cwd, env=clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def servers_for(pgdata: Path) -> list[str]:
    out = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr  # else "none left running" would prove nothing
    return [line for line in out.stdout.splitlines() if "postgres" in line and str(pgdata) in line]


@pytest.fixture
def home():
    """A fresh directory outside pytest's own temporary root: as root, the embedded server
    runs as a user of its own, which must reach its data directory, and every pytest
    session makes its root private again as it starts (another session's included)."""
    path = Path(tempfile.mkdtemp(prefix="djo-embedded-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.timeout(900)  # two demos, each allowed 300 s
def test_demo_twice_on_embedded_database(home):
    tmp_path = home
    pgdata = tmp_path / ".dj_orchestrate" / "pgdata"
    for _ in range(2):
        out = djo("demo", "--workers", "2", cwd=tmp_path)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
        assert f"embedded PostgreSQL in {pgdata}" in out.stdout
        assert "2 keys failed on purpose" in out.stdout
        assert "corrupt" in out.stdout
    status = djo("status", "dj_orchestrate.examples.demo", "--json", cwd=tmp_path)
    rows = {r["table"]: r for r in json.loads(status.stdout)["tables"]}
    assert set(rows) == {"Preprocess", "Behavior", "SpikeSorting", "QualityMetrics", "SessionSummary"}
    assert rows["Preprocess"]["error"] == 2 and rows["SessionSummary"]["done"] == 22
    assert all(r["reserved"] == 0 and r["pending"] == 0 for r in rows.values())
    for _ in range(20):  # the server stops with the last command that used it
        if not servers_for(pgdata):
            break
        time.sleep(0.5)
    assert not servers_for(pgdata), "embedded PostgreSQL left running"
