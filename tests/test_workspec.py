"""What a worker is told (``work.WorkSpec``): the one argument list every backend writes
and the ``work`` command reads, and the one ``main`` every worker runs."""

from __future__ import annotations

import pytest
from conftest import PIPELINES, seed

from dj_orchestrate.errors import UsageError
from dj_orchestrate.jobs import JobTable, Policy
from dj_orchestrate.options import worker_settings
from dj_orchestrate.work import WorkSpec, main
from dj_orchestrate.worker import Settings

CHAIN = str(PIPELINES / "chain.py")


def every_field() -> WorkSpec:
    settings = worker_settings(retries=2, backoff=1.5, max_attempts=4, grace=3.0, max_batch=7, order="levels",
                               timeout=("Square=30", "10"))
    return WorkSpec(CHAIN, ("Square", "Total"), settings, key_json='{"item_id": 1}', run_id="run-1", shard_index=3,
                    fixed_shard=True, enqueue=True).replace(log_path="/logs/w.log", backend_job_id="123_4")


def test_argv_round_trip(monkeypatch):
    """Every field survives ``to_argv`` → ``from_argv``; each table's timeout travels by name."""
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    spec = every_field()
    argv = spec.to_argv()
    assert argv[:2] == ["work", CHAIN] and argv[argv.index("--timeout") + 1] == "Square=30"
    back = WorkSpec.from_argv(argv)
    assert back.to_argv() == argv
    assert (back.run_id, back.shard_index, back.fixed_shard, back.enqueue) == ("run-1", 3, True, True)
    assert back.settings.timeout == {"Square": 30.0, "Total": 10.0} and back.settings.policy == Policy(2, 1.5, 4)


def test_the_command_reads_what_backends_write(monkeypatch):
    """The ``work`` command parses the argument list as ``from_argv`` does."""
    from dj_orchestrate.cli import main as cli

    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    argv = every_field().to_argv()
    params = cli.commands["work"].make_context("work", argv[1:]).params
    assert WorkSpec.from_params(**params) == WorkSpec.from_argv(argv)


def test_defaults_are_the_dataclasses(monkeypatch):
    """A ``work`` with no option is told what ``worker.Settings()`` and ``jobs.Policy()``
    say: the options take their defaults from them."""
    monkeypatch.delenv("JOB_COMPLETION_INDEX", raising=False)
    spec = WorkSpec.from_argv(["work", CHAIN])
    assert spec.settings == Settings() and spec.settings.policy == Policy()
    assert (spec.tables, spec.run_id, spec.shard_index, spec.key_json) == ((), None, None, None)


def test_bad_options_are_usage_errors():
    with pytest.raises(UsageError, match="--max-batch is too small"):
        WorkSpec.from_argv(["work", CHAIN, "--max-batch", "0"])
    with pytest.raises(UsageError, match="--timeout 'Square=x'"):
        WorkSpec.from_argv(["work", CHAIN, "--timeout", "Square=x"])


def test_main_in_process(chain, db):
    """``main`` is what a forked local worker and a SLURM task run in their own process:
    it enqueues, makes every key and returns the exit status."""
    seed(chain, 5)
    assert main(WorkSpec(CHAIN, ("Square",), enqueue=True)) == 0
    assert len(chain.Square()) == 5
    assert JobTable(chain.Square()).counts()["missing"] == 0
    with pytest.raises(UsageError, match="--fixed-shard needs --run-id"):
        main(WorkSpec(CHAIN, ("Square",), fixed_shard=True))
