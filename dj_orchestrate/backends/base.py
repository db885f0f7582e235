"""What every backend shares: the run request, what each worker is told, and the
interface a backend implements: ``Backend`` for any, ``SchedulerBackend`` for one whose
run the base owns (submit, follow, exit code) and that only translates a plan into its
scheduler's terms (``submit``, ``poll``, ``cancel``).

The launch plan is ``plan``, the following of a run ``follow``; config loading and
per-table settings live in ``dj_orchestrate.config``."""

from __future__ import annotations

import contextlib
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Iterator

from .. import ledger
from ..db import Target
from ..errors import UsageError
from ..jobs import Restriction
from ..pipeline import TableInfo, levels_of
from ..work import WorkSpec
from ..worker import Settings
from .follow import Follower, Poll, error_count


@dataclass
class RunRequest:
    """Everything a backend needs to launch workers for one run."""

    pipeline: str
    tables: list[TableInfo]
    restriction: Restriction
    target: Target
    worker: Settings
    run_id: str
    log_dir: Path
    workers: int = 4
    shard_size: int | None = None
    shards: int | None = None
    wait: bool = True
    progress: bool = True
    key_json: str | None = None  # the --key restriction, for workers that enqueue


SUBMITTED = 3  # run() returned without waiting: the CLI exits 0 and says "submitted"


class Backend(ABC):
    """Launches workers for a run and reports how it ended (an exit code).

    ``ended_jobs`` answers, for reconcile, which of the given backend job ids (those this
    backend made: ``<name>:…``, see ``backends.maker``) are no longer running: a hint on
    top of the jobs table, never a replacement for it."""

    name: ClassVar[str]  # its name in the registry (``backends.BACKENDS``), its config section's

    @classmethod
    def create(cls, config_path: str | None = None, **options: Any) -> "Backend":
        """The backend for ``run``: its config section and the options given for it. An
        option meant for another backend is a mistake, not something to ignore."""
        from . import settings  # (the registry, which imports this module)

        given = {k: v for k, v in options.items() if v is not None}
        stray = sorted(set(given) - {f.name for f in settings(cls.name).flags()})
        if stray:
            raise UsageError(f"--{stray[0].replace('_', '-')} is not an option of --backend {cls.name}",
                             "leave it out, or pick the backend it belongs to (see `dj-orchestrate run --help`)")
        return cls.from_config(config_path, **given)

    @classmethod
    def from_config(cls, path: str | None = None, **options: Any) -> "Backend":
        return cls()

    def default_wait(self) -> bool:
        """Whether ``run`` follows the run when neither --wait nor --no-wait is given:
        yes where the workers live only as long as this command (the local backend, a
        Dask cluster started for the run)."""
        return False

    def check(self, tables: list[TableInfo], embedded: bool = False, wait: bool = False) -> None:
        """Refuse, before anything is written, a run this backend cannot do."""
        self.verify(tables, embedded, wait)
        self.checked = True

    def verify(self, tables: list[TableInfo], embedded: bool, wait: bool) -> None:
        """The backend's own refusals (``check``): its scheduler answers, its settings hold."""

    @abstractmethod
    def run(self, request: RunRequest) -> int:
        """Launch (and, with ``request.wait``, follow) the run: 0 ok, 1 keys failed,
        130 interrupted, SUBMITTED when it returned without waiting."""

    def describe(self, run: dict) -> str:
        """What the scheduler says about a run, for ``status`` (a hint, not the truth)."""
        return ""

    def run_ended(self, run: dict) -> bool | None:
        """Whether every worker of a submitted run (its ledger row) has ended, as the
        scheduler says: what a waiter asks when keys are left and nobody holds them
        (then nobody will make them). None: no answer, ask again later."""
        return None

    def resume(self, run: dict) -> list[str] | None:
        """The ``dj-orchestrate`` arguments that take up a run whose driver is gone, where
        its workers cannot finish without one (None: they finish by themselves)."""
        return None

    @classmethod
    def ended_jobs(cls, job_ids: set[str]) -> set[str]:
        return set()


def work_spec(request: RunRequest, tables: list[TableInfo], shard_index: int | None = None,
              fixed_shard: bool = False, enqueue: bool = False) -> WorkSpec:
    """What every backend tells each of its workers (``work.WorkSpec``): a process it
    starts gets ``to_argv()`` behind its own ``dj-orchestrate`` (this Python's module, or
    the image's entry point). ``enqueue``: a pull worker started after its upstream,
    which enqueues its tables' missing keys (within ``--key``) first."""
    return WorkSpec(request.pipeline, tuple(t.name for t in tables), request.worker, key_json=request.key_json,
                    run_id=request.run_id or None,  # (none in rendered manifests)
                    shard_index=shard_index, fixed_shard=fixed_shard, enqueue=enqueue)


@dataclass
class Submission:
    """What a backend submitted in one round; a backend adds its scheduler's objects."""

    info: str  # for the ledger: what status, reconcile and run_ended read later
    summary: str  # the line on stderr ("submitted 2 array job(s): ...")


class SchedulerBackend(Backend):
    """A backend whose workers a scheduler starts: the base owns the run (``run``: check
    once, submit, mark a refused run rejected, record, follow, exit code; see
    ``follow.Follower``) and the backend translates. It writes ``submit``, ``poll`` and
    ``cancel``; the rest has a default, and the class attributes tell the follower how
    to treat this scheduler."""

    resubmits: ClassVar[bool] = True  # after a round, submit again the levels with work left (rerun_levels)
    poll_every: ClassVar[float] = 2.0  # seconds between polls: the longest wait_for_change waits
    look_every: ClassVar[float] = 0.0  # seconds between progress and identity looks (0: at every poll)
    reconcile_every: ClassVar[float | None] = None  # seconds between releases of ended workers' keys in a round
    scheduler: ClassVar[str] = "the scheduler"  # who answers poll, named when it falls silent
    runs_on: ClassVar[str] = "the run's workers"  # what may still run then
    shown_as: ClassVar[str] = "tasks"  # what poll's running counts, on the progress bar
    fix_identity: ClassVar[str] = "give the workers the variables that name the pipeline's schemas"
    workers_are: ClassVar[str] = "its workers"  # who could not reach an embedded database
    reaches_embedded: ClassVar[bool] = True  # workers can reach a database on this machine (while it runs)
    stopping = False  # a signal asked the run to stop (``interrupt`` at the next look)

    def run(self, request: RunRequest) -> int:
        if not getattr(self, "checked", False):
            self.check(request.tables, bool(request.target.embedded), request.wait)
        follower = Follower(self, request)
        errors_before = follower.db(lambda: error_count(request.tables)) if request.wait else 0
        try:
            submission = self.submit(request, levels_of(request.tables), first=True)
            follower.db(lambda: ledger.set_backend_info(request.run_id, submission.info))
        except BaseException:
            with contextlib.suppress(Exception):  # the reason to report is the one above
                ledger.finish_run(request.run_id, "rejected")
            self.close()
            raise
        print(submission.summary, file=sys.stderr)
        try:
            if not request.wait:
                self.detach(submission)
                return SUBMITTED
            with self.following():
                return follower.follow(submission, errors_before)
        finally:
            self.close()

    def refuse_embedded(self, embedded: bool, wait: bool) -> None:
        """An embedded database lives on this machine, as long as this command: workers
        elsewhere cannot reach it, those that outlive the command could not either."""
        if not embedded:
            return
        if not self.reaches_embedded:
            raise UsageError(f"the embedded database runs on this machine, so {self.workers_are} could not reach it",
                             "configure a database server the cluster can reach (its credentials in a Secret: --secret)")
        if not wait:
            raise UsageError(f"the embedded database stops when this command exits, so {self.workers_are} could not reach it",
                             "use --wait, or configure a database server (DJ_HOST/DJ_USER/DJ_PASS)")

    @abstractmethod
    def submit(self, request: RunRequest, levels: list[list[TableInfo]], first: bool) -> Submission:
        """Launch these levels' workers (``first``: the run's first round, whose first level
        gets fixed shards). All or nothing: what a refused submit made is cancelled, and
        the refusal raised (``UsageError`` in the scheduler's words)."""

    @abstractmethod
    def poll(self, submission: Submission) -> Poll:
        """What the scheduler says of the submission's tasks now."""

    @abstractmethod
    def cancel(self, submission: Submission) -> None:
        """Stop every task of the submission (their workers release their keys)."""

    def wait_for_change(self, submission: Submission, timeout: float) -> None:
        """Return when the submission may have changed, at the latest after ``timeout``."""
        time.sleep(timeout)

    def ended_now(self, job_ids: set[str]) -> set[str]:
        """Which of these backend job ids have ended, for the run being followed."""
        return self.ended_jobs(job_ids)

    def failed(self, submission: Submission) -> bool:
        """After a round: whether a worker exited abnormally (said on stderr): the run fails."""
        return False

    def interrupt(self, submission: Submission) -> int:
        """Ctrl-C (or ``stopping``) while following: by default the tasks run on without us."""
        raise KeyboardInterrupt

    def detach(self, submission: Submission) -> None:
        """``--no-wait``: leave the submission to the scheduler."""

    @contextlib.contextmanager
    def following(self) -> Iterator[None]:
        """Around the follow (e.g. signal handlers)."""
        yield

    def close(self) -> None:
        """Release what this process holds for the run (a client, a cluster it started)."""
