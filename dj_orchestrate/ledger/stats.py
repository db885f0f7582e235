"""Tables added to the ledger later: failed keys of tables that can have no jobs table,
and the make durations and keys per minute that workers record."""

from __future__ import annotations

from typing import Any, Callable

import datajoint as dj

from .schema import _optional


def _manual(name: str, definition: str) -> Callable[[Any], Any]:
    """How one of these tables is declared on a schema (``_optional`` decides when): a
    ``dj.Manual`` class of that name."""
    return lambda schema: schema(type(name, (dj.Manual,), {"definition": definition}))


_define_key_failures = _manual("KeyFailure", """
    # a key of a table that can have no jobs table (dj_orchestrate.serial): failed, to retry, or ignored
    table_name        : varchar(255)      # the table's full name
    key_hash          : char(32)          # md5 of the key as sorted JSON
    ---
    key               : varchar(4000)     # the key, JSON
    status            : varchar(16)       # error; pending: tried again after scheduled_time; ignore
    attempts=0        : int32
    error_message=""  : varchar(2047)
    error_stack=null  : <blob>
    host=""           : varchar(255)
    pid=0             : int32
    backend_job_id="" : varchar(255)
    log_path=""       : varchar(1023)
    completed_time    : datetime(3)
    scheduled_time    : datetime(3)
    """)


def key_failures(create: bool = False) -> Any | None:
    """The ``KeyFailure`` table (see ``_optional``)."""
    return _optional(_define_key_failures, create)


_define_make_stats = _manual("MakeStat", """
    # make durations of a table's keys in one run by one worker: sums, not a row per key
    run_id            : varchar(32)       # "" for a worker started without a run
    table_name        : varchar(255)      # the table's class name
    worker            : varchar(255)      # host:pid (each worker writes its own row)
    ---
    n                 : int32             # keys made
    total             : float64           # seconds, summed
    longest           : float64           # seconds
    buckets           : varchar(255)      # JSON counts per bound of dashboard.durations.BOUNDS
    updated           : datetime(3)
    """)


def make_stats(create: bool = False) -> Any | None:
    """The ``MakeStat`` table (see ``_optional``)."""
    return _optional(_define_make_stats, create)


_define_make_minutes = _manual("MakeMinute", """
    # keys of a table made in one minute by one worker: throughput (rows older than durations.KEEP are deleted)
    minute            : datetime          # the minute's start (the worker's clock)
    table_name        : varchar(255)      # the table's class name
    worker            : varchar(255)      # host:pid (each worker writes its own rows)
    ---
    n                 : int32             # keys made
    """)


def make_minutes(create: bool = False) -> Any | None:
    """The ``MakeMinute`` table (see ``_optional``)."""
    return _optional(_define_make_minutes, create)
