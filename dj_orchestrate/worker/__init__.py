"""The one entry point every backend launches (``dj-orchestrate work``).

A worker claims keys in batches, makes each with DataJoint's own ``_populate1`` (one
transaction per key, the three-part make, part tables, job metadata), and reports
back through the jobs table:

* it serves every table it is given at once, with no level barrier: it claims from
  whichever table has ready keys (in the order ``flow`` documents), and enqueues the
  downstream keys of what it made as it marks it done, so a slow upstream key holds
  back its own downstream keys only;
* batches adapt to the time a key takes (about ``batch_seconds`` of work per claim),
  so fast keys cost one claim per many keys and slow keys are never hoarded;
* completions are flushed in batches; a crash before the flush costs nothing, since
  a re-claimed key that is already in the table is only marked done, never re-made;
* SIGTERM/SIGINT/SIGUSR1/SIGUSR2: stop claiming, let the key in flight finish for up
  to ``grace`` seconds (else roll it back), release every unstarted claim, exit. A key
  rolled back because the scheduler stopped the worker (TERM, USR1, USR2: preemption,
  time limit) is charged an attempt, so a key that never fits its time limit ends as
  ``error``; one rolled back for Ctrl-C (INT) is not;
* a lost database connection: reconnect with backoff, release the old connection's
  claims (the key in flight is charged an attempt), carry on;
* a make running past its table's timeout: stopped, rolled back, failed with ``timed out
  after N s`` (see ``watchdog``).
"""

from .identity import record_identity
from .interrupts import STOP_SIGNALS, WorkerInterrupted
from .loop import CLAIM_RETRIES, EMPTY_CLAIM_RETRIES, Worker
from .settings import Settings, Tally

__all__ = ["CLAIM_RETRIES", "EMPTY_CLAIM_RETRIES", "STOP_SIGNALS", "Settings", "Tally", "Worker", "WorkerInterrupted",
           "record_identity"]
