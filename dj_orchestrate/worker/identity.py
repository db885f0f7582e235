"""A worker's word on what it connected to and imported, checked against its run's."""

from __future__ import annotations

import os
import platform
from typing import Any

from .. import ledger, pipeline
from ..errors import UsageError
from ..pipeline import TableInfo


def record_identity(run_id: str | None, tables: list[TableInfo], module: Any) -> None:
    """Record in the ledger what this worker connected to and imported, before it writes to
    the pipeline's tables; refuse to work (exit 2) when the run's driver imported the
    pipeline against other schemas (an environment variable that names the schema, which
    this worker lacks): it would find nothing to make, or make it in the wrong schema. The
    driver compares too, and stops the run (``backends.base.check_identity``)."""
    if run_id is None or ledger.run_row(run_id) is None:
        return  # no run to compare with (a ledger that is not the driver's: the driver finds nothing made)
    module_file, schemas = pipeline.identity(module)  # the pipeline module, as the driver saw it (not its tables' modules)
    ledger.record_identity(run_id, f"{platform.node()}:{os.getpid()}", tables[0].cls.connection.conn_info,
                           module_file, schemas)
    expected = ledger.run_schemas(run_id)
    if expected is not None and expected != schemas:
        raise UsageError(f"this worker imported {module_file} against schemas {','.join(schemas) or 'none'}, "
                         f"its run {run_id} against {','.join(expected) or 'none'}: nothing made",
                         "give the workers the driver's environment (the variables that name the schemas)")
