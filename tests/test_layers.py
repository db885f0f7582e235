"""The layers of ``[tool.importlinter]`` in pyproject.toml hold (``lint-imports``, as
``make test`` runs it), and a circle breaks them: a copy of the package in which a
backend imports the command fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import ROOT

LINT = Path(sys.executable).parent / "lint-imports"


def lint(package_parent: Path, cwd: Path) -> subprocess.CompletedProcess:
    """``lint-imports`` of the ``dj_orchestrate`` found in ``package_parent`` (no cache written)."""
    env = {**os.environ, "PYTHONPATH": str(package_parent)}
    return subprocess.run([str(LINT), "--no-cache", "--config", str(package_parent / "pyproject.toml")],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_the_package_keeps_its_layers(tmp_path):
    out = lint(ROOT, tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


def test_a_circle_fails(tmp_path):
    shutil.copytree(ROOT / "dj_orchestrate", tmp_path / "dj_orchestrate", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with open(tmp_path / "dj_orchestrate" / "backends" / "local.py", "a") as f:
        f.write("\nfrom ..cli import main  # noqa: E402  (a backend that runs the command: the old circle)\n")
    out = lint(tmp_path, tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "dj_orchestrate.backends is not allowed to import dj_orchestrate.cli" in out.stdout
    assert "dj_orchestrate.backends.local -> dj_orchestrate.cli" in out.stdout
