"""Gates (a make that reads another table with no foreign key), on MariaDB and
PostgreSQL: names resolved as Python resolves them, gates that cannot hold dropped with
a warning, gates on tables not selected, and a run that cannot progress ends saying why."""

from __future__ import annotations

import json
import subprocess
import sys
import types

import datajoint as dj
import pytest
from conftest import PIPELINES
from test_dask import Run, dask_cluster  # noqa: F401  (a real scheduler and workers)

from dj_orchestrate import pipeline

GATES = str(PIPELINES / "gates.py")
SIMPLE = str(PIPELINES / "simple.py")

# Every auto-populated table of a module and its parts, as sorted JSON rows, in a schema
# named on the command line; with "populate", stock populate() of each first (upstream first).
DUMP = """
import json, sys, os
os.environ["DJO_TEST_SCHEMA"] = sys.argv[2]
import datajoint as dj
from dj_orchestrate import pipeline
module = pipeline.load(sys.argv[1])
if len(sys.argv) > 4:
    getattr(module, sys.argv[4])(*json.loads(sys.argv[5]))
tables = [t.cls for t in pipeline.discover(module)]
if sys.argv[3] == "populate":
    for t in tables:
        t.populate()
parts = [p for t in tables for p in vars(t).values() if isinstance(p, type) and issubclass(p, dj.Part)]
print(json.dumps({c.__name__: sorted(json.dumps(r, sort_keys=True, default=str) for r in c.to_dicts())
                  for c in tables + parts}))
"""


def dump(db, spec: str, schema: str, action: str, env: dict, seed: tuple = ()) -> dict:
    out = subprocess.run([sys.executable, "-c", DUMP, spec, schema, action, *seed], env={**db.env, **env},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])  # (DataJoint logs its connection on stdout)


def drop(schema: str) -> None:
    try:
        dj.Schema(schema, create_schema=False).drop(prompt=False)
    except Exception:
        pass


def equals_stock(db, spec: str, env: dict, seed: tuple = ()) -> None:
    """The rows the run made equal a stock populate() of every table in another schema."""
    stock = db.schema + "_stock"
    try:
        expected = dump(db, spec, stock, "populate", env, seed)
    finally:
        drop(stock)
    made = dump(db, spec, db.schema, "read", env)
    assert made == expected and all(made.values())


@pytest.mark.parametrize("db", ["mysql"], indirect=True)
def test_schema_simple_runs_to_the_end(db, datajoint_tests, tmp_path):
    """DataJoint's own schema_simple: E.make uses its part E.G; the module-level G is E's
    descendant. Once that was taken for a gate, E waited for ever. MySQL/MariaDB only:
    the module declares MySQL types (tinyint) that PostgreSQL does not have."""
    env = {"DJO_DATAJOINT_TESTS": str(datajoint_tests), "DJO_LOG_DIR": str(tmp_path)}
    r = db.cli("run", SIMPLE, "--workers", "3", "--no-progress", env=env, cwd=tmp_path, timeout=240)
    assert r.returncode == 0, r.stdout + r.stderr
    equals_stock(db, SIMPLE, env)


def test_gates_on_a_descendant_or_in_a_cycle_are_dropped(db, tmp_path):
    env = {"DJO_LOG_DIR": str(tmp_path)}
    seed = ("seed", "[2, 3]")
    dump(db, GATES, db.schema, "read", env, seed)
    r = db.cli("run", GATES, "--workers", "3", "--no-progress", env=env, cwd=tmp_path, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    warnings = [line for line in r.stderr.splitlines() if "does not wait for" in line]
    assert len(warnings) == 2, r.stderr
    assert "Early's make reads Late" in warnings[0] and "Pong's make reads Ping" in warnings[1]
    assert "Total's make reads Square" in r.stderr and "Total runs after Square" in r.stderr  # a gate that holds
    equals_stock(db, GATES, env, seed)


def test_a_gate_not_selected_ends_the_run_saying_what_to_run(db, tmp_path):
    """Total's make reads Square, not selected and not made: no Total key is made from
    the empty table; the run ends (exit 1) naming Square."""
    env = {"DJO_LOG_DIR": str(tmp_path)}
    dump(db, GATES, db.schema, "read", env, ("seed", "[2, 3]"))
    r = db.cli("run", GATES, "--table", "Total", "--workers", "2", "--no-progress", env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Total: 2 keys wait for Square (not selected; 6 keys missing): run it first, or select it" in r.stderr
    w = db.cli("work", GATES, "--table", "Total", "--enqueue", env=env, cwd=tmp_path, timeout=60)  # a worker alone
    assert w.returncode == 0, w.stdout + w.stderr
    assert dump(db, GATES, db.schema, "read", env)["Total"] == []
    r = db.cli("run", GATES, "--table", "Square", "--table", "Total", "--no-progress", env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert len(dump(db, GATES, db.schema, "read", env)["Total"]) == 2


@pytest.mark.slow
@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # the guard is the follower's, not the database's
def test_a_gate_not_selected_ends_a_dask_wait_too(db, dask_cluster, tmp_path):  # noqa: F811
    """The no-progress guard on a remote backend: ``--backend dask --wait`` with Total's
    gate (Square) not selected ends within 60 s, exit 1, naming Square; no round is
    resubmitted and no Total row is made."""
    run = Run(db, dask_cluster, tmp_path)
    dump(db, GATES, db.schema, "read", {}, ("seed", "[2, 3]"))
    out = run.run("--scheduler", dask_cluster.address, "--wait", "--table", "Total", pipeline=GATES, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Total: 2 keys wait for Square (not selected; 6 keys missing): run it first, or select it" in out.stderr
    assert dump(db, GATES, db.schema, "read", {})["Total"] == []


def test_a_fan_in_behind_errors_ends_the_run_naming_it(db, tmp_path):
    env = {"DJO_LOG_DIR": str(tmp_path), "DJO_TEST_FAIL": "1"}
    dump(db, GATES, db.schema, "read", env, ("seed", "[2, 3]"))
    r = db.cli("run", GATES, "--table", "Square", "--table", "GroupSum", "--workers", "2", "--no-progress",
               env=env, cwd=tmp_path, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "GroupSum: waits for Square (6 keys failed)" in r.stderr, r.stderr


# ------------------------------------------------------------- name analysis, no database
_SPELLER = types.SimpleNamespace(adapter=types.SimpleNamespace(make_full_table_name=lambda d, t: f"{d}.{t}"))


def _table(name: str, module: types.ModuleType, part_of: type | None = None) -> type:
    """A table class that answers what the analysis asks (a full name, a master), without
    declaring it: the rules are about Python's names, not the database (the connection
    is a stub that only spells a full table name)."""
    base = dj.Part if part_of else dj.Computed
    cls = type(name, (base,), {"__module__": module.__name__, "database": "s", "_connection": _SPELLER})
    if part_of:
        cls._master = part_of
    return cls


def test_names_resolve_as_python_resolves_them(monkeypatch):
    module = types.ModuleType("names_fixture")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    other = types.ModuleType("other_fixture")
    src = '''
def make_part(self, key):
    E.G().insert([])           # E's own part: not the module-level G
def make_global(self, key):
    return len(G())
def make_self(self, key):
    return self.G
def make_module(self, key):
    return other.H
def make_nested(self, key):
    return [len(G & k) for k in key]
def make_lambda(self, key):
    return (lambda: Master.Part)()
def make_local(self, key):
    G = 1
    return G
'''
    exec(compile(src, "names_fixture", "exec"), vars(module))
    E = _table("E", module)
    E.G = _table("E__G", module, E)
    G, H, Master = _table("G", module), _table("H", module), _table("Master", module)
    Master.Part = _table("Master__Part", module, Master)
    vars(module).update(E=E, G=G, Master=Master, other=other)
    other.H = H
    full = {c: c.full_table_name for c in (E, G, H, Master)}

    def reads(method: str) -> set[str]:
        cls = type("T", (E,), {"__module__": module.__name__, "make": vars(module)[method]})
        return pipeline.code_references(cls)

    assert reads("make_part") == {full[E]}  # a subclass of E reading E's part: E
    assert reads("make_global") == {full[G]}
    assert reads("make_self") == {full[E]}  # self.G: the part inherited from E
    assert reads("make_module") == {full[H]}
    assert reads("make_nested") == {full[G]}
    assert reads("make_lambda") == {full[Master]}
    assert reads("make_local") == set()
    E.make = vars(module)["make_part"]
    assert pipeline.code_references(E) == set()  # a table's own parts are the table: no gate
