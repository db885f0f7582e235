"""Always-on population (``dj-orchestrate serve``), and runs whose tables go to more than
one backend.

A server notices new work every ``interval``: it reconciles the selected tables, enqueues
their new keys (one statement per table) and, for each *route* (the tables one backend
makes, ``[run.tables.X] backend``), starts a ``dj-orchestrate run --backend B --wait`` of
those tables when keys are ready and no run of that route is live. Each run is a process
of its own: it owns its connection, its follow loop and its end (the same code as a
``run`` typed by hand); the server only decides when to start one. An idle server starts
nothing and costs a few queries per table per interval.

One server per pipeline leads. The lock is the database's own (``GET_LOCK`` on
MySQL/MariaDB, a session advisory lock on PostgreSQL), named after the pipeline's schemas
and held by the server's connection: a server that dies (even by SIGKILL) lets it go with
its connection, and a standby, trying every few seconds, leads next. Every server records
its role and heartbeat in the ledger (``ledger.beat``) for ``status``.
"""

from .leadership import Leadership
from .routes import Route, RouteSettings, ServeSettings, routes, serve_settings
from .server import STANDBY_POLL_S, Server, Sidecar, parse_http, parse_until
from .supervisor import MAX_BACKOFF_S, Child, Options, Supervisor, say

__all__ = ["MAX_BACKOFF_S", "STANDBY_POLL_S", "Child", "Leadership", "Options", "Route", "RouteSettings", "ServeSettings",
           "Server", "Sidecar", "Supervisor", "parse_http", "parse_until", "routes", "say", "serve_settings"]
