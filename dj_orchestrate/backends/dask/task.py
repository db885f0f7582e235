"""The task that runs on Dask workers: one worker loop as a child process.

Why a subprocess per task, not the make in the Dask worker's thread: a make that holds
the GIL for minutes (numpy, a C extension) would starve the worker's event loop, and the
scheduler would declare the worker dead (``worker-ttl``) and run its tasks again
elsewhere; a child process keeps the loop free. The worker loop also owns its signals
(grace period, release on SIGTERM), which only a main thread can have, and a make that
crashes or is OOM-killed takes only the child with it. The child is tied to its Dask
worker (``PR_SET_PDEATHSIG``): a worker that dies, retires or reaches its ``--lifetime``
sends it SIGTERM, and it releases its claims within ``--grace``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import distributed

from ...work import WorkSpec


def work_task(spec: WorkSpec, env: dict[str, str], log_dir: str, *upstream: Any) -> tuple[int, str]:
    """What one Dask task runs, on a Dask worker: ``dj-orchestrate work`` (``spec``) as a
    child process, logging to a file on the worker's filesystem. Returns the child's exit
    status and log, and never raises, so that downstream tasks start after a failed one too.
    ``upstream``: the earlier levels' results, only there to order the graph."""
    worker = distributed.get_worker()
    key = str(worker.get_current_task())
    job_id = f"dask:{worker.address}/{key}"
    try:
        log_path = _log_path(log_dir, key, os.environ.get("CUDA_VISIBLE_DEVICES"))
        cmd = [sys.executable, "-m", "dj_orchestrate", *spec.replace(log_path=str(log_path), backend_job_id=job_id).to_argv()]
        with open(log_path, "ab") as out:
            out.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} {job_id} on {worker.name}, "
                      f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')}\n".encode())
            out.flush()
            proc = subprocess.Popen(cmd, env={**os.environ, **env, "PYTHONUNBUFFERED": "1"}, stdout=out,
                                    stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
    except OSError as err:  # no log folder, no Python: the worker's own problem, said by --wait
        return 127, f"{worker.address}: could not start the worker: {err}"
    _RUNNING[key] = proc
    try:
        return proc.wait(), f"{worker.address}:{log_path}"
    finally:
        _RUNNING.pop(key, None)


_RUNNING: dict[str, subprocess.Popen] = {}  # task key -> its worker process, in each Dask worker


def stop_run(run_id: str) -> int:
    """Run on every Dask worker (``Client.run``) when the user stops a ``--wait`` run:
    SIGINT to the run's worker processes there, which release their claims and exit
    charging nothing. Returns how many it told."""
    told = 0
    for key, proc in list(_RUNNING.items()):
        if key.startswith(f"djo-{run_id}-") and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            told += 1
    return told


def _log_path(log_dir: str, key: str, cuda: str | None) -> Path:
    """``<log dir>/<task key>[.cuda-<devices>].log``: the GPUs a worker saw are in the path
    recorded with each key's error and ledger row. The client's log folder when the worker
    can write there (a shared filesystem), else the worker's temporary folder."""
    name = key + (f".cuda-{cuda.replace(',', '_')}" if cuda else "") + ".log"
    for folder in (Path(log_dir), Path(os.environ.get("TMPDIR", "/tmp")) / "dj-orchestrate" / Path(log_dir).name):
        with contextlib.suppress(OSError):
            folder.mkdir(parents=True, exist_ok=True)
            if os.access(folder, os.W_OK):
                return folder / name
    raise OSError(f"no writable log folder for {key}")


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the Dask worker's thread that started it
    ends (the worker died, retired or was killed), so no orphan keeps claiming."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
