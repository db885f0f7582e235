"""What dj-orchestrate relies on inside DataJoint, pinned: if an upgrade changes any of
it, these fail first (no database needed)."""

from __future__ import annotations

import inspect

import datajoint as dj
from datajoint.autopopulate import AutoPopulate
from datajoint.jobs import Job


def test_populate1_signature_and_jobs_protocol():
    """The worker hands ``_populate1`` its own jobs handle (reserve/complete/error)."""
    params = list(inspect.signature(AutoPopulate._populate1).parameters)
    assert params[:6] == ["self", "key", "jobs", "suppress_errors", "return_exception_objects", "make_kwargs"]
    source = inspect.getsource(AutoPopulate._populate1)
    for call in ("jobs.reserve(key)", "jobs.complete(key", "jobs.error(", "cancel_transaction", "KeyboardInterrupt, SystemExit"):
        assert call in source, call


def test_jobs_table_definition():
    """The columns claim/complete/reconcile read and write, and the ~~ naming."""
    source = inspect.getsource(Job._generate_definition)
    for column in ("status          : enum('pending', 'reserved', 'success', 'error', 'ignore')", "priority",
                   "scheduled_time", "reserved_time", "completed_time", "error_message", "error_stack=null : <blob>",
                   "host", "pid", "connection_id", "user", "version"):
        assert column in source, column
    assert 'f"~~{base_name}"' in inspect.getsource(Job.__init__)
    assert "scheduled_time')} <= CURRENT_TIMESTAMP(3)" in inspect.getsource(Job.reserve)


def test_version():
    major, minor = (int(x) for x in dj.__version__.split(".")[:2])
    assert (major, minor) >= (2, 3) and major < 3


def test_connection_internals_for_lost_connections():
    """``db.is_lost`` asks the adapter's ``ping`` (DataJoint's ``is_connected`` swallows
    its answer); a reconnect is ``connect()`` plus resetting ``_in_transaction``; a worker
    never interrupts a make inside these modules (``Worker._interrupt``)."""
    from datajoint.adapters.mysql import MySQLAdapter
    from datajoint.adapters.postgres import PostgreSQLAdapter
    from datajoint.connection import Connection

    class Dead:
        def cursor(self):
            raise RuntimeError("connection already closed")

        def ping(self, reconnect=False):
            raise RuntimeError("gone")

    for adapter in (MySQLAdapter, PostgreSQLAdapter):
        assert adapter.ping(object.__new__(adapter), Dead()) is False  # a bool, never an exception
    assert "self._in_transaction" in inspect.getsource(Connection.start_transaction)
    # what Worker._interrupt reads off the stack: the frames' module names and the code name
    from dj_orchestrate.worker.interrupts import _DATABASE_CALLS

    for method in (Connection.query, MySQLAdapter.ping, PostgreSQLAdapter.ping):
        assert method.__code__.co_filename == inspect.getsourcefile(inspect.getmodule(method))
        assert inspect.getmodule(method).__name__.startswith(_DATABASE_CALLS), method
    assert AutoPopulate._populate1.__code__.co_name == "_populate1"  # not wrapped by a decorator
