"""What each answer cost: the statements a request ran on the dashboard's connection and
their time, sent as a ``Server-Timing`` header (a browser's network panel shows it;
``bench/bench_dashboard.py`` reads it)."""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

from starlette.requests import Request
from starlette.responses import Response


class Meter:
    """The statements a request ran and their time, counted per thread: work another
    thread does meanwhile is not the request's."""

    def __init__(self) -> None:
        self.local = threading.local()

    def watch(self, conn: Any) -> None:
        """Count what runs on ``conn`` (DataJoint's and ours alike: all go through ``query``)."""
        run = conn.query

        def query(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return run(*args, **kwargs)
            finally:
                tally = getattr(self.local, "tally", None)
                if tally is not None:
                    tally[0] += 1
                    tally[1] += time.perf_counter() - start

        conn.query = query

    def timed(self, handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        """``handler`` answering with ``Server-Timing: app;dur=MS, db;dur=MS;desc="N statements"``."""

        def run(request: Request) -> Response:
            start, self.local.tally = time.perf_counter(), [0, 0.0]
            try:
                response = handler(request)
            finally:
                n, db_time = self.local.tally
                self.local.tally = None
            response.headers["Server-Timing"] = (f"app;dur={1000 * (time.perf_counter() - start):.1f}, "
                                                 f'db;dur={1000 * db_time:.1f};desc="{n} statements"')
            return response

        return run
