"""Load a pipeline: an importable module path (``my_lab.pipeline``) or a path to a ``.py``
file; an error while importing it is one line naming it. And what identifies it."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import traceback
from pathlib import Path
from types import ModuleType

from ..errors import UsageError


def resolve_spec(spec: str) -> str:
    """The spec a worker on another host or cwd can load: absolute path for files."""
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        return str(path.resolve())
    return spec


def check_spec(spec: str) -> None:
    """Reject a pipeline that cannot exist before anything connects or writes."""
    path = Path(spec)
    if path.is_dir() and (os.sep in spec or not (path / "__init__.py").is_file()):  # (a package is a module)
        raise UsageError(
            f"pipeline {spec} is a directory, not a .py file",
            "pass the pipeline's .py file, or its module name (e.g. my_lab.pipeline) from the directory above",
        )
    if spec.endswith(".py") or os.sep in spec:
        if not path.is_file():
            raise UsageError(
                f"pipeline file not found: {spec}",
                "pass a path to an existing .py file or an importable module (e.g. my_lab.pipeline)",
            )
        return
    if not all(part.isidentifier() for part in spec.split(".")):
        raise UsageError(
            f"not a module path or .py file: {spec!r}",
            "pass an importable module (e.g. my_lab.pipeline) or a path to a .py file",
        )


def load(spec: str) -> ModuleType:
    """Import the pipeline (this declares its schemas, as DataJoint always does). An error
    while importing it is the user's to fix: one line naming it, not our traceback."""
    check_spec(spec)
    try:
        return _import(spec)
    except UsageError:
        raise
    except Exception as err:
        raise UsageError(f"cannot load pipeline {spec}: {_describe(err)}",
                         "fix the error in the pipeline (dj-orchestrate --debug ... shows the traceback)") from err


def _describe(err: BaseException) -> str:
    """The exception and where in the user's code it happened, in one line."""
    if isinstance(err, SyntaxError):
        return f"SyntaxError: {err.msg} ({err.filename}, line {err.lineno})"
    where = traceback.extract_tb(err.__traceback__)
    place = f" ({where[-1].filename}, line {where[-1].lineno})" if where else ""
    text = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}{': ' + text if text else ''}{place}"


def _import(spec: str) -> ModuleType:
    path = Path(spec)
    if spec.endswith(".py") or path.is_file():
        path = path.resolve()
        sys.path.insert(0, str(path.parent))
        name = path.stem
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path):
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        try:
            module_spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(name, None)
            raise
        return module
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as err:
        if err.name and spec.startswith(err.name):
            raise UsageError(
                f"cannot import pipeline {spec!r}: no module named {err.name!r}",
                "run from the directory that contains it, set PYTHONPATH, or pass a path to a .py file",
            ) from None
        raise


def identity(module: ModuleType) -> tuple[str, list[str]]:
    """What makes two runs runs of the same pipeline: the module's file (a module name
    and a path to its file are the same pipeline) and the schemas its tables live in
    (the same file against another schema is another pipeline)."""
    import datajoint as dj

    schemas = {value.database for value in vars(module).values()
               if isinstance(value, type) and issubclass(value, dj.Table) and getattr(value, "database", None)}
    return str(Path(module.__file__).resolve()) if getattr(module, "__file__", None) else module.__name__, sorted(schemas)
