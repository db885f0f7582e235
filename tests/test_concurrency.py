"""Exactly once under concurrency: 8 dj-orchestrate workers and a stock DataJoint
``populate(reserve_jobs=True)`` on the same 2,000 keys, on both databases."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import PIPELINES, makes, seed

from dj_orchestrate.jobs import JobTable

CHAIN = str(PIPELINES / "chain.py")
N_KEYS = 2000
STOCK = f"""
import sys
sys.path.insert(0, {str(PIPELINES)!r})
import datajoint as dj
import chain
r = chain.Square.populate(reserve_jobs=True, suppress_errors=True)
print("stock made", r["success_count"])
"""


@pytest.mark.timeout(900)  # each process is allowed 300 s
def test_workers_and_stock_populate_make_each_key_exactly_once(chain, db):
    seed(chain, N_KEYS)
    JobTable(chain.Square()).enqueue()
    env = {**db.env, "DJO_TEST_SLEEP": "0.003"}
    stock = subprocess.Popen([sys.executable, "-c", STOCK], env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    workers = [
        subprocess.Popen([sys.executable, "-m", "dj_orchestrate", "work", CHAIN, "--table", "Square", "--max-batch", "20"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(8)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in [*workers, stock]]
    assert all(p.returncode == 0 for p in [*workers, stock]), "\n".join(o[-2000:] for o in outputs)

    per_key = makes(chain)  # (only Square is made here)
    assert len(per_key) == N_KEYS, "keys lost"
    assert max(per_key.values()) == 1, "a key was made twice"
    assert len(chain.Square()) == N_KEYS
    counts = JobTable(chain.Square()).counts()
    assert counts["reserved"] == 0 and counts["pending"] == 0 and counts["error"] == 0
    makers = {row["pid"] for row in chain.MakeLog.to_dicts()}
    assert len(makers) >= 5, f"work was not spread: {len(makers)} processes made keys"
    stock_made = int(outputs[-1].strip().splitlines()[-1].split()[-1])
    assert stock_made > 0, "the stock populate took no part"
    print(f"{db.backend}: stock populate made {stock_made} of {N_KEYS}; {len(makers)} processes in all")
