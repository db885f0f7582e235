"""What DataJoint's ``_populate1`` is given as ``jobs``: the claimed key's outcome."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ..db import is_lost as _is_lost
from ..flow import Node
from ..jobs import Claim
from ..watchdog import MakeTimedOut
from .interrupts import WorkerInterrupted

if TYPE_CHECKING:
    from .loop import Worker


class JobsHandle:
    """What DataJoint's ``_populate1`` calls ``jobs``: the key is already claimed, so
    ``reserve`` says yes; ``complete`` is buffered; ``error`` is owner-checked, counts
    the attempt, and is not an error at all when the worker was told to stop."""

    def __init__(self, worker: "Worker", node: Node, claim: Claim) -> None:
        self.worker, self.node, self.jt, self.claim = worker, node, node.jt, claim
        self.outcome = "done"
        self.completed = False

    def reserve(self, key: dict) -> bool:
        return True

    def complete(self, key: dict, duration: float | None = None) -> None:
        if not self.completed:  # once: the worker also calls it for a key committed before an interrupt
            self.completed = True
            self.worker._completed.setdefault(self.node, []).append(self.claim)

    def error(self, key: dict, error_message: str, error_stack: str | None = None) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, MakeTimedOut):
            self.outcome = self.jt.fail(self.worker.owner, self.claim, str(exc), error_stack, self.worker.settings.policy)
        elif isinstance(exc, WorkerInterrupted):
            self.outcome = "interrupted"
        elif _is_lost(exc, self.jt.conn):
            self.outcome = "lost"
        else:
            self.outcome = self.jt.fail(self.worker.owner, self.claim, error_message, error_stack, self.worker.settings.policy)
