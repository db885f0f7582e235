"""Routes: which backend makes each selected table (``[run.tables.X] backend``), and the
``[serve]`` settings."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .. import backends
from ..config import BackendConfig, Settings
from ..errors import UsageError
from ..pipeline import TableInfo


@dataclass(frozen=True)
class RouteSettings(Settings, section="run"):
    """``[run]``: which backend makes a table (``[run.tables.X] backend = "slurm"``)."""

    label = "[run] setting"
    backend: str = "local"

    def parsed(self, where: str) -> "RouteSettings":
        if self.backend not in backends.BACKENDS:
            raise UsageError(f"backend {self.backend!r} in {where} is not a backend",
                             f"valid backends: {', '.join(backends.BACKENDS)}")
        return self


@dataclass(frozen=True)
class ServeSettings(Settings, section="serve"):
    """``[serve]``: the defaults of ``serve``'s own options."""

    label = "[serve] setting"
    interval: float = 60.0
    max_idle: float | None = None


@dataclass
class Route:
    """The selected tables one backend makes."""

    backend: str
    tables: list[TableInfo]

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tables]

    def __str__(self) -> str:
        return f"{self.backend} ({', '.join(self.names)})"


def routes(infos: list[TableInfo], default: str | None, config_path: str | None) -> list[Route]:
    """Each table to its backend: ``[run.tables.X] backend`` (or the class's ``run =
    {"backend": ...}``), else ``default`` (``--backend``), else ``[run] backend``, else
    local. In the tables' order, one route per backend."""
    config = BackendConfig.load(RouteSettings, config_path)
    if default is not None:
        backends.get(default)  # an unknown name or a missing extra, said before anything runs
        config = dataclasses.replace(config, defaults=RouteSettings(backend=default))
    by_backend: dict[str, list[TableInfo]] = {}
    for info in infos:
        by_backend.setdefault(config.for_table(info).backend, []).append(info)
    for name in by_backend:
        backends.get(name)
    return [Route(name, tables) for name, tables in by_backend.items()]


def serve_settings(config_path: str | None) -> ServeSettings:
    return BackendConfig.load(ServeSettings, config_path).defaults
