"""Dask: a pipeline's workers as tasks on a Dask cluster, GPU tables on GPU workers.

Dask only launches workers. Each Dask task runs one ``dj-orchestrate work`` loop (a pull
slot) and returns its exit status; it never makes one key per future, so the scheduler
sees as many tasks as there are slots (``pull_workers``, by default one per worker thread
that can run the table), whatever the number of keys. Task keys are deterministic
(``djo-<run>-<tables>-<slot>``), submitted with ``pure=False`` and without Dask
``retries``: attempts and retries come from the jobs table.

Ordering (pipelined, as the local pool): the tables that ask for the same resources
form one group of pull slots, and each slot's worker claims whichever key of its tables is
ready (``flow``), so a key's downstream work starts as soon as that key is made. Only a
change of resource class is a barrier: a table whose upstream asks for other resources
(Session on CPU -> SpikeSorting on GPU -> Units on CPU) starts a new *stage*, whose tasks
take every earlier stage's tasks as Dask dependencies. So a GPU slot never sits on a GPU
worker waiting for CPU work, and a run with no driver (no ``--wait``: ``fire_and_forget``)
still runs stage after stage. Each task enqueues its tables when it starts (``--enqueue``),
so nothing is written before the scheduler holds the whole graph. A table that asks for
``GPU`` gets tasks that carry ``resources={"GPU": 1}``, which Dask runs only on workers that
offer a GPU.

A task's worker dying is Dask's business (it reruns the task elsewhere); the keys the
dead worker held are reconcile's: ``ended_jobs`` asks the scheduler whether a task key
still runs on the worker address in its backend job id (``dask:<address>/<task key>``),
and ``--wait`` reconciles with that hint as it follows the run, then submits new slots
for keys still pending once every task ended (bounded by ``--max-attempts``), so Dask's
``KilledWorker`` never ends a run that has keys left. Without ``--wait`` there is no driver:
Dask's own reruns (``allowed-failures``) are what a dead worker's task gets, and a later
``run`` (or ``reconcile``) picks up what is left.
"""

from __future__ import annotations

from .. import lazy

# imported when first used, so that the settings (the `run` options) need no `distributed`
WHERE = {"DaskBackend": "backend", "CLUSTERS": "settings", "DaskSettings": "settings", "DaskSlurm": "settings",
         "load_config": "settings", "stop_run": "task", "work_task": "task"}

__getattr__ = lazy(__name__, WHERE)
