"""dj-orchestrate's own records: one row per run, one per shard (or pull worker).

A small DataJoint schema (``DJO_LEDGER_SCHEMA``, default ``dj_orchestrate``) beside the
pipeline's: which backend ran what, where its logs are, what each shard did. The
jobs tables stay the truth about keys; the ledger is the history of launches.
"""

from .heartbeats import beat, demote_leaders, forget_server, pipeline_key, servers
from .identity import record_identity, worker_identities
from .runs import (add_shards, as_json, backend_info, finish_run, new_run, open_runs, pipeline_id, recent_runs,
                   record_shard, run_row, run_schemas, set_backend_info, shard, shards_of)
from .schema import LEDGER_SCHEMA_ENV, now, tables
from .stats import key_failures, make_minutes, make_stats

__all__ = ["LEDGER_SCHEMA_ENV", "add_shards", "as_json", "backend_info", "beat", "demote_leaders", "finish_run",
           "forget_server", "key_failures", "make_minutes", "make_stats", "new_run", "now", "open_runs", "pipeline_id",
           "pipeline_key", "recent_runs", "record_identity", "record_shard", "run_row", "run_schemas", "servers",
           "set_backend_info", "shard", "shards_of", "tables", "worker_identities"]
