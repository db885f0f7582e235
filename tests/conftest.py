"""Fixtures: the real MariaDB and PostgreSQL services, a fresh schema per test.

Every DB-touching test runs once per database (``db`` is parametrized). When a
database is unreachable the tests skip locally, but fail in CI (CI=true): a skipped
database test in CI tested nothing.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PIPELINES = Path(__file__).resolve().parent / "pipelines"
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
# The test SLURM cluster lives in a directory of its own (slurm/start-cluster.sh), never in
# /etc/slurm: SLURM's commands, here and in every subprocess, find it through SLURM_CONF.
SLURM_DIR = Path(os.environ.get("DJO_SLURM_DIR", "/var/tmp/dj-orchestrate-slurm"))
os.environ["SLURM_CONF"] = str(SLURM_DIR / "etc" / "slurm.conf")

DATABASES = {
    "mysql": {"DJ_HOST": "127.0.0.1", "DJ_PORT": "3306", "DJ_USER": "root", "DJ_PASS": "", "DJ_BACKEND": "mysql"},
    "postgresql": {"DJ_HOST": "127.0.0.1", "DJ_PORT": "5432", "DJ_USER": "postgres", "DJ_PASS": "", "DJ_BACKEND": "postgresql"},
}


def reachable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def require(ok: bool, what: str) -> None:
    """Skip locally; fail in CI."""
    if ok:
        return
    if CI:
        pytest.fail(f"{what} is required in CI (CI=true) but is not available", pytrace=False)
    pytest.skip(f"{what} not available")


def checkout_state() -> set[str] | None:
    """What ``git status`` shows in the checkout, ignored files included (a run's logs in
    ``.dj_orchestrate/`` are ignored, and must not be written there either), Python's
    own caches left out; None outside a git checkout."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    caches = ("__pycache__", ".pytest_cache")
    return None if out.returncode else {line for line in out.stdout.splitlines()
                                        if not any(part in caches for part in line[3:].split("/"))}


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config._djo_checkout = checkout_state()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Tests write only under temporary directories: the suite fails when it left
    anything new in the checkout (what was there before it started is not its doing)."""
    before, after = getattr(session.config, "_djo_checkout", None), checkout_state()
    if before is None or after is None or os.environ.get("DJO_UPDATE_GOLDEN"):  # (rewrites the checkout on purpose)
        return
    new = sorted(after - before)
    if new:
        print("\nthe tests left these in the checkout (tests write only under tmp_path):\n  " + "\n  ".join(new))
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


SERVICES: dict[str, Callable[[], object]] = {}


def service(fixture: str):
    """Register the slow start of the session fixture named ``fixture`` (``airflow db
    migrate``, the SLURM cluster: minutes on a loaded machine) to run before the first
    test, when a selected test uses that fixture, so that the first test's timeout is
    not spent on it. Cached: the fixture calls it again and gets its result, or, where
    it failed, its error raised in the test."""
    def register(start):
        SERVICES[fixture] = functools.cache(start)
        return SERVICES[fixture]
    return register


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """Run every test, every service and every subprocess they start in a scratch
    directory, never in the checkout (where a run leaves its logs, Hypothesis its
    database); then start the selected tests' services."""
    from hypothesis.configuration import set_hypothesis_home_dir

    scratch = session.config._tmp_path_factory.mktemp("cwd-session")  # (pytest's own temporary root)
    os.chdir(scratch)
    set_hypothesis_home_dir(scratch / ".hypothesis")
    used = {name for item in session.items for name in getattr(item, "fixturenames", ())}
    for name, start in SERVICES.items():
        if name in used and not session.config.option.collectonly:
            with contextlib.suppress(Exception):  # (raised again in the test that uses it)
                start()


@pytest.fixture(scope="session")
def datajoint_tests() -> Path:
    """DataJoint's own test schemas (``tests/schema*.py`` of the installed version's sdist):
    public pipelines nobody here wrote. Downloaded once from PyPI into a cache outside the
    checkout (``DJO_SDIST_CACHE``); a missing download fails in CI."""
    import tarfile

    import datajoint as dj

    cache = Path(os.environ.get("DJO_SDIST_CACHE", "/var/tmp/dj-orchestrate-sdist"))
    found = cache / f"datajoint-{dj.__version__}" / "tests"
    if not (found / "schema_simple.py").is_file():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"datajoint=={dj.__version__}", "-d", str(cache)], check=False, timeout=300)
        archive = cache / f"datajoint-{dj.__version__}.tar.gz"
        if archive.is_file():
            with tarfile.open(archive) as tar:
                tar.extractall(cache, filter="data")
    require((found / "schema_simple.py").is_file(), f"DataJoint {dj.__version__}'s sdist (pip download datajoint)")
    return found


@pytest.fixture(scope="session", autouse=True)
def _services() -> None:
    if not (reachable(3306) and reachable(5432)):
        subprocess.run(["bash", str(ROOT / "scripts" / "services.sh"), "--no-slurm"], check=False)


class DB:
    """One test's database: its env (for subprocesses), its fresh schemas, and a working
    directory of its own (``home``: never the checkout, where a run would leave its logs)."""

    def __init__(self, backend: str, home: Path) -> None:
        self.backend, self.home = backend, home
        tag = uuid.uuid4().hex[:8]
        self.schema = f"djot_{tag}"
        self.ledger = f"djot_{tag}_ledger"
        self.env = {
            **os.environ,
            **DATABASES[backend],
            "DJ_USE_TLS": "false",
            "DJO_TEST_SCHEMA": self.schema,
            "DJO_LEDGER_SCHEMA": self.ledger,
            "PYTHONPATH": os.pathsep.join([str(ROOT), str(PIPELINES)]),
        }
        self.env.pop("DJO_EMBEDDED_DIR", None)

    def cli(self, *args: str, env: dict | None = None, timeout: float = 240, cwd: Path | None = None) -> subprocess.CompletedProcess:
        """Run ``dj-orchestrate ARGS`` as a user would, in its own process."""
        return subprocess.run([sys.executable, "-m", "dj_orchestrate", *args], env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout, cwd=cwd or self.home)


def configure(db: DB) -> None:
    """Point this process's DataJoint at ``db`` and forget every cached module/table."""
    import datajoint as dj

    from dj_orchestrate import ledger

    for k, v in db.env.items():
        if k.startswith(("DJ_", "DJO_")):
            os.environ[k] = v
    cfg = DATABASES[db.backend]
    dj.config["database.host"] = cfg["DJ_HOST"]
    dj.config["database.port"] = int(cfg["DJ_PORT"])
    dj.config["database.user"] = cfg["DJ_USER"]
    dj.config["database.password"] = ""
    dj.config["database.backend"] = db.backend
    dj.config["database.use_tls"] = False
    dj.config["database.reconnect"] = True
    dj.conn(reset=True)
    ledger.tables.cache_clear()
    for name in ("chain", "quirks", "straggler"):
        sys.modules.pop(name, None)


@pytest.fixture(params=sorted(DATABASES))
def db(request, tmp_path_factory):
    backend = request.param
    port = int(DATABASES[backend]["DJ_PORT"])
    require(reachable(port), f"{backend} on 127.0.0.1:{port}")
    d = DB(backend, tmp_path_factory.mktemp("cwd"))
    configure(d)
    yield d
    import datajoint as dj

    conn = dj.conn()
    for name in (d.schema, d.ledger):
        try:
            dj.Schema(name, create_schema=False).drop(prompt=False)
        except Exception:
            q = conn.adapter.quote_identifier
            try:
                conn.query(f"DROP {'DATABASE' if backend == 'mysql' else 'SCHEMA'} IF EXISTS {q(name)}"
                           + ("" if backend == "mysql" else " CASCADE"))
            except Exception:
                pass


@pytest.fixture
def chain(db):
    """The chain test pipeline, loaded fresh in this process, with its tables."""
    from dj_orchestrate import pipeline

    module = pipeline.load(str(PIPELINES / "chain.py"))
    return module


@pytest.fixture
def procs(db, tmp_path):
    """Start processes (``processes.Procs``); every one is killed when the test ends."""
    from processes import Procs

    p = Procs(db, tmp_path)
    try:
        yield p
    finally:
        p.kill_all()


def seed(module, n: int) -> None:
    module.Item.insert(({"item_id": i, "value": float(i)} for i in range(n)), skip_duplicates=True)


def infos(module, *names: str):
    from dj_orchestrate import pipeline

    return pipeline.select(pipeline.discover(module), names)


@contextlib.contextmanager
def password_env(db: DB):
    """The env of a database user whose password is a fresh sentinel, to show it leaks
    nowhere: on MySQL a user made for the test (root has no password here), on
    PostgreSQL the same user (its test server trusts any password)."""
    secret = "pw-" + uuid.uuid4().hex
    if db.backend != "mysql":
        yield {"DJ_PASS": secret}
        return
    import datajoint as dj

    user = f"djot_{uuid.uuid4().hex[:8]}"
    conn = dj.conn()
    conn.query(f"CREATE USER '{user}'@'%%' IDENTIFIED BY '{secret}'")
    try:
        for schema in (db.schema, db.ledger):
            conn.query(f"GRANT ALL PRIVILEGES ON `{schema}`.* TO '{user}'@'%%'")
        yield {"DJ_USER": user, "DJ_PASS": secret}
    finally:
        conn.query(f"DROP USER '{user}'@'%%'")


GOLDEN_INPUTS = {"dj_orchestrate.toml", "README.md"}  # what a golden folder holds besides the output


def check_golden(out: Path, golden: Path) -> list[str]:
    """What ``render`` wrote to ``out`` (its folders too) is ``golden``'s file set, byte
    for byte (a file missing or extra fails too). DJO_UPDATE_GOLDEN=1 rewrites the golden files instead;
    refused in CI, where every golden test would compare the output with itself."""
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    if os.environ.get("DJO_UPDATE_GOLDEN"):
        if CI:
            pytest.fail("DJO_UPDATE_GOLDEN is set in CI: the golden tests would check nothing", pytrace=False)
        for old in golden.rglob("*"):
            if old.is_file() and old.name not in GOLDEN_INPUTS:
                old.unlink()
        for name in written:
            (golden / name).parent.mkdir(parents=True, exist_ok=True)
            (golden / name).write_text((out / name).read_text())
    assert written == sorted(str(p.relative_to(golden)) for p in golden.rglob("*")
                             if p.is_file() and p.name not in GOLDEN_INPUTS), written
    for name in written:
        assert (out / name).read_text() == (golden / name).read_text(), name
    return written


def wait_for(predicate, timeout: float, what: str = "condition", interval: float = 0.2, detail=None):
    """Poll ``predicate`` until truthy; on timeout, fail with ``detail()`` (what was seen).
    A database restarted under the poll (not under the run) is reconnected, not fatal."""
    import datajoint as dj

    from dj_orchestrate.db import is_lost

    deadline = time.monotonic() + timeout
    while True:
        try:
            value = predicate()
        except Exception as err:
            if not is_lost(err, dj.conn()):
                raise
            with contextlib.suppress(Exception):
                dj.conn().connect()
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f"; last seen: {detail()}" if detail else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{seen}")
        time.sleep(interval)


def jobs_rows(table) -> list[dict]:
    """Every row of the table's ``~~table`` jobs table (none when it is not declared)."""
    from dj_orchestrate.jobs import JobTable

    jt = JobTable(table())
    if not jt.declared:
        return []
    return [dict(r) for r in jt.conn.query(f"SELECT * FROM {jt.name}", as_dict=True).fetchall()]


def makes(chain) -> dict[tuple[str, int], int]:
    """Committed makes per (table, item_id), from the chain pipeline's side ledger
    (written inside each make's transaction: a key made twice shows up twice)."""
    return dict(collections.Counter((r["tbl"], r["item_id"]) for r in chain.MakeLog.to_dicts()))


@contextlib.contextmanager
def read_only_user(db: DB, *more: str):
    """A database account that may only SELECT the test's schema (and the schemas ``more``,
    their tables as they are now): (user, password); dropped after."""
    import secrets

    import datajoint as dj

    user, password = f"djo_ro_{db.schema[-8:]}", secrets.token_hex(8)
    conn, q = dj.conn(), dj.conn().adapter.quote_identifier
    if db.backend == "mysql":
        grants = [f"CREATE USER '{user}'@'%%' IDENTIFIED BY '{password}'"]
        grants += [f"GRANT SELECT ON {q(name)}.* TO '{user}'@'%%'" for name in (db.schema, *more)]
        drops = [f"DROP USER IF EXISTS '{user}'@'%%'"]
    else:
        grants = [f"CREATE ROLE {user} LOGIN PASSWORD '{password}'"]
        for name in (db.schema, *more):
            grants += [f"GRANT USAGE ON SCHEMA {q(name)} TO {user}", f"GRANT SELECT ON ALL TABLES IN SCHEMA {q(name)} TO {user}"]
        drops = [f"DROP OWNED BY {user}", f"DROP ROLE IF EXISTS {user}"]
    for sql in grants:
        conn.query(sql)
    try:
        yield user, password
    finally:
        for sql in drops:
            conn.query(sql)
