"""The SLURM backend on the real single-node cluster (slurm/start-cluster.sh).

Every test that touches a database runs once per database (the ``db`` fixture); the
cluster is shared by the tests of both, so key counts are small. The cluster has as
many CPUs as the machine (two here): at most that many array tasks run at once, and
each task costs a Python start (~1.5 s), which is what the tests' durations are made of.

Array tasks inherit the submitting process's environment (sbatch's default
``--export=ALL``): the test schema, and the DJO_TEST_* knobs of the ``chain`` pipeline.
``MakeLog`` counts committed makes: a key made twice shows up twice.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import PIPELINES, ROOT, check_golden, jobs_rows, makes, password_env, require, seed, service, wait_for

from dj_orchestrate.jobs import JobTable

pytestmark = pytest.mark.slurm

CHAIN = str(PIPELINES / "chain.py")
GOLDEN = Path(__file__).resolve().parent / "golden" / "slurm"
SLURM_TOOLS = ("sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo")


# ------------------------------------------------------------------ cluster
def cluster_up() -> bool:
    if not shutil.which("sinfo"):
        return False
    out = subprocess.run(["sinfo", "-h", "-o", "%a %t"], capture_output=True, text=True, timeout=30)
    return out.returncode == 0 and any(
        line.split()[0] == "up" and line.split()[1].rstrip("*~#!%$@^-") in ("idle", "mix", "alloc", "comp")
        for line in out.stdout.splitlines() if len(line.split()) == 2)


@service("cluster")
def start_cluster() -> None:
    """Start the cluster (idempotently) when sinfo does not answer."""
    if not cluster_up() and (ROOT / "slurm" / "start-cluster.sh").is_file():
        subprocess.run(["bash", str(ROOT / "slurm" / "start-cluster.sh")], capture_output=True, timeout=600)


@pytest.fixture(scope="session")
def cluster() -> None:
    """The single-node cluster, started before the first test; missing, it skips these
    tests locally and fails them in CI."""
    start_cluster()
    require(cluster_up(), "the SLURM cluster (slurm/start-cluster.sh)")


class Slurm:
    """One test's SLURM side: its config file, its log folder, and every array it
    submitted (cancelled when the test ends, so that a failed test leaves nothing
    running against a dropped schema)."""

    def __init__(self, db, tmp_path: Path) -> None:
        self.db, self.tmp = db, tmp_path
        self.logs = tmp_path / "logs"
        self.config = tmp_path / "dj_orchestrate.toml"
        self.write_config()
        self.arrays: list[str] = []

    def write_config(self, text: str = "[slurm]\npull_workers = 2\n") -> Path:
        self.config.write_text(text)
        return self.config

    def cli(self, *args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
        out = self.db.cli(*args, env={"DJO_LOG_DIR": str(self.logs), **(env or {})}, timeout=timeout)
        for ids in submitted(out.stderr).values():
            self.arrays += ids
        return out

    def run(self, *args: str, env: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
        return self.cli("run", CHAIN, "--backend", "slurm", "--config", str(self.config), "--no-progress", *args,
                        env=env, timeout=timeout)

    def cancel(self) -> None:
        if self.arrays:
            subprocess.run(["scancel", *self.arrays], capture_output=True, timeout=60)


@pytest.fixture
def slurm(cluster, db, tmp_path):
    s = Slurm(db, tmp_path)
    yield s
    s.cancel()


def submitted(stderr: str) -> dict[str, list[str]]:
    """``submitted 2 array job(s): Square: 64; Total: 65,66`` → {"Square": ["64"], ...}"""
    m = re.search(r"submitted \d+ array job\(s\): (.*)", stderr)
    if not m or m.group(1) == "nothing to do":
        return {}
    return {name: ids.split(",") for name, _, ids in (part.partition(": ") for part in m.group(1).split("; "))}


def queued(*job_ids: str) -> dict[str, str]:
    """squeue's view of these jobs: task id → state (finished tasks are absent)."""
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, timeout=60)
    return dict(line.split() for line in out.stdout.splitlines() if line.strip())


def row_of(table, item_id: int) -> dict | None:
    return next((r for r in jobs_rows(table) if r["item_id"] == item_id), None)


def assert_once(chain, ids: set[int], tables=("Square", "Total")) -> None:
    """Every key of ``ids`` made exactly once in each table, and no other key."""
    assert makes(chain) == {(t, i): 1 for t in tables for i in ids}


def rows(chain) -> dict[str, dict[int, float]]:
    return {"Square": {r["item_id"]: r["square"] for r in chain.Square.to_dicts()},
            "Total": {r["item_id"]: r["total"] for r in chain.Total.to_dicts()}}


def plain_populate(db, n: int, env: dict) -> dict[str, dict[int, float]]:
    """The same pipeline, seeded the same, made by stock DataJoint ``populate()`` in a
    schema of its own: the reference a SLURM run must match."""
    schema = db.schema + "_ref"
    code = f"""
import json, datajoint as dj, chain
chain.Item.insert([{{"item_id": i, "value": float(i)}} for i in range({n})])
chain.Square.populate(suppress_errors=True)
chain.Total.populate(suppress_errors=True)
print(json.dumps({{"Square": {{r["item_id"]: r["square"] for r in chain.Square.to_dicts()}},
                   "Total": {{r["item_id"]: r["total"] for r in chain.Total.to_dicts()}}}}))
chain.schema.drop(prompt=False)
"""
    out = subprocess.run([sys.executable, "-c", code], env={**db.env, **env, "DJO_TEST_SCHEMA": schema},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return {t: {int(k): v for k, v in r.items()} for t, r in json.loads(out.stdout.splitlines()[-1]).items()}


# -------------------------------------------------------------------- tests
def test_wait_multi_level_same_rows_as_plain_populate(chain, db, slurm):
    """``run --backend slurm --wait``: a fixed-shard array for Square, an afterany pull
    array for Total; the tables end with exactly the rows a plain ``populate()`` makes,
    every key made once, and the failing key's error names its array task and a log
    file that exists."""
    seed(chain, 10)
    run = slurm.run("--wait", "--shard-size", "4", env={"DJO_TEST_FAIL": "3"})
    assert run.returncode == 1, run.stdout + run.stderr  # one key failed, on purpose
    arrays = submitted(run.stderr)
    assert set(arrays) == {"Square", "Total"} and all(len(ids) == 1 for ids in arrays.values()), run.stderr
    assert "see `dj-orchestrate errors`" in run.stdout

    assert rows(chain) == plain_populate(db, 10, {"DJO_TEST_FAIL": "3"})
    assert_once(chain, set(range(10)) - {3})

    errors = json.loads(slurm.cli("errors", CHAIN, "--json").stdout)
    assert [(e["table"], e["key"]) for e in errors] == [("Square", {"item_id": 3})]
    error = errors[0]
    assert error["error_message"] == "ValueError: item 3 is bad" and error["attempts"] == 1
    assert error["backend_job_id"] == f"{arrays['Square'][0]}_0"  # keys 0-3 are shard 0
    log = Path(error["log_path"])
    assert log.is_file() and log.is_relative_to(slurm.logs), error["log_path"]
    assert "worker done: 3 made, 1 failed" in log.read_text()

    status = json.loads(slurm.cli("status", CHAIN, "--json").stdout)["tables"]
    assert [(r["table"], r["done"], r["error"], r["reserved"]) for r in status] == [("Square", 9, 1, 0), ("Total", 9, 0, 0)]


def test_wait_resubmits_after_a_task_dies(chain, db, slurm):
    """--wait follows rounds: a Square task is killed on item 0 (SIGKILL inside make),
    leaving item 0 reserved and item 1 of its shard unmade. After the arrays end, the
    driver reconciles (item 0 charged), and submits pull workers again for Square *and
    for Total*, whose new keys only exist once Square's are made. Item 0 dies again and
    is an error at --max-attempts 2; everything else is made once; exit 1."""
    seed(chain, 4)
    run = slurm.run("--wait", "--shard-size", "2", "--max-attempts", "2", env={"DJO_TEST_CRASH": "0"})
    assert run.returncode == 1, run.stdout + run.stderr
    assert_once(chain, {1, 2, 3})
    [error] = json.loads(slurm.cli("errors", CHAIN, "--json").stdout)
    assert error["key"] == {"item_id": 0} and error["attempts"] == 2
    assert error["error_message"].startswith("gave up after 2 attempts (max_attempts=2): the worker on ")
    assert re.search(r"\(backend job \d+_\d+\) ended$", error["error_message"]), error["error_message"]


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # the backend's behaviour, the same on either database
def test_submit_without_wait_returns_and_completes(chain, db, slurm):
    """Without --wait the command returns as soon as the arrays are accepted (exit 0,
    the array ids on stderr); the pipeline completes with no driver running, and
    ``status`` shows the run with its arrays' SLURM states."""
    seed(chain, 6)
    started = time.monotonic()
    run = slurm.run("--shard-size", "3")
    assert run.returncode == 0, run.stdout + run.stderr
    assert time.monotonic() - started < 30
    arrays = submitted(run.stderr)
    assert set(arrays) == {"Square", "Total"}, run.stderr
    assert re.search(r"run \S+: submitted", run.stdout)

    status = slurm.cli("status", CHAIN)
    assert status.returncode == 0, status.stderr
    line = next(line for line in status.stdout.splitlines() if "submitted" in line)
    assert f"Square [{arrays['Square'][0]}]" in line and f"Total [{arrays['Total'][0]}]" in line
    assert re.search(r"Total \[\d+\]: (PENDING|RUNNING)", line), line  # waits for Square (afterany)

    wait_for(lambda: len(chain.Total()) == 6, 150, "Total to fill", interval=1,
             detail=lambda: (jobs_rows(chain.Square), jobs_rows(chain.Total), queued(*arrays["Square"], *arrays["Total"])))
    wait_for(lambda: not queued(*arrays["Square"], *arrays["Total"]), 60, "the arrays to end", interval=1)
    assert rows(chain) == {"Square": {i: float(i * i) for i in range(6)}, "Total": {i: i * i + 1.0 for i in range(6)}}
    assert_once(chain, set(range(6)))
    later = slurm.cli("status", CHAIN)
    assert f"Square [{arrays['Square'][0]}]: ended" in later.stdout, later.stdout


def test_cancelled_task_released_by_reconcile_then_completed(chain, db, slurm):
    """``scancel`` of one array task while its key is in flight: SLURM kills it (SIGTERM,
    then SIGKILL after KillWait, sooner than the worker's --grace), so its key stays
    reserved under that task's id. ``reconcile`` sees from squeue that the task ended,
    releases the key and counts the attempt; another run completes it, once."""
    seed(chain, 2)
    run = slurm.run("--shard-size", "1", "--grace", "60", env={"DJO_TEST_SLEEP": "15"})
    assert run.returncode == 0, run.stderr
    square = submitted(run.stderr)["Square"][0]
    victim = f"{square}_0"
    wait_for(lambda: (r := row_of(chain.Square, 0)) and r["status"] == "reserved" and r["backend_job_id"] == victim,
             90, f"{victim} to claim item 0", detail=lambda: (row_of(chain.Square, 0), queued(square)))
    subprocess.run(["scancel", victim], check=True, timeout=30)
    wait_for(lambda: victim not in queued(square), 60, f"{victim} to end")

    row = row_of(chain.Square, 0)
    assert row["status"] == "reserved" and row["backend_job_id"] == victim  # nobody released it
    out = slurm.cli("reconcile", CHAIN, "--json")
    assert json.loads(out.stdout) == {"back_to_pending": 1, "charged_an_attempt": 1, "already_done": 0, "became_errors": 0}, out.stdout + out.stderr
    row = row_of(chain.Square, 0)
    assert row["status"] == "pending" and row["attempts"] == 1
    assert f"(backend job {victim}) ended" in row["error_message"]
    assert row_of(chain.Square, 1)["status"] == "reserved"  # the other task is still making item 1: untouched

    again = slurm.run("--wait")
    assert again.returncode == 0, again.stdout + again.stderr
    wait_for(lambda: len(chain.Total()) == 2, 120, "the first run's item 1 to finish", interval=1)
    wait_for(lambda: not queued(*slurm.arrays), 60, "every array to end", interval=1)
    assert_once(chain, {0, 1})
    assert jobs_rows(chain.Square) == [] and jobs_rows(chain.Total) == []


def test_time_limit_notice_retries_then_error(chain, db, slurm):
    """A make longer than its time limit. The notice SLURM sends ``signal_delay_s``
    before the limit is USR2; here it is delivered at once with ``scancel --signal=USR2``
    (a true 1-minute limit would cost minutes per attempt). Each notice rolls the key
    back, charges it an attempt and requeues the task (submitit); the requeued task
    claims it again; at --max-attempts 2 the key is an error that says why. The other
    task's key is made once."""
    seed(chain, 2)
    run = slurm.run("--table", "Square", "--shard-size", "1", "--grace", "1", "--max-attempts", "2",
                    env={"DJO_TEST_SLEEP": "20"})
    assert run.returncode == 0, run.stderr
    square = submitted(run.stderr)["Square"][0]
    task = f"{square}_0"

    for attempt in (0, 1):
        wait_for(lambda: (r := row_of(chain.Square, 0)) and r["status"] == "reserved" and r["attempts"] == attempt,
                 90, f"{task} to claim item 0 (attempt {attempt + 1})", detail=lambda: (row_of(chain.Square, 0), queued(square)))
        subprocess.run(["scancel", "--signal=USR2", task], check=True, timeout=30)
        if attempt == 0:
            row = wait_for(lambda: (r := row_of(chain.Square, 0)) and r["attempts"] == 1 and r, 30, "the first charge",
                           detail=lambda: (row_of(chain.Square, 0), queued(square)))
            assert row["error_message"] == "attempt 1 ended: the worker was stopped by SIGUSR2 (preemption or time limit)"

    row = wait_for(lambda: (r := row_of(chain.Square, 0)) and r["status"] == "error" and r, 30, "item 0 to give up",
                   detail=lambda: (row_of(chain.Square, 0), queued(square)))
    assert row["attempts"] == 2
    assert row["error_message"] == ("gave up after 2 attempts (max_attempts=2): "
                                    "the worker was stopped by SIGUSR2 (preemption or time limit)")
    wait_for(lambda: not queued(square), 90, "the array to end", interval=1, detail=lambda: queued(square))
    show = subprocess.run(["scontrol", "show", "job", task], capture_output=True, text=True).stdout
    assert re.search(r"Restarts=2\b", show), show  # requeued twice by submitit, then ran to the end
    assert re.search(r"JobState=COMPLETED\b", show), show
    assert makes(chain) == {("Square", 1): 1}
    errors = json.loads(slurm.cli("errors", CHAIN, "--json").stdout)
    assert [(e["key"], e["attempts"], e["backend_job_id"]) for e in errors] == [({"item_id": 0}, 2, task)]


@pytest.mark.parametrize("db", ["mysql"], indirect=True)  # render reads the database once; MySQL: a user whose password is real
def test_render_golden(chain, db, tmp_path):
    """``slurm render`` with every resource key and a per-table override: the scripts
    are byte-for-byte the golden files (no path of this machine in them), and the
    database password of the rendering environment appears nowhere. A section for a
    table the pipeline does not have (a typo) changes nothing and warns.
    DJO_UPDATE_GOLDEN=1 rewrites the golden files."""
    with password_env(db) as env:
        secret = env["DJ_PASS"]
        config = tmp_path / "dj_orchestrate.toml"
        config.write_text((GOLDEN / "dj_orchestrate.toml").read_text() + '\n[slurm.tables.Totl]\nmem = "8G"\n')
        out = db.cli("slurm", "render", "chain", "--config", str(config), "--out", str(tmp_path / "jobs"), env=env,
                     cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert f"warning: [slurm.tables.Totl] in {config} names no table of chain; its tables: Square, Total" in out.stderr
    written = sorted(p.name for p in (tmp_path / "jobs").iterdir())
    assert written == ["00-Square.sbatch", "01-Total.sbatch", "submit.sh"]
    for name in written:
        text = (tmp_path / "jobs" / name).read_text()
        assert secret not in text
        assert str(tmp_path) not in text and str(ROOT) not in text and sys.executable not in text
    check_golden(tmp_path / "jobs", GOLDEN)


def test_example_config_documents_every_key():
    """slurm/dj_orchestrate.toml.example loads, and names (set or commented) every
    resource key, in [slurm] and in a per-table section."""
    import dataclasses

    from dj_orchestrate.backends.slurm.settings import SlurmResources, load_config

    path = ROOT / "slurm" / "dj_orchestrate.toml.example"
    config = load_config(str(path))
    assert config.defaults.partition == "debug" and config.tables
    text = path.read_text()
    for f in dataclasses.fields(SlurmResources):
        assert re.search(rf"^#? ?{f.name} = ", text, re.M), f.name


@pytest.mark.timeout(600)  # its run is allowed 420 s
@pytest.mark.parametrize("db", ["postgresql"], indirect=True)
def test_array_split_at_max_array_size(chain, db, slurm):
    """More shards than MaxArraySize (101): 102 keys in shards of one are two arrays for
    Square (101 tasks, then 1, which submitit submits as a plain job), every key made
    once, each task's shard recorded and done.

    On PostgreSQL only: its 102 tasks take over two minutes on the two-CPU node (each
    task is a Python start), and nothing in the split depends on the database; the
    fixed-shard claims it relies on run on both databases in the other tests."""
    seed(chain, 102)
    run = slurm.run("--table", "Square", "--shard-size", "1", "--wait", timeout=420)
    assert run.returncode == 0, run.stdout + run.stderr
    first, second = submitted(run.stderr)["Square"]
    assert int(second) > int(first)
    assert_once(chain, set(range(102)), tables=("Square",))
    from dj_orchestrate import ledger

    run_id = re.search(r"run (\S+): done", run.stdout).group(1)
    shards = ledger.shards_of(run_id)
    assert sorted(s["shard"] for s in shards) == list(range(102))
    assert {s["state"] for s in shards} == {"done"} and sum(s["keys_done"] for s in shards) == 102
    jobs = {s["shard"]: s["backend_job_id"] for s in shards}
    assert jobs[0] == f"{first}_0" and jobs[100] == f"{first}_100" and jobs[101] == second


def test_reconcile_trusts_squeue_only_when_it_answers(chain, db, cluster, tmp_path):
    """A key reserved by a live worker under a SLURM task id that squeue does not know.
    While squeue cannot reach the controller (a fake squeue first on PATH says so, as
    during a slurmctld restart), reconcile must leave the key alone: no answer is not
    "ended". Once squeue answers that the task is gone, reconcile releases the key."""
    from dj_orchestrate.jobs import Owner

    seed(chain, 1)
    jt = JobTable(chain.Square())
    jt.enqueue()
    task = "99999999_0"
    assert len(jt.claim(Owner.of(jt.conn, backend_job_id=task), 1)) == 1  # this process: alive
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "squeue").write_text("#!/bin/sh\necho 'squeue: error: Unable to contact slurm controller' >&2\nexit 1\n")
    (fake / "squeue").chmod(0o755)
    out = db.cli("reconcile", CHAIN, "--json", env={"PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"})
    assert json.loads(out.stdout) == {"back_to_pending": 0, "charged_an_attempt": 0, "already_done": 0, "became_errors": 0}, out.stdout + out.stderr
    assert row_of(chain.Square, 0)["status"] == "reserved"
    out = db.cli("reconcile", CHAIN, "--json")
    assert json.loads(out.stdout) == {"back_to_pending": 1, "charged_an_attempt": 1, "already_done": 0, "became_errors": 0}, out.stdout + out.stderr
    row = row_of(chain.Square, 0)
    assert row["status"] == "pending" and f"(backend job {task}) ended" in row["error_message"]


def _no_slurm_path(tmp_path: Path) -> str:
    """PATH without the SLURM commands (the CLI runs as sys.executable, needs nothing)."""
    bare = tmp_path / "bin"
    bare.mkdir(exist_ok=True)
    return str(bare)


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # refused before a key is claimed: one database
@pytest.mark.parametrize(
    "case, config, message",
    [
        ("no-sbatch", "[slurm]\n", "no sbatch on PATH"),
        ("partition", '[slurm]\npartition = "nope"\n', "unknown SLURM partition 'nope' for Square"),
        ("key", '[slurm]\nmemory = "4G"\n', "unknown SLURM resource 'memory'"),
        ("table-key", '[slurm.tables.Total]\ngpu = 1\n', "unknown SLURM resource 'gpu'"),
        ("signal", '[slurm]\ntime = "1"\nsignal_delay_s = 90\n', "signal_delay_s = 90"),
        ("time-limit", '[slurm]\npartition = "short"\ntime = "10"\n', "time '10' for Square exceeds partition short's limit 5:00"),
        ("rejected", '[slurm.tables.Total]\nmem = "100000G"\n',
         "SLURM rejected the Total array: Memory specification can not be satisfied"),
    ],
)
def test_bad_input_exit_2_nothing_reserved(chain, db, slurm, tmp_path, case, config, message):
    """Exit 2 with one clear line (SLURM's own words for a rejection), no traceback,
    nothing enqueued or reserved, no array left. A rejection of the second table's
    array cancels the first one, which was submitted gated (--begin) and never ran."""
    seed(chain, 3)
    slurm.write_config(config)
    env = {"PATH": _no_slurm_path(tmp_path)} if case == "no-sbatch" else {}
    out = slurm.run("--wait", env=env)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = out.stderr.strip().splitlines()
    assert message in lines[0], out.stderr
    assert "Traceback" not in out.stderr and len(lines) <= 2 and lines[-1].startswith("  hint: ")
    assert not JobTable(chain.Square()).declared and not JobTable(chain.Total()).declared
    if case == "rejected":
        assert "Requested node configuration is not available" in lines[0]
        from dj_orchestrate import ledger

        [run] = [r for r in ledger.recent_runs() if r["backend"] == "slurm"]
        assert run["state"] == "rejected" and run["shards"] == 0
        # the Square array, accepted (gated), then cancelled: submitit's folder for it is its id
        [held] = [p.name for p in (slurm.logs / run["run_id"]).iterdir() if p.is_dir() and p.name.isdigit()]

        def states() -> set[str]:
            out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "State", "-j", held],
                                 capture_output=True, text=True, timeout=60)
            assert out.returncode == 0, out.stderr
            return {s.split()[0] for s in out.stdout.splitlines() if s.strip()}  # "CANCELLED by 0"

        # (the accounting database may record the cancellation a moment later)
        wait_for(lambda: states() == {"CANCELLED"}, 60, what=f"array {held} CANCELLED in sacct", detail=states)


@pytest.mark.parametrize("db", ["postgresql"], indirect=True)  # the backend's behaviour, the same on either database
def test_wait_stops_when_slurm_will_never_start_a_task(chain, db, slurm):
    """--wait ends with SLURM's reason and exit 2, instead of waiting forever, when
    SLURM says it will never start a task: here the Square array depends (an extra
    directive) on a job that failed, so SLURM marks it DependencyNeverSatisfied. The
    arrays stay queued for the user to cancel, the keys stay pending, none reserved;
    ``status`` shows the reason next to the array."""
    failed = subprocess.run(["sbatch", "--parsable", "-o", "/dev/null", "--wrap", "false"],
                            capture_output=True, text=True, check=True).stdout.strip()
    wait_for(lambda: not queued(failed), 60, what="the failing job to end")
    seed(chain, 3)
    slurm.write_config(f'[slurm.tables.Square]\nextra = ["--dependency=afterok:{failed}"]\n')
    out = slurm.run("--wait", "--shard-size", "1", timeout=120)
    assert out.returncode == 2, out.stdout + out.stderr
    square = submitted(out.stderr)["Square"]
    assert f"SLURM will not start 3 task(s) of Square ({square[0]}): DependencyNeverSatisfied" in out.stderr, out.stderr
    assert f"scancel {square[0]}" in out.stderr and "Traceback" not in out.stderr
    assert {r["status"] for r in jobs_rows(chain.Square)} == {"pending"}
    status = slurm.cli("status", CHAIN)
    assert "PENDING (DependencyNeverSatisfied) 3" in status.stdout, status.stdout


def test_fixed_shards_running_together_each_finish_their_shard(chain, db):
    """Array tasks of one table run side by side, each on its shard (``work
    --fixed-shard``). On MySQL a claim's SKIP LOCKED also skips rows another claim is
    only scanning past, so a claim could come back empty with its shard still pending:
    the worker stopped there and the rest of its shard was never made (this test,
    8 workers on 2,000 keys, before the fix: every run). Now every worker finishes its
    shard, and every key is made once."""
    from dj_orchestrate import ledger
    from dj_orchestrate.planner import encode_bound

    n, shards = 2000, 8
    seed(chain, n)
    JobTable(chain.Square()).enqueue()
    run_id = ledger.new_run(CHAIN, "slurm", ["Square"])
    starts = [(i * n // shards,) for i in range(shards)] + [None]
    ledger.add_shards(run_id, "Square", [(encode_bound(starts[i]), encode_bound(starts[i + 1])) for i in range(shards)])
    cmd = [sys.executable, "-m", "dj_orchestrate", "work", CHAIN, "--table", "Square", "--run-id", run_id, "--fixed-shard"]
    procs = [subprocess.Popen([*cmd, "--shard-index", str(i)], env=db.env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(shards)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * shards, "\n".join(outputs)
    assert all(f"worker done: {n // shards} made" in out for out in outputs), outputs
    assert_once(chain, set(range(n)), tables=("Square",))


def test_pull_workers_starting_together_declare_once(chain, db, tmp_path):
    """Pull workers of a downstream array start at the same moment and each declares
    the jobs table it enqueues: on PostgreSQL the losers of that race used to die with
    a duplicate-key error from the catalog. Six at once, all succeed, every key once."""
    seed(chain, 12)
    cmd = [sys.executable, "-m", "dj_orchestrate", "work", CHAIN, "--table", "Square", "--enqueue"]
    procs = [subprocess.Popen(cmd, env=db.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(6)]
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, "\n".join(outputs)
    assert_once(chain, set(range(12)), tables=("Square",))
