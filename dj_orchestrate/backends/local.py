"""Local processes: the selected tables level by level, N ``dj-orchestrate work``
processes per level, a progress bar from the jobs tables."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any, Callable, TypeVar

from tqdm import tqdm

from ..db import retrying
from ..jobs import JobTable, reconcile_all
from ..pipeline import TableInfo, levels_of
from .base import Backend, RunRequest, outcome, ready_keys, worker_command

T = TypeVar("T")


class LocalBackend(Backend):
    name = "local"

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen] = []
        self.job_ids: dict[subprocess.Popen, str] = {}  # the backend job id each worker records
        self.stopping = False
        self.stop_signal = signal.SIGTERM

    def _stop(self, signum: int, frame: Any) -> None:
        """Forward the signal as it came (the workers charge the key they roll back for a
        scheduler's SIGTERM, not for Ctrl-C): they release their claims and exit within seconds."""
        self.stopping = True
        self.stop_signal = signum
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signum)

    def _db(self, request: RunRequest, action: Callable[[], T]) -> T:
        """The driver's bookkeeping survives a database restart: its workers back off and
        carry on, so the driver reconnects too instead of leaving them unattended."""
        return retrying(request.tables[0].cls.connection, action, "run", request.worker.reconnect_seconds)

    def run(self, request: RunRequest) -> int:
        previous = {s: signal.signal(s, self._stop) for s in (signal.SIGTERM, signal.SIGINT)}
        next_index = 0
        try:
            for level in levels_of(request.tables):
                for t in level:
                    self._db(request, lambda t=t: JobTable(t.instance()).enqueue(request.restriction))
                # A worker that dies leaves its keys reserved; reconcile and relaunch,
                # at most max_attempts times (a crash-looping key then ends as error).
                for _round in range(request.worker.policy.max_attempts + 1):
                    ready = self._db(request, lambda level=level: ready_keys(level))
                    if self.stopping or not ready:
                        break
                    n = max(1, min(request.workers, ready))
                    self._launch(request, level, range(next_index, next_index + n))
                    next_index += n
                    self._follow(request, level)
                    # every worker of the round has exited: what they still hold is released
                    # now, not once the server has noticed their sessions are gone
                    ended = {self.job_ids[p] for p in self.current}
                    self._db(request, lambda level=level: reconcile_all([t.instance() for t in level],
                                                                        request.worker.policy, ended))
                if self.stopping:
                    break
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if self.stopping:
            return 130
        crashed = any(p.returncode not in (0, None) for p in self.procs)
        return 1 if crashed else outcome(request.run_id)

    def _launch(self, request: RunRequest, level: list[TableInfo], indices: range) -> None:
        env = {**os.environ, **request.target.worker_env(), "PYTHONUNBUFFERED": "1",
               "PYTHONPATH": os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")]))}
        request.log_dir.mkdir(parents=True, exist_ok=True)
        self.current = []
        for i in indices:
            if self.stopping:  # stopped while launching: start no more
                break
            log_path = request.log_dir / f"worker-{i}.log"
            job_id = f"local-{request.run_id.rsplit('-', 1)[-1]}-{i}"
            cmd = worker_command(request, level, shard_index=i) + ["--log-path", str(log_path), "--backend-job-id", job_id]
            with open(log_path, "ab") as out:
                proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
            self.procs.append(proc)
            self.job_ids[proc] = job_id
            self.current.append(proc)
            if self.stopping:  # the signal came before this worker was in self.procs
                proc.send_signal(self.stop_signal)

    def _follow(self, request: RunRequest, level: list[TableInfo]) -> None:
        tables = [JobTable(t.instance()) for t in level]

        def remaining() -> int:
            return self._db(request, lambda: sum(c["pending"] + c["reserved"]
                                                 for c in (jt.status_counts() for jt in tables)))

        total = remaining()
        names = ", ".join(t.name for t in level)
        with tqdm(total=total, desc=names, unit="key", disable=not request.progress or None, leave=True) as bar:
            while any(p.poll() is None for p in self.current):
                time.sleep(0.5)
                bar.update(max(0, total - remaining()) - bar.n)
            bar.update(max(0, total - remaining()) - bar.n)
