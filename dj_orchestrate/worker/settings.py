"""How one worker behaves (``Settings``: the CLI exposes each field as a flag), and what it
did (``Tally``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..jobs import Policy


@dataclass
class Settings:
    """How one worker behaves; the CLI exposes each field as a flag."""

    max_batch: int = 200
    order: str = "upstream"  # which ready table a claim tries first: see ``flow``
    # Work one claim takes. It bounds the tail: when the queue runs dry, a worker may still
    # hold this much unstarted work while the others idle, and a slow key at the end of a
    # batch starts that much late (bench/bench_pipeline.py, straggler last: 0.5 gave 1.35-1.40x
    # the lower bound, 0.2 gives 1.23-1.25x, what claiming in key order allows). Keys faster
    # than batch_seconds / max_batch (1 ms) are claimed max_batch at a time either way; slower
    # keys cost at most five claims a second per worker (one claim is a few ms of database time).
    # Each batch costs a claim, an enqueue of each table it feeds and a completion: on a
    # 60-table tree of trivial makes, 1,434 such statements for 12,000 keys at a cap of 50 keys,
    # 887 at 200 (bench/bench_wide.py, issue #19).
    batch_seconds: float = 0.2
    flush_seconds: float = 1.0
    grace: float = 5.0
    policy: Policy = field(default_factory=Policy)
    reconnect_seconds: float = 60.0
    backend_job_id: str = ""
    log_path: str = ""
    make_kwargs: dict | None = None
    timeout: dict[str, float] = field(default_factory=dict)  # seconds a make may take, per table ("": the others)

    def timeout_of(self, table: str) -> float | None:
        return self.timeout.get(table, self.timeout.get(""))


@dataclass
class Tally:
    done: int = 0
    failed: int = 0
    stop_signal: int | None = None
