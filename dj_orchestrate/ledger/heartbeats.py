"""``serve`` processes' roles and heartbeats (``Server``)."""

from __future__ import annotations

import datetime
import hashlib
from typing import Any

import datajoint as dj

from .schema import _optional, now


def pipeline_key(schemas: list[str]) -> str:
    """What a pipeline's servers share (``Server.pipeline_key``, the name of their leader
    lock): its schemas, wherever its module is."""
    return hashlib.md5(",".join(schemas).encode()).hexdigest()


def _define_servers(schema: Any) -> Any:
    @schema
    class Server(dj.Manual):
        definition = """
        # a `dj-orchestrate serve` process: its role and its heartbeat
        server            : varchar(64)       # host:pid:start (unique per process)
        ---
        pipeline_key      : char(32)          # md5 of the pipeline's schemas: what its leader lock is named after
        pipeline          : varchar(1023)
        host              : varchar(255)
        pid               : int32
        role              : varchar(16)       # leader, standby, lost (a leader found replaced)
        interval_s        : float64
        started           : datetime(3)
        last_beat         : datetime(3)
        """

    return Server


def beat(server: str, **fields: Any) -> None:
    """Insert or refresh a serve process's row."""
    Server = _optional(_define_servers, True)
    row = {"server": server, **fields, "last_beat": now()}
    if Server & {"server": server}:  # (only this process writes its row; DataJoint's replace is MySQL's alone)
        Server.update1(row)
    else:
        Server.insert1(row)


def demote_leaders(pipeline_key: str, me: str) -> None:
    """A new leader holds the lock: any other row that says leader is a leader that lost it."""
    Server = _optional(_define_servers, True)
    for row in ((Server & {"pipeline_key": pipeline_key, "role": "leader"}) - {"server": me}).to_dicts():
        Server.update1({"server": row["server"], "role": "lost"})


def forget_server(server: str) -> None:
    (_optional(_define_servers, True) & {"server": server}).delete_quick()


def servers(key: str, within: datetime.timedelta = datetime.timedelta(days=1)) -> list[dict]:
    """The serve processes of the pipeline with this ``pipeline_key`` that beat within
    ``within``, read only ([]: no such table)."""
    Server = _optional(_define_servers, False)
    if Server is None:
        return []
    since = now() - within
    return (Server & {"pipeline_key": key} & f"last_beat > '{since.isoformat(sep=' ')}'").to_dicts(
        order_by="started")
