"""What every bench shares: the databases, a fresh schema and its drop, one database's
part of a bench in a child process, timing (and counting statements) through a fresh
process, the stock DataJoint baselines, the comparison run of a chained pipeline and
the markdown tables.

A bench is a scenario (bench_*.py) over a pipeline (*_pipeline.py, pipeline.py) that
measures through the whole CLI, as a user runs it, against what users do without
dj-orchestrate: ``populate(reserve_jobs=True)`` (bench/stock.py, in a fresh process) and,
for scale, DataJoint's own floor, ``populate()`` with no jobs table (``floor``).
"""

from __future__ import annotations

import collections
import compileall
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

from counting import kinds as statement_kinds
from counting import total as statements_sent

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
STOCK = str(BENCH / "stock.py")
COUNTING = str(BENCH / "counting.py")
IMPORT_DATAJOINT = [str(BENCH / "import_datajoint.py")]  # the baseline of a command's fixed cost
sys.path.insert(0, str(ROOT))  # a bench measures this checkout's dj_orchestrate (its processes too: python_env)

DATABASES = {
    "mysql": {"DJ_HOST": "127.0.0.1", "DJ_PORT": "3306", "DJ_USER": "root", "DJ_PASS": "", "DJ_BACKEND": "mysql"},
    "postgresql": {"DJ_HOST": "127.0.0.1", "DJ_PORT": "5432", "DJ_USER": "postgres", "DJ_PASS": "",
                   "DJ_BACKEND": "postgresql"},
}

T0 = time.perf_counter()
T = TypeVar("T")


def log(msg: str) -> None:
    """Progress goes to stderr: a bench's stdout is its table only."""
    print(f"[{time.perf_counter() - T0:6.1f}s] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ databases
def fresh_schema(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def database_env(database: str, schema: str) -> dict[str, str]:
    """What a bench process and every process it starts need: the server, the pipeline's
    schema (``DJO_BENCH_SCHEMA``, read by the bench pipelines) and the run ledger's."""
    return {**DATABASES[database], "DJ_USE_TLS": "false", "DJO_BENCH_SCHEMA": schema,
            "DJO_LEDGER_SCHEMA": f"{schema}_ledger"}


def drop_schemas(conn: Any, names: list[str]) -> None:
    """Drop a bench's schemas, also after a failed step; retried for a while on a fresh
    connection, in case the step failed because the database server was restarting."""
    q, mysql = conn.adapter.quote_identifier, conn.adapter.backend == "mysql"
    for attempt in range(10):
        try:
            conn.connect()  # a fresh connection: the old one may have died with a failed step
            for name in names:
                conn.query(f"DROP {'DATABASE' if mysql else 'SCHEMA'} IF EXISTS {q(name)}" + ("" if mysql else " CASCADE"))
            log(f"dropped {', '.join(names)}")
            return
        except Exception as err:
            if attempt == 9:
                log(f"could not drop {', '.join(names)}: {err}; drop them by hand")
                return
            time.sleep(3)


@contextmanager
def database(name: str, prefix: str, **env: str) -> Iterator[Any]:
    """A fresh schema ``<prefix>_<random>`` on database ``name`` for this process and every
    process it starts (``database_env`` and ``env`` in os.environ), connected; yields the
    connection. The schema, its ledger and its ``_wide`` pipeline are dropped at the end,
    also when a step failed."""
    schema = fresh_schema(prefix)
    os.environ.update({**database_env(name, schema), **env})
    os.environ.pop("DJO_EMBEDDED_DIR", None)
    import datajoint as dj

    from dj_orchestrate import db

    db.connect()
    conn = dj.conn()
    try:
        yield conn
    finally:
        drop_schemas(conn, [schema, f"{schema}_ledger", f"{schema}_wide"])


def empty(conn: Any, tables: list[Any]) -> None:
    """Empty ``tables`` (classes or instances; downstream ones included, as foreign keys
    require) and the jobs tables of the computed ones, which both systems share: each run
    starts as the first did. TRUNCATE leaves no dead rows for the next run to skip."""
    from dj_orchestrate.jobs import JobTable

    names = []
    for table in tables:
        table = table() if isinstance(table, type) else table
        names.append(table.full_table_name)
        if hasattr(table, "make") and JobTable(table).declared:
            names.append(JobTable(table).name)
    if conn.adapter.backend == "mysql":
        conn.query("SET FOREIGN_KEY_CHECKS = 0")
        try:
            for name in names:
                conn.query(f"TRUNCATE TABLE {name}")
        finally:
            conn.query("SET FOREIGN_KEY_CHECKS = 1")
    else:
        conn.query(f"TRUNCATE TABLE {', '.join(names)}")


# ------------------------------------------------------------------ one database's part, in a child
def in_child(argv: list[str]) -> Any:
    """``python ARGV --_out FILE`` in a fresh process, its stdout to stderr: one database's
    part of a bench (a pipeline module is imported once per process, and a failure ends
    that part only). What the child wrote to FILE (``child_result``); None if it failed."""
    with tempfile.TemporaryDirectory(prefix="djo-bench-") as tmp:
        out = Path(tmp) / "result.json"
        code = subprocess.call([sys.executable, *argv, "--_out", str(out)], env=python_env(), stdout=sys.stderr)
        if code:
            log(f"{argv[0]} {' '.join(argv[1:])} failed (exit {code})")
            return None
        return json.loads(out.read_text())


def child_result(out: str, result: Any) -> None:
    """What a child started by ``in_child`` hands back."""
    Path(out).write_text(json.dumps(result))


# ------------------------------------------------------------------ timing
def python_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: this one) with this checkout first on PYTHONPATH: the CLI measured is this code."""
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    return env


@functools.lru_cache(maxsize=None)
def compiled() -> None:
    """This checkout's modules and the bench's own, compiled to bytecode once, as an
    installed package's are (pip compiles a wheel's modules as it installs them). Where
    PYTHONDONTWRITEBYTECODE is set (this machine sets it), an editable checkout is never
    compiled: every measured process compiled dj_orchestrate's 75 modules from source again,
    0.12 s of a command's fixed cost that no installed copy pays. (``__pycache__`` is ignored
    by git.)"""
    for folder in (ROOT / "dj_orchestrate", BENCH):
        compileall.compile_dir(str(folder), quiet=1)


def command(argv: list[str], capture: bool = False, env: dict | None = None, cwd: Path | None = None,
            timeout: float = 900):
    """Wall time of ``python ARGV`` in a fresh process, interpreter start included (and its
    stdout with ``capture``); a failure ends the bench (a timing of a failed run means nothing)."""
    compiled()
    t = time.perf_counter()
    r = subprocess.run([sys.executable, *argv], env=python_env(env), cwd=cwd, capture_output=True, text=True,
                       timeout=timeout)
    took = time.perf_counter() - t
    if r.returncode:
        raise RuntimeError(f"{argv} failed ({r.returncode}):\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return (took, r.stdout) if capture else took


def counted(argv: list[str], env: dict | None = None,
            cwd: Path | None = None) -> tuple[float, int, collections.Counter[str], str]:
    """``command(ARGV)`` with every statement its process and the processes it forks send
    counted (bench/counting.py): (wall time, statements, their kinds where
    ``DJO_BENCH_KINDS=1``, stdout)."""
    with tempfile.TemporaryDirectory(prefix="djo-bench-count-") as folder:
        took, out = command([COUNTING, folder, *argv], capture=True, env=env, cwd=cwd)
        return took, statements_sent(Path(folder)), statement_kinds(Path(folder)), out


def command_json(argv: list[str], env: dict | None = None) -> dict:
    """The JSON last line ``python ARGV`` prints."""
    return json.loads(command(argv, capture=True, env=env)[1].strip().splitlines()[-1])


def together(processes: list[tuple[list[str], dict]], what: str, cwd: Path | None = None) -> None:
    """Start every (argv, env) at once and wait for all; any failure ends the bench."""
    procs = [subprocess.Popen(argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for argv, env in processes]
    for proc in procs:
        _, err = proc.communicate(timeout=3600)
        if proc.returncode:
            sys.exit(f"bench: {what} failed ({proc.returncode}):\n{err}")


def each(values: list[float]) -> str:
    """Every run of a best-of, for the notes."""
    return "" if len(values) == 1 else f" (best of {len(values)}: {', '.join(f'{x:.2f}' for x in values)} s)"


def ratio(ours: float, stock: float) -> str:
    if not stock:
        return "—"
    r = ours / stock
    return f"{r:.3f}×" if r < 0.1 else f"{r:.2f}×"


def met(ok: bool) -> str:
    return "yes" if ok else "**NO**"


def memory_gib() -> float | None:
    try:
        return int(next(line for line in open("/proc/meminfo") if line.startswith("MemTotal")).split()[1]) / 1024 / 1024
    except (OSError, StopIteration):
        return None


def machine(*versions: str) -> str:
    """One line: the host, its CPUs, memory and load, SLURM's version where there is one,
    ``versions`` (what else the bench measured), Python."""
    mem = memory_gib()
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    sbatch = subprocess.run(["sbatch", "--version"], capture_output=True, text=True).stdout.strip() \
        if shutil.which("sbatch") else ""
    return ", ".join(filter(None, [f"{platform.node()}: {platform.machine()}", f"{os.cpu_count()} CPUs",
                                   mem and f"{mem:.0f} GiB", f"load {load}", sbatch, *versions,
                                   f"Python {platform.python_version()}"]))


# ------------------------------------------------------------------ stock DataJoint
def stock_argv(pipeline: str, *tables: str) -> list[str]:
    """Stock ``populate(reserve_jobs=True)`` of tables, one after the other, in a fresh
    process (bench/stock.py)."""
    return [STOCK, pipeline, *tables]


def floor_argv(pipeline: str, *tables: str) -> list[str]:
    """DataJoint's floor as a whole process: ``populate()`` with no jobs table, of tables
    one after the other, in a fresh process (interpreter start, import and connect
    included, as in a command's wall time)."""
    return [STOCK, "--no-jobs", pipeline, *tables]


def stock_populate(pipeline: str, tables: list[str] | tuple[str, ...], workers: int, env: dict,
                   cwd: Path | None = None) -> float:
    """What users do without dj-orchestrate: per table, ``workers`` processes of stock
    ``populate(reserve_jobs=True)``, one table after the other (a table's keys exist only
    once the table before it is done). Wall time, interpreter start-ups included, as in
    every sbatch loop around populate()."""
    start = time.perf_counter()
    for name in tables:
        together([([sys.executable, *stock_argv(pipeline, name)], env)] * workers, f"stock populate of {name}", cwd=cwd)
    return time.perf_counter() - start


def floor(*tables: Any) -> float:
    """DataJoint's own per-key floor: ``populate()`` of each table in order, with no jobs
    table at all, in this process (a transaction, a "key already in table" check, the
    insert, a commit)."""
    t = time.perf_counter()
    for table in tables:
        table.populate()
    return time.perf_counter() - t


# ------------------------------------------------------------------ tables
def markdown(columns: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; a ``|`` inside a cell is escaped."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def print_table(runs: dict[str, dict], keys: int, tables: int, rows: list[tuple], complete_target: str,
                complete_met: bool | None = None) -> None:
    """The comparison every backend's bench prints: its own ``rows`` (metric, target, three
    cells, two ratios, met), then time to complete, throughput and leftovers for the backend
    (the first of ``runs``), local and stock."""
    name = next(iter(runs))
    n = keys * tables
    t = {k: r["complete"] for k, r in runs.items()}
    ok = {k: all(v == keys for v in r["made"].values()) and not r["left"] for k, r in runs.items()}
    rows = [
        *rows,
        ("time to complete (CLI wall time)", complete_target, *(f"{t[k]:.1f} s" for k in runs),
         f"{t[name] / t['local']:.2f}×", f"{t[name] / t['stock']:.2f}×", complete_met),
        ("throughput", "—", *(f"{n / t[k]:.0f} makes/s" for k in runs), "", "", None),
        ("every key made, nothing left", "yes", *("yes" if ok[k] else f"no {runs[k]['left']}" for k in runs), "", "",
         all(ok.values())),
    ]
    print(markdown(["metric", "target", name, "local", "stock populate(reserve_jobs=True)", f"{name} ÷ local",
                    f"{name} ÷ stock", "met"],
                   [[*cells, "" if ok_ is None else ("yes" if ok_ else "NO")] for *cells, ok_ in rows]))


# ------------------------------------------------------------------ the chained comparison
class Comparison:
    """One database, a fresh schema, a chained pipeline (bench/slurm_pipeline.py: Source ->
    Stage1 -> Stage2 -> Stage3, ``keys`` keys each): fill it, then time the backend a bench
    measures, ``run --backend local`` and stock populate on the same keys, each from empty
    tables (``compare``). Backends' benches subclass it with their own run."""

    PIPELINE = str(BENCH / "slurm_pipeline.py")
    TABLES = ("Stage1", "Stage2", "Stage3")

    def __init__(self, name: str, keys: int, workers: int, tmp: Path) -> None:
        """A fresh schema on database ``name`` (``harness.database``), dropped by ``drop``."""
        self.keys, self.workers, self.tmp = keys, workers, tmp
        self.schemas = ExitStack()
        self.conn = self.schemas.enter_context(database(name, "djo_bench_slurm", DJO_LOG_DIR=str(tmp / "logs")))
        self.schema = os.environ["DJO_BENCH_SCHEMA"]
        self.env = python_env()  # (what the commands it starts see: the schema, the database)
        self.config = tmp / "dj_orchestrate.toml"
        self.config.write_text(f"[slurm]\narray_parallelism = {workers}\npull_workers = {workers}\n")
        from dj_orchestrate import pipeline

        self.m = pipeline.load(self.PIPELINE)

    def cli(self, *args: str, timeout: float = 3600) -> tuple[subprocess.CompletedProcess, float]:
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "dj_orchestrate", *args], env=self.env, cwd=self.tmp,
                             capture_output=True, text=True, timeout=timeout)
        return out, time.perf_counter() - t

    def fill(self) -> None:
        self.m.Source.insert(({"key_id": i} for i in range(self.keys)), skip_duplicates=True)

    def db(self, action: Callable[[], T]) -> T:
        """This process's queries outlive a database restart (a shared machine's tests
        restart the servers): run again on a new connection."""
        from dj_orchestrate.db import retrying

        return retrying(self.conn, action, "bench", 300)

    def made(self, table: str) -> int:
        return self.db(lambda: len(getattr(self.m, table)()))

    def reset(self) -> None:
        """Empty the computed tables and their jobs tables."""
        self.db(lambda: empty(self.conn, [getattr(self.m, name) for name in self.TABLES]))

    def leftovers(self) -> dict:
        from dj_orchestrate.jobs import JobTable

        counts = self.db(lambda: {name: JobTable(getattr(self.m, name)()).status_counts() for name in self.TABLES})
        return {name: {k: v for k, v in c.items() if v} for name, c in counts.items() if any(c.values())}

    def outcome(self, what: str, complete: float, **extra: Any) -> dict:
        """What every run reports: its time, the rows of each table, what its jobs tables kept."""
        made = {t: self.made(t) for t in self.TABLES}
        log(f"{what}: complete in {complete:.1f} s ({made})")
        return {"complete": complete, "made": made, "left": self.leftovers(), **extra}

    def local(self) -> dict:
        log(f"local: {self.workers} workers")
        out, complete = self.cli("run", self.PIPELINE, "--backend", "local", "--workers", str(self.workers), "--no-progress")
        if out.returncode:
            sys.exit(f"bench: local run failed ({out.returncode}):\n{out.stderr}")
        return self.outcome("local", complete)

    def stock(self) -> dict:
        """Stock populate, W processes per table, table after table (``stock_populate``)."""
        log(f"stock: {self.workers} x populate(reserve_jobs=True) per table")
        return self.outcome("stock", stock_populate(self.PIPELINE, self.TABLES, self.workers, self.env, self.tmp))

    def compare(self, name: str, run: Callable[[], dict]) -> dict[str, dict]:
        """Fill Source, then ``run`` (the backend measured), ``run --backend local`` and
        stock populate on the same keys, each from empty tables: {name, local, stock}."""
        log(f"filling Source with {self.keys:,} keys (schema {self.schema})")
        self.fill()
        runs = {name: run()}
        self.reset()
        runs["local"] = self.local()
        self.reset()
        runs["stock"] = self.stock()
        return runs

    def drop(self) -> None:
        self.schemas.close()

    def print_table(self, runs: dict[str, dict], rows: list[tuple], complete_target: str,
                    complete_met: bool | None = None) -> None:
        print_table(runs, self.keys, len(self.TABLES), rows, complete_target, complete_met)
