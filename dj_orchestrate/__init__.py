"""dj-orchestrate: cluster-scale execution of DataJoint pipelines.

Layers, bottom up:
  db        -- which database (DataJoint's own config, or an embedded PostgreSQL)
  pipeline  -- load a pipeline module, find its auto-populated tables in dependency order
  jobs      -- every SQL statement that touches a ``~~table`` jobs table (claim, complete, ...)
  planner   -- missing keys per table and their deterministic shards
  worker    -- the one entry point every backend launches
  ledger    -- dj-orchestrate's own record of runs and shards
  backends  -- launch workers: local processes, SLURM arrays, ...
  cli       -- the ``dj-orchestrate`` command
"""

__version__ = "0.1.0"
