"""What is missing, per table, and how it splits into deterministic shards.

Planning only reads: it never declares a jobs table or writes a row.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import UsageError
from .jobs import JobTable, Restriction
from .pipeline import TableInfo

DEFAULT_SHARD_SIZE = 1000


@dataclass
class TablePlan:
    """One table's counts and shard boundaries (``starts``: first key of each shard)."""

    table: str
    level: int
    total: int
    done: int
    missing: int
    pending: int
    reserved: int
    error: int
    ignore: int
    shard_size: int
    starts: list[tuple] = field(default_factory=list, repr=False)

    @property
    def shards(self) -> int:
        return len(self.starts)

    def shard_bounds(self, index: int) -> tuple[tuple | None, tuple | None]:
        """Shard ``index`` covers ``[starts[index], starts[index + 1])``."""
        lo = self.starts[index]
        hi = self.starts[index + 1] if index + 1 < len(self.starts) else None
        return lo, hi

    def as_json(self) -> dict[str, Any]:
        out = {k: v for k, v in asdict(self).items() if k != "starts"}
        out["shards"] = self.shards
        return out


def shard_size(missing: int, size: int | None, shards: int | None) -> int:
    """``--shard-size`` wins; ``--shards N`` means N roughly equal shards."""
    if size is not None and shards is not None:
        raise UsageError("--shard-size and --shards are exclusive", "give one of them")
    if size is not None:
        if size < 1:
            raise UsageError(f"--shard-size must be at least 1, got {size}", "e.g. --shard-size 500")
        return size
    if shards is not None:
        if shards < 1:
            raise UsageError(f"--shards must be at least 1, got {shards}", "e.g. --shards 100")
        return max(1, math.ceil(missing / shards))
    return DEFAULT_SHARD_SIZE


def plan_table(info: TableInfo, restriction: Restriction, size: int | None = None, shards: int | None = None,
               jt: JobTable | None = None, counts: dict[str, int] | None = None) -> TablePlan:
    """``jt``, ``counts``: the table's JobTable and its counts, where the caller has them
    (the dashboard plans on its own connection, every table's counts read at once)."""
    jt = jt or JobTable(info.instance())
    counts = counts if counts is not None else jt.counts(restriction)
    step = shard_size(counts["missing"], size, shards)
    starts = jt.shard_starts(restriction, step) if counts["missing"] and jt.supported else []
    return TablePlan(
        table=info.name,
        level=info.level,
        total=counts["total"],
        done=counts["done"],
        missing=counts["missing"],
        pending=counts["pending"],
        reserved=counts["reserved"],
        error=counts["error"],
        ignore=counts["ignore"],
        shard_size=step,
        starts=starts,
    )


def encode_bound(bound: tuple | None) -> str:
    """Shard bounds travel through the ledger and command lines as JSON."""
    return json.dumps(None if bound is None else [_plain(v) for v in bound])


def decode_bound(text: str | None) -> tuple | None:
    value = json.loads(text) if text else None
    return None if value is None else tuple(value)


def _plain(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        import uuid

        return str(uuid.UUID(bytes=bytes(value)))
    if isinstance(value, (int, float, str)) or value is None:
        return value
    return str(value)
