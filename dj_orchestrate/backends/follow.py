"""Following a submitted run (``--wait``) until it ended, for every scheduler: the one
loop that shows progress, outlives a database restart and a silent scheduler, releases
the keys of workers that ended, stops a run whose workers see other schemas, submits
again the levels that still have work, and turns all that into an exit code.

A backend only answers ``poll`` (what runs), ``wait_for_change`` and ``ended_now`` (which
job ids ended); see ``base.Backend``. The jobs tables are the truth throughout."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from tqdm import tqdm

from ..db import retrying
from ..errors import UsageError
from ..flow import waiting
from ..jobs import JobTable, Restriction, jobs_of, reconcile_all, reserved_backend_ids_of, status_counts_of
from ..pipeline import TableInfo, identity, levels_of

if TYPE_CHECKING:
    from .base import Backend, RunRequest

T = TypeVar("T")
DB_PATIENCE = 300.0  # seconds --wait waits for a database that restarts (the workers do not need us)
SILENCE_LIMIT = 600.0  # seconds a scheduler may not answer before --wait gives up (its workers may still run)
SILENCE_RETRY = 5.0  # seconds between questions to a silent scheduler


@dataclass
class Poll:
    """What the scheduler says of a submission now."""

    running: int | None  # its tasks (pods) queued or running, as shown; None: no answer
    ended: bool = False  # every task of the submission ended
    stuck: tuple[str, str] | None = None  # some task will never start: why, and the fix (ends the wait, exit 2)


class Follower:
    """``--wait`` for one run on one backend: rounds of follow, reconcile, submit again."""

    def __init__(self, backend: Backend, request: RunRequest) -> None:
        self.backend, self.request = backend, request
        self.conn = request.tables[0].cls.connection
        self.who = f"{backend.name} --wait"

    def db(self, action: Callable[[], T]) -> T:
        """The driver's bookkeeping outlives a database restart (the workers do not need
        this process): retried on a new connection for DB_PATIENCE seconds."""
        return retrying(self.conn, action, self.who, DB_PATIENCE)

    def follow(self, submission: Any, errors_before: int) -> int:
        """Until every task ended, round after round (at most ``max_attempts + 1`` where the
        backend submits again): 0 ok, 1 keys failed or were given up, 130 interrupted."""
        request, backend = self.request, self.backend
        failed = False
        rounds = request.worker.policy.max_attempts + 1 if backend.resubmits else 1
        for round_ in range(rounds):
            try:
                self.round(submission)
            except KeyboardInterrupt:
                return backend.interrupt(submission)
            if backend.stopping:
                return backend.interrupt(submission)
            self.check_identity(submission)
            failed |= backend.failed(submission)
            todo = self.db(lambda: rerun_levels(request, backend.ended_now))
            if not todo or round_ + 1 == rounds:
                break
            submission = backend.submit(request, todo, first=False)
        gave_up = self.db(lambda: error_count(request.tables)) > errors_before  # keys whose workers died until max_attempts
        return 1 if failed or gave_up else self.db(lambda: outcome(request.run_id))

    def round(self, submission: Any) -> None:
        """Progress from the jobs tables until the scheduler says every task ended;
        on the way the keys of ended workers are released (``reconcile_every``)."""
        backend, request = self.backend, self.request
        tables = jobs_of(request.tables)
        silent_since = None
        next_look = next_reconcile = time.monotonic()
        with tqdm(desc=backend.name, unit="key", disable=not request.progress or None) as bar:
            while not backend.stopping:
                poll = backend.poll(submission)
                if poll.running is None:  # no answer is not "all ended": ask again, for a while
                    silent_since = silent_since or time.monotonic()
                    if time.monotonic() - silent_since > SILENCE_LIMIT:
                        raise UsageError(f"{backend.scheduler} has not answered for 10 minutes; {backend.runs_on} may still run",
                                         "check the cluster; `dj-orchestrate status` shows the keys")
                    time.sleep(SILENCE_RETRY)
                    continue
                silent_since = None
                if poll.stuck:
                    raise UsageError(*poll.stuck)
                if time.monotonic() >= next_look or poll.ended:
                    next_look = time.monotonic() + backend.look_every
                    if request.progress:
                        counts = self.db(lambda: status_counts_of(tables))
                        bar.set_postfix_str(f"pending={sum(c['pending'] for c in counts)} "
                                            f"reserved={sum(c['reserved'] for c in counts)} {backend.shown_as}={poll.running}")
                        bar.refresh()
                    self.check_identity(submission)
                if poll.ended:
                    return
                if backend.reconcile_every is not None and time.monotonic() >= next_reconcile:
                    next_reconcile = time.monotonic() + backend.reconcile_every
                    self.db(lambda: release_ended(request, tables, backend.ended_now))
                backend.wait_for_change(submission, backend.poll_every)

    def check_identity(self, submission: Any) -> None:
        """Workers against other schemas stop the run: its tasks are cancelled."""
        try:
            self.db(lambda: check_identity(self.request.run_id, self.request.tables, self.backend.fix_identity))
        except Mismatch:
            self.backend.cancel(submission)
            raise


def ended_holders(tables: list[JobTable], ended_jobs: Callable[[set[str]], set[str]]) -> set[str]:
    """The backend job ids that hold keys of these tables and, as the backend's hint
    ``ended_jobs`` says, have ended (it is asked only when some key is held)."""
    reserved = reserved_backend_ids_of(tables)
    return ended_jobs(reserved) if reserved else set()


def release_ended(request: RunRequest, tables: list[JobTable], ended_now: Callable[[set[str]], set[str]]) -> None:
    """Reconcile, while the run goes on, when the backend says some workers that hold
    keys have ended (a dead worker's keys go back to pending now, not after the round)."""
    ended = ended_holders(tables, ended_now)
    if ended:
        reconcile_all([t.instance() for t in request.tables], request.worker.policy, ended)


def outcome(run_id: str) -> int:
    """1 when any worker of the run recorded a failed key, else 0."""
    from .. import ledger

    return 1 if any(s["keys_failed"] for s in ledger.shards_of(run_id)) else 0


def error_count(tables: list[TableInfo]) -> int:
    """Keys in ``error``: compared before and after a run, the keys that a run gave up on
    because their workers died (no worker records those as failed)."""
    return sum(c["error"] for c in status_counts_of(jobs_of(tables)))


def ready_keys(tables: list[TableInfo]) -> int:
    """Keys that a worker could claim right now."""
    return sum(c["ready"] for c in status_counts_of(jobs_of(tables)))


def has_work(level: list[TableInfo], restriction: Restriction) -> bool:
    """Keys to claim now, or keys never enqueued: a downstream table whose pull workers
    ran before its upstream keys were made (they were made in a later round)."""
    if ready_keys(level):
        return True
    return any((c := JobTable(t.instance()).counts(restriction))["missing"] > c["pending"] for t in level)


class Mismatch(UsageError):
    """The run's workers imported the pipeline against other schemas than its driver."""


def check_identity(run_id: str, tables: list[TableInfo], fix: str) -> None:
    """Stop (``Mismatch``, exit 2) a run whose workers imported the pipeline against other
    schemas than this driver did: a variable that names the schema, missing from the
    workers' environment, sends them to a schema where they find nothing to make (they
    refuse to work, see ``worker.record_identity``; this says why, at once). Only the
    schemas are compared: the module's path and the database's address may differ and be
    the same (another host's mount, a service name in a pod); they are named, to help."""
    from .. import ledger

    schemas = ",".join(identity(sys.modules[tables[0].cls.__module__])[1])
    wrong = next((w for w in ledger.worker_identities(run_id) if w["schemas"] != schemas), None)
    if wrong is not None:
        mine = tables[0].cls.connection.conn_info
        raise Mismatch(f"run {run_id}: worker {wrong['worker']} imported {wrong['module_file']} against schemas "
                       f"{wrong['schemas'] or 'none'} ({wrong['db_user']}@{wrong['db_host']}:{wrong['db_port']}), "
                       f"this run against {schemas} ({mine['user']}@{mine['host']}:{mine['port']}); stopped", fix)


def left_message(run_id: str, left: dict[str, int], tables: list[TableInfo]) -> str:
    """Why keys are left: some wait for a retry after their backoff (``--retries``), the
    rest no worker claimed (they saw another database or schema, or none could start)."""
    later = sum(c["pending"] - c["ready"] for c in status_counts_of(jobs_of([t for t in tables if t.name in left])))
    why = (f"{later} wait for a retry after their --backoff; run again once it has passed" if later
           else "its workers ended and none claimed them; see the workers' logs")
    return f"run {run_id}: {sum(left.values())} keys left ({', '.join(f'{t} {n}' for t, n in left.items())}): {why}"


def reconcile_run(request: RunRequest, ended_jobs: Callable[[set[str]], set[str]]) -> None:
    """Reconcile the run's tables; ``ended_jobs`` is the backend's hint, asked only about
    the jobs that still hold keys."""
    reconcile_all([t.instance() for t in request.tables], request.worker.policy,
                  ended_holders(jobs_of(request.tables), ended_jobs))


def rerun_levels(request: RunRequest, ended_jobs: Callable[[set[str]], set[str]]) -> list[list[TableInfo]]:
    """After a round of workers ended: reconcile (``reconcile_run``); then the levels to
    run again: the first that has work left and every level after it (its new rows are
    the downstream's new keys). None when nothing can make progress (``flow.waiting``)."""
    reconcile_run(request, ended_jobs)
    if waiting(request.tables, request.restriction):  # keys are left that no worker can reach: another round cannot help
        return []
    levels = levels_of(request.tables)
    first = next((i for i, level in enumerate(levels) if has_work(level, request.restriction)), None)
    return [] if first is None else levels[first:]
