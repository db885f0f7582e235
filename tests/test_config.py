"""The one config file every backend reads (``dj_orchestrate.config``): no database."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, ClassVar

import pytest

import dj_orchestrate.cli  # noqa: F401  (the commands import every section's settings, as a command's process does)
from dj_orchestrate.config import BackendConfig, Settings
from dj_orchestrate.errors import UsageError


@dataclasses.dataclass(frozen=True)
class Knobs(Settings, section="dask"):
    label: ClassVar[str] = "knob"

    name: str | None = None
    count: int = 1
    ratio: float = 0.5
    flag: bool = False
    lines: tuple[str, ...] = ()
    labels: dict[str, Any] = dataclasses.field(default_factory=dict)
    rules: tuple[dict, ...] = ()


class Info:
    """What ``for_table`` reads of a TableInfo: its name and its class."""

    def __init__(self, name: str, **attrs: Any) -> None:
        self.name = name
        self.cls = type(name, (), attrs)


def load(tmp_path: Path, text: str, pyproject: bool = False) -> BackendConfig[Knobs]:
    path = tmp_path / ("pyproject.toml" if pyproject else "dj_orchestrate.toml")
    path.write_text(text)
    return BackendConfig.load(Knobs, str(path))


def test_every_type_and_table_precedence(tmp_path):
    config = load(tmp_path, """
[dask]
name = "a"
count = 2
ratio = 1
flag = true
lines = ["x", "y"]
labels = { gpu = "a100" }
rules = [{ key = "k", operator = "Exists" }]

[dask.tables.Sorting]
count = 5
""")
    d = config.defaults
    assert (d.name, d.count, d.ratio, d.flag, d.lines) == ("a", 2, 1.0, True, ("x", "y"))
    assert d.labels == {"gpu": "a100"} and d.rules == ({"key": "k", "operator": "Exists"},)
    # defaults < the class's own attribute < [section.tables.X]
    assert config.for_table(Info("Sorting", dask={"count": 3, "flag": False})).count == 5
    assert config.for_table(Info("Sorting", dask={"count": 3, "flag": False})).flag is False
    assert config.for_table(Info("Other", dask={"count": 3})).count == 3
    assert config.for_table(Info("Other")).count == 2
    assert config.unknown_tables({"Other"}) == ["Sorting"]


def test_pyproject_section(tmp_path):
    config = load(tmp_path, "[tool.dj_orchestrate.dask]\ncount = 7\n", pyproject=True)
    assert config.defaults.count == 7 and config.source.endswith("pyproject.toml")


def test_no_file_means_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = BackendConfig.load(Knobs)
    assert config.defaults == Knobs() and config.source == "defaults"


@pytest.mark.parametrize("text, message, hint", [
    ("[dask]\ncont = 1\n", "unknown knob 'cont' in", "valid keys: name, count, ratio, flag, lines, labels, rules"),
    ("[dsak]\n", "unknown section [dsak]", "valid sections: [airflow], [dask], [kubernetes], [local], [run], [serve], [slurm]"),
    ("[dask]\ncount = \"2\"\n", "count in", "e.g. count = 2"),
    ("[dask]\nflag = 1\n", "flag in", "e.g. flag = true"),
    ("[dask]\nlines = \"x\"\n", "lines in", "e.g. lines = [...]"),
    ("[dask]\nlabels = 3\n", "labels in", "e.g. labels ="),
    ("[dask.tables.Sorting]\nratio = \"fast\"\n", "[dask.tables.Sorting]", "e.g. ratio = 1.5"),
    ("[dask.tables]\nSorting = 1\n", "[dask.tables] in", "e.g. [dask.tables.SpikeSorting]"),
    ("[dask\n", "is not valid TOML", "fix the file's syntax"),
])
def test_mistakes_name_the_key_and_the_fix(tmp_path, text, message, hint):
    with pytest.raises(UsageError) as err:
        load(tmp_path, text)
    assert message in err.value.message and hint in err.value.hint


def test_missing_file_given_explicitly(tmp_path):
    with pytest.raises(UsageError, match="config file not found"):
        BackendConfig.load(Knobs, str(tmp_path / "nope.toml"))


def test_dumps_reads_back_as_written():
    """``dumps`` (a config written into a rendered ConfigMap) reads back as the config it
    was given: every example config of the repository, and keys that need quotes,
    strings that need escapes, big numbers, empty and nested lists and tables."""
    import tomllib

    from conftest import ROOT

    from dj_orchestrate.config import dumps, read

    examples = [*ROOT.glob("tests/golden/*/dj_orchestrate.toml"), ROOT / "k8s/dj_orchestrate.toml",
                ROOT / "slurm/dj_orchestrate.toml.example"]
    configs = [read(str(path))[0] for path in examples]
    configs.append({"run": {"tables": {"A.b": {"backend": "slurm"}}},
                    "kubernetes": {"env": {}, "node_selector": {"kubernetes.io/arch": "amd64"}, "memory": 'q"\\\n\té',
                                   "timeout": 1.5e300, "gpus": 0, "secret_files": True, "image_pull_secrets": [],
                                   "tolerations": [{"key": "gpu", "operator": "Exists", "values": [1, [2.5]]}]}})
    for config in configs:
        assert tomllib.loads(dumps(config)) == config, dumps(config)
