#!/usr/bin/env python
"""Counts every command a process sends to the database server, at the driver, in every
process of a measured system: what "statements per make" means in the benches.

    python bench/counting.py FOLDER -m dj_orchestrate run PIPELINE ...   # a module, as python -m
    python bench/counting.py FOLDER bench/stock.py PIPELINE TABLE ...    # a script

Counted at the driver, below DataJoint and dj-orchestrate alike, so that no layer is
missed: pymysql's ``_execute_command`` (every statement, and COM_PING, which DataJoint's
``in_transaction`` check sends; the COM_QUIT of a closing connection is not counted) and
psycopg2's cursors' ``execute``/``executemany``/``callproc`` (DataJoint's PostgreSQL ping
is a ``SELECT 1`` on a cursor). A server-side counter (``SHOW GLOBAL STATUS``,
``pg_stat_statements``) would also count every other client of a shared server.

Each process writes its count into a file of its own, ``FOLDER/<pid>.count``, through a
shared memory map on every command: the count survives a forked worker leaving with
``os._exit`` (no exit handler runs), and a fork starts the child's own file. ``total``
sums them. The cost is about a microsecond per command.

With ``DJO_BENCH_KINDS=1`` in its environment, a process also appends each command's kind
(``kind``: its verb and the kind of table it names first) to ``FOLDER/<pid>.kinds``, one
unbuffered write each (a few microseconds more); ``kinds`` tallies them.
"""

from __future__ import annotations

import collections
import mmap
import os
import re
import runpy
import struct
import sys
from pathlib import Path
from typing import Any, Callable

QUIT, PING = 0x01, 0x0E  # pymysql's COMMAND.COM_QUIT, COM_PING
VERB = re.compile(r"\s*(?:/\*.*?\*/\s*)?(\w+(?:\s+TRANSACTION)?)", re.S | re.I)
NAMED = re.compile(r"\b(?:FROM|INTO|UPDATE|TABLE|JOIN)\s+(?:[`\"]?\w+[`\"]?\.)?[`\"]?([#~\w]+)", re.I)


def kind(sql: Any) -> str:
    """A statement's verb and the kind of table it names first: ``SELECT jobs table``,
    ``INSERT pipeline table``, ``START TRANSACTION``; a ledger or catalog table by name."""
    text = sql.decode(errors="replace") if isinstance(sql, bytes) else str(sql)
    verb = VERB.match(text)
    named = NAMED.search(text)
    table = named.group(1).lower() if named else ""
    if table.startswith("~~"):
        table = "jobs table"
    elif table.startswith(("_", "#")) or re.fullmatch(r"t\d+|source", table):
        table = "pipeline table"
    return " ".join(filter(None, [verb.group(1).upper() if verb else "?", table]))


class Counter:
    """This process's count, mirrored into ``folder/<pid>.count`` (and its statements'
    kinds, in ``folder/<pid>.kinds`` and ``self.kinds``, where asked)."""

    def __init__(self, folder: Path, with_kinds: bool) -> None:
        self.folder = folder
        self.with_kinds = with_kinds
        self.sent = 0
        self.kinds: collections.Counter[str] = collections.Counter()
        self.map: mmap.mmap | None = None
        self.kinds_fd = -1
        self.open()
        os.register_at_fork(after_in_child=self.open)

    def open(self) -> None:
        """Files of this process's own (again after a fork: the parent's count stays the parent's)."""
        fd = os.open(self.folder / f"{os.getpid()}.count", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.ftruncate(fd, 8)
            self.map = mmap.mmap(fd, 8)
        finally:
            os.close(fd)
        if self.with_kinds:
            self.kinds_fd = os.open(self.folder / f"{os.getpid()}.kinds", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.sent = 0
        self.kinds.clear()
        self.add(None)

    def add(self, sql: Any) -> None:
        """One more command (``sql``: its text, where kinds are asked for; None: none sent)."""
        if sql is not None:
            self.sent += 1
            if self.with_kinds:
                what = kind(sql)
                self.kinds[what] += 1
                os.write(self.kinds_fd, what.encode() + b"\n")
        struct.pack_into("q", self.map, 0, self.sent)


def _counted(counter: Counter, method: Callable) -> Callable:
    def counted(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        counter.add(query)
        return method(self, query, *args, **kwargs)

    return counted


def install(folder: Path) -> Counter:
    """Count this process's commands (and its forked children's) from now on. Call it
    before the first connection: psycopg2 connections made earlier are not counted."""
    folder.mkdir(parents=True, exist_ok=True)
    counter = Counter(folder, os.environ.get("DJO_BENCH_KINDS") == "1")
    try:
        import pymysql.connections

        execute = pymysql.connections.Connection._execute_command

        def execute_command(self: Any, command: int, sql: Any) -> Any:
            if command != QUIT:
                counter.add("PING" if command == PING else sql)
            return execute(self, command, sql)

        pymysql.connections.Connection._execute_command = execute_command
    except ImportError:
        pass
    try:
        import psycopg2
        import psycopg2.extensions
    except ImportError:
        return counter
    counting: dict[type, type] = {}

    def counting_cursor(factory: type) -> type:
        if factory not in counting:
            counting[factory] = type(f"Counted{factory.__name__}", (factory,), {
                name: _counted(counter, getattr(factory, name)) for name in ("execute", "executemany", "callproc")})
        return counting[factory]

    class CountingConnection(psycopg2.extensions.connection):
        def cursor(self, *args: Any, cursor_factory: type | None = None, **kwargs: Any) -> Any:
            factory = cursor_factory or self.cursor_factory or psycopg2.extensions.cursor
            return super().cursor(*args, cursor_factory=counting_cursor(factory), **kwargs)

    connect = psycopg2.connect

    def counted_connect(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("connection_factory", CountingConnection)
        return connect(*args, **kwargs)

    psycopg2.connect = counted_connect
    return counter


def total(folder: Path) -> int:
    """Commands sent by every process that counted into ``folder``."""
    return sum(struct.unpack("q", path.read_bytes()[:8])[0] for path in folder.glob("*.count"))


def kinds(folder: Path) -> collections.Counter[str]:
    """The kinds of the commands every process that counted into ``folder`` sent."""
    return collections.Counter(line for path in folder.glob("*.kinds") for line in path.read_text().splitlines())


def main() -> None:
    """``counting.py FOLDER -m MODULE ARGS`` or ``counting.py FOLDER SCRIPT ARGS``: count, then
    run it as ``python`` would (``__main__``, its own ``sys.argv``)."""
    folder, *argv = sys.argv[1:]
    install(Path(folder))
    if argv[0] == "-m":
        sys.argv = [argv[1], *argv[2:]]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        sys.path[0] = str(Path(argv[0]).resolve().parent)
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
