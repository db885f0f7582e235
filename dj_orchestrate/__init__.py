"""dj-orchestrate: cluster-scale execution of DataJoint pipelines.

Layers, bottom up (``[tool.importlinter]`` in pyproject.toml; ``lint-imports`` checks them):
  errors, db, config -- what is wrong; which database; the config file
  jobs      -- every SQL statement that touches a ``~~table`` jobs table (claim, complete, ...)
  pipeline, ledger -- load a pipeline; dj-orchestrate's own record of runs and shards
  flow, planner, watchdog, serial, durations, queries -- what workers and readers build on
  worker    -- the worker loop
  options, entry -- the options commands share; open the pipeline, errors as one line
  work      -- what a worker is told (``WorkSpec``) and its one entry point, ``main``
  backends  -- launch workers: local processes, SLURM arrays, Dask, Kubernetes, Airflow
  reports   -- what status, errors and plan print (and the dashboard's API)
  serve, dashboard -- always-on population; the web dashboard
  runs      -- what ``run``, ``demo`` and ``serve`` share
  cli       -- the ``dj-orchestrate`` command
"""

__version__ = "0.1.0"
