"""Tables that can have no jobs table (no primary-key attribute from a foreign key), made by
one worker at a time under a database lock: DataJoint's own ``schema_uuid.Item`` and the
``keyless`` test pipeline, run through the CLI on both databases."""

from __future__ import annotations

import json
import subprocess
import sys

import datajoint as dj
import pytest
from conftest import PIPELINES
from test_slurm import cluster, slurm, submitted  # noqa: F401 (fixtures)

from dj_orchestrate import ledger, pipeline

KEYLESS = str(PIPELINES / "keyless.py")
DJ_UUID = str(PIPELINES / "datajoint_uuid.py")
TOPICS = ["Habenula", "Hippocampus", "Hypothalamus", "Hypophysis", "Thalamus", "Cortex"]


@pytest.fixture
def keyless(db):
    sys.modules.pop("keyless", None)
    return pipeline.load(KEYLESS)


def python(db, code: str, schema: str | None = None, **env: str) -> subprocess.CompletedProcess:
    """Python in its own process, with the test's database (and ``schema`` for the pipeline)."""
    return subprocess.run([sys.executable, "-c", code], env={**db.env, "DJO_TEST_SCHEMA": schema or db.schema, **env},
                          capture_output=True, text=True, timeout=240)


def stock(db, module: str, code: str, **env: str) -> str:
    """``code`` run after ``import <module> as m`` in another schema, made there by stock
    DataJoint; its printed JSON. The schema is dropped afterwards."""
    other = db.schema + "_stock"
    try:
        out = python(db, f"import json, {module} as m\n{code}", schema=other, **env)
        assert out.returncode == 0, out.stderr[-3000:]
        return out.stdout.strip().splitlines()[-1]
    finally:
        dj.Schema(other, create_schema=False).drop(prompt=False)


def djo(db, *args: str, tmp_path, expect: int = 0, **env: str) -> subprocess.CompletedProcess:
    out = db.cli(*args, cwd=tmp_path, env={"DJO_LOG_DIR": str(tmp_path / "logs"), **env})
    assert out.returncode == expect, out.stdout[-3000:] + out.stderr[-3000:]
    return out


UUID_ROWS = "print(json.dumps(sorted([str(r['item_id']), str(r['topic_id']), r['word']] for r in m.Item.to_dicts())))"


def test_datajoints_schema_uuid_item_is_made_as_stock_populate_makes_it(db, datajoint_tests, tmp_path):
    """DataJoint's own test schema: ``Item`` (key_source ``Topic``, no foreign key in its
    primary key) is made by ``run``, with exactly the rows a stock ``populate()`` makes."""
    env = {"DJO_DATAJOINT_TESTS": str(datajoint_tests)}
    seed = "import datajoint_uuid as m\nfor t in %r: m.Topic().add(t)" % (TOPICS,)
    seeded = python(db, seed, **env)
    if db.backend == "postgresql":
        # DataJoint 2.3.5 sends every uuid value as its 16 bytes, which PostgreSQL's uuid
        # column refuses: stock DataJoint cannot even add a Topic there. When it can, this
        # fails, and the rows are to be compared on PostgreSQL too.
        assert seeded.returncode != 0 and "is of type uuid but expression is of type bytea" in seeded.stderr
        return
    assert seeded.returncode == 0, seeded.stderr[-3000:]
    out = djo(db, "run", DJ_UUID, "--workers", "3", "--json", tmp_path=tmp_path, **env)
    tables = {t["table"]: t for t in json.loads(out.stdout)["tables"]}
    assert tables["Item"]["done"] == len(TOPICS) and tables["Item"]["missing"] == 0
    made = python(db, "import json, datajoint_uuid as m\n" + UUID_ROWS, **env)
    assert made.returncode == 0, made.stderr[-3000:]
    expected = stock(db, "datajoint_uuid", seed.split("\n", 1)[1] + "\nm.Item.populate()\n" + UUID_ROWS, **env)
    assert json.loads(made.stdout.strip().splitlines()[-1]) == json.loads(expected)
    assert len(json.loads(expected)) == 4 * len(TOPICS)


KEYLESS_ROWS = """
print(json.dumps({
    "Item": sorted([r['topic'], r['word']] for r in m.Item.to_dicts()),
    "TopicSize": sorted([r['topic'], r['items']] for r in m.TopicSize.to_dicts()),
    "Length": sorted([r['topic'], r['word'], r['length']] for r in (m.Item * m.Length).to_dicts()),
}))
"""


def test_rows_equal_stock_and_a_table_that_reads_it_waits(keyless, db, tmp_path):
    """Made by three workers beside the tables downstream of it: ``Length`` (keyed by
    Item) gets its keys as Item's are made; ``TopicSize``, whose make reads Item, waits for
    all of it (made early, it would count too few). Rows equal stock ``populate()``; each
    topic is made once."""
    keyless.seed(TOPICS)
    out = djo(db, "run", KEYLESS, "--workers", "3", "--json", tmp_path=tmp_path, DJO_TEST_SLEEP="0.05")
    assert {t["table"]: t["done"] for t in json.loads(out.stdout)["tables"]} == \
        {"Item": len(TOPICS), "TopicSize": len(TOPICS), "Length": 2 * len(TOPICS)}
    made = python(db, "import json, keyless as m\n" + KEYLESS_ROWS)
    assert made.returncode == 0, made.stderr[-3000:]
    expected = stock(db, "keyless", f"m.seed({TOPICS!r})\nfor t in (m.Item, m.TopicSize, m.Length): t.populate()\n"
                     + KEYLESS_ROWS)
    assert json.loads(made.stdout.strip().splitlines()[-1]) == json.loads(expected)
    assert sorted(r["topic"] for r in keyless.MakeLog.to_dicts()) == sorted(TOPICS)


def test_two_concurrent_runs_never_make_a_key_twice(keyless, db, tmp_path):
    """Two ``run`` commands at once, two workers each, and a bare worker: the lock lets
    one make the table at a time, so every topic is made exactly once (a second make of a
    topic would add two more rows under new keys)."""
    keyless.seed(TOPICS)
    env = {**db.env, "DJO_TEST_SLEEP": "0.2", "DJO_LOG_DIR": str(tmp_path / "logs")}
    commands = [["run", KEYLESS, "--table", "Item", "--workers", "2", "--no-progress"]] * 2 + [["work", KEYLESS, "--table", "Item"]]
    procs = [subprocess.Popen([sys.executable, "-m", "dj_orchestrate", *c], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for c in commands]
    outputs = [p.communicate(timeout=240)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), "\n".join(o[-2000:] for o in outputs)
    assert sorted(r["topic"] for r in keyless.MakeLog.to_dicts()) == sorted(TOPICS), "a topic was made twice"
    assert len(keyless.Item()) == 2 * len(TOPICS)


def test_failures_are_listed_counted_kept_and_retried(keyless, db, tmp_path):
    """A failing make of such a table: the run exits 1 and counts it; ``errors`` (and
    ``--json``) lists it from the ledger, ``status`` counts it; it is tried once, and not
    again by a later run (nor once ``ignore``d), until ``retry`` clears it. Read-only
    commands create no ledger table."""
    keyless.seed(["a", "b", "c"])
    djo(db, "run", KEYLESS, "--table", "Item", "--key", '{"topic": "a"}', tmp_path=tmp_path)
    assert json.loads(djo(db, "errors", KEYLESS, "--json", tmp_path=tmp_path).stdout) == []
    djo(db, "status", KEYLESS, tmp_path=tmp_path)
    assert ledger.key_failures() is None  # the ledger is there, its failures table not yet: nothing wrote one

    out = djo(db, "run", KEYLESS, "--table", "Item", "--workers", "3", "--json", tmp_path=tmp_path, expect=1,
              DJO_TEST_FAIL="b")
    tables = {t["table"]: t for t in json.loads(out.stdout)["tables"]}
    assert (tables["Item"]["done"], tables["Item"]["error"], tables["Item"]["missing"]) == (2, 1, 0)
    [failed] = json.loads(djo(db, "errors", KEYLESS, "--json", tmp_path=tmp_path).stdout)
    assert failed["table"] == "Item" and failed["key"] == {"topic": "b"} and failed["attempts"] == 1
    assert failed["error_message"] == "ValueError: topic b is bad" and failed["log_path"] and failed["backend_job_id"]
    text = djo(db, "errors", KEYLESS, "--stack", tmp_path=tmp_path).stdout
    assert 'Item {"topic": "b"}' in text and "raise ValueError" in text
    status = {r["table"]: r for r in json.loads(djo(db, "status", KEYLESS, "--json", tmp_path=tmp_path).stdout)["tables"]}
    assert (status["Item"]["total"], status["Item"]["done"], status["Item"]["pending"], status["Item"]["error"]) == (3, 2, 0, 1)

    djo(db, "run", KEYLESS, "--table", "Item", tmp_path=tmp_path)  # a failed key is not tried again...
    assert sorted(r["topic"] for r in keyless.MakeLog.to_dicts()) == ["a", "c"]
    out = djo(db, "ignore", KEYLESS, "--table", "Item", "--key", '{"topic": "b"}', "--json", tmp_path=tmp_path)
    assert json.loads(out.stdout) == {"Item": 1}
    status = {r["table"]: r for r in json.loads(djo(db, "status", KEYLESS, "--json", tmp_path=tmp_path).stdout)["tables"]}
    assert (status["Item"]["error"], status["Item"]["ignore"]) == (0, 1)
    out = djo(db, "retry", KEYLESS, "--json", tmp_path=tmp_path)  # ...until it is retried
    assert json.loads(out.stdout)["Item"] == 1
    out = djo(db, "run", KEYLESS, "--json", tmp_path=tmp_path)
    assert {t["table"]: t["done"] for t in json.loads(out.stdout)["tables"]} == {"Item": 3, "TopicSize": 3, "Length": 6}
    assert djo(db, "errors", KEYLESS, tmp_path=tmp_path).stdout.strip() == "no errors"


def test_made_on_slurm_by_one_worker_and_downstream_after_it(keyless, db, slurm):
    """Every backend launches ``work``, and the launch plan gives such a table one pull
    worker (a table with nothing but a lock to claim by gets no fixed shards): on the test
    SLURM cluster, ``run --backend slurm --wait`` makes it, then the tables downstream of it."""
    keyless.seed(TOPICS[:3])
    out = slurm.cli("run", KEYLESS, "--backend", "slurm", "--config", str(slurm.config), "--no-progress", "--wait",
                    "--json")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert {name: len(ids) for name, ids in submitted(out.stderr).items()} == {"Item": 1, "TopicSize": 1, "Length": 1}
    workers = [s["table_name"] for s in ledger.shards_of(json.loads(out.stdout)["run_id"])]
    assert workers.count("Item") == 1 and workers.count("Length") == 2, workers  # ([slurm] pull_workers = 2)
    assert sorted(r["topic"] for r in keyless.MakeLog.to_dicts()) == sorted(TOPICS[:3])
    assert {r["topic"]: r["items"] for r in keyless.TopicSize.to_dicts()} == dict.fromkeys(TOPICS[:3], 2)
    assert len(keyless.Length()) == 6
