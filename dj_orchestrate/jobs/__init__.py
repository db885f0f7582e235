"""Every statement that touches a DataJoint ``~~table`` jobs table lives here.

The jobs tables stay DataJoint's own, so ``Table.populate(reserve_jobs=True)`` and
``Table.jobs.errors`` keep working beside dj-orchestrate. What DataJoint lacks for
clusters is added here:

* enqueue is one ``INSERT ... SELECT`` per table, not one round trip per key;
* claims are batched: ``SELECT ... FOR UPDATE SKIP LOCKED`` and a conditional UPDATE in
  one short READ COMMITTED transaction (one statement on PostgreSQL);
* complete, error and release only touch rows still reserved by their owner
  (host, pid and the database connection id, as DataJoint itself records them);
* three columns are added to each jobs table: ``attempts`` (failed attempts: errors
  and dead workers), ``backend_job_id`` and ``log_path``;
* reconcile releases keys whose owner's connection is gone (or whose backend job
  ended), charging an attempt only to the key the owner was making.

Keys travel as the raw values the database returned and are always bound as
parameters (``sql``). The SQL that differs between MariaDB/MySQL and PostgreSQL is in ``dialect``.
"""

from .claims import activity_of
from .declare import ensure_all
from .model import EXTRA_COLUMNS, NOW, RECONCILED, STATUSES, Claim, Owner, Policy, Restriction, truncate
from .reconcile import LiveConnections, reserved_backend_ids_of
from .reports import counts_of, status_counts_of
from .sql import custom_key_source, key_source_of
from .table import JobTable, jobs_of, reconcile_all

__all__ = ["EXTRA_COLUMNS", "NOW", "RECONCILED", "STATUSES", "Claim", "JobTable", "LiveConnections", "Owner",
           "Policy", "Restriction", "activity_of", "counts_of", "custom_key_source", "ensure_all", "key_source_of",
           "reconcile_all", "reserved_backend_ids_of", "status_counts_of", "truncate"]
