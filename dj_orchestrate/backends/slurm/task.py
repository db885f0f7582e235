"""What each array task runs, in the task's own Python process."""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import Any

from ...entry import reported
from ...work import WorkSpec, main


class WorkerTask:
    """What each array task runs, in the task's own Python process: a worker
    (``work.main``), its shard the array index.

    Checkpointable: after USR2 the worker has released its claims and returns; the
    task then hands the signal back to submitit, which requeues it. Any other non-zero
    exit (the database unreachable, a bad pipeline) fails the task, so that SLURM and
    ``sacct`` show it as FAILED instead of COMPLETED."""

    def __init__(self, spec: WorkSpec) -> None:
        self.spec = spec

    def __call__(self, shard_index: int) -> int:
        import submitit

        env = submitit.JobEnvironment()
        try:
            with reported():
                code = main(self.spec.replace(shard_index=shard_index, log_path=str(env.paths.stdout)))
        except SystemExit as stop:
            if isinstance(stop.code, str):  # SystemExit("message"): the message is the reason
                print(stop.code, file=sys.stderr, flush=True)
                code = 1
            else:
                code = int(stop.code or 0)
        if code == 128 + signal.SIGUSR2:
            os.kill(os.getpid(), signal.SIGUSR2)  # submitit: checkpoint and requeue (exits)
            time.sleep(5)
        if code:
            raise RuntimeError(f"dj-orchestrate work exited with status {code}; see the lines above")
        return code

    def checkpoint(self, shard_index: int) -> Any:
        import submitit

        return submitit.helpers.DelayedSubmission(self, shard_index)
