"""The runs a server starts: one ``dj-orchestrate run --backend B --wait`` process per route
with ready keys and no live run, watched, reaped, backed off when it could not run."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import backends, ledger
from ..flow import waiting
from ..jobs import JobTable, Policy, Restriction, reconcile_all
from ..pipeline import TableInfo
from .routes import Route

MAX_BACKOFF_S = 600.0  # the longest wait before a route whose runs could not run is tried again


@dataclass
class Child:
    """A ``dj-orchestrate run`` this server started for a route."""

    route: Route
    proc: subprocess.Popen
    out: Path
    started: float = field(default_factory=time.monotonic)


@dataclass
class Options:
    """What every run a server starts is given, as ``run``'s own arguments."""

    pipeline: str
    key_json: str | None = None
    config_path: str | None = None
    workers: int = 4
    worker_args: list[str] = field(default_factory=list)  # --retries, --backoff, ... as given to serve
    log_dir: Path = Path(".dj_orchestrate/logs")

    def argv(self, route: Route) -> list[str]:
        cmd = [sys.executable, "-m", "dj_orchestrate", "run", self.pipeline, "--backend", route.backend, "--wait",
               "--no-progress", "--json", "--workers", str(self.workers), *self.worker_args]
        for name in route.names:
            cmd += ["--table", name]
        if self.key_json:
            cmd += ["--key", self.key_json]
        if self.config_path:
            cmd += ["--config", self.config_path]
        return cmd


class Supervisor:
    """Starts and watches the runs of each route (``tick``), for ``serve`` and for a
    ``run`` whose tables go to several backends. It claims nothing itself: the runs'
    workers do, through the jobs tables."""

    def __init__(self, routes: list[Route], restriction: Restriction, options: Options, policy: Policy,
                 interval: float = 1.0) -> None:
        self.routes, self.restriction, self.options, self.policy = routes, restriction, options, policy
        self.interval = interval
        self.children: dict[str, Child] = {}
        self.failures: dict[str, int] = {}  # per route: runs in a row that could not run
        self.resumed: set[str] = set()  # runs of gone drivers taken up
        self.schedulers: dict[str, Any] = {}  # per remote route, the backend asked about earlier runs
        self.stopping = False
        self.not_before: dict[str, float] = {}
        self.results: list[dict] = []
        self.said: dict[str, Any] = {}
        self.options.log_dir.mkdir(parents=True, exist_ok=True)

    @property
    def infos(self) -> list[TableInfo]:
        return [t for r in self.routes for t in r.tables]

    def live(self) -> bool:
        return bool(self.children)

    def reap(self) -> None:
        """Note each run that ended: one line, with how it ended."""
        for name, child in list(self.children.items()):
            code = child.proc.poll()
            if code is None:
                continue
            del self.children[name]
            summary = _json_tail(child.out.read_text() if child.out.is_file() else "")
            run_id, state = summary.get("run_id", "?"), summary.get("state", f"exit {code}")
            shards = ledger.shards_of(run_id) if "run_id" in summary else []
            made, failed = sum(s["keys_done"] for s in shards), sum(s["keys_failed"] for s in shards)
            self.results.append({"route": name, "run_id": run_id, "state": state, "exit": code})
            line = f"run {run_id} {child.route}: {state} ({made} made, {failed} failed, {time.monotonic() - child.started:.0f}s)"
            if code in (0, 1) or self.stopping:
                self.failures.pop(name, None)
                say(line)
                continue
            # it could not run (bad config, a scheduler that refused): not again at once, backing off
            self.failures[name] = self.failures.get(name, 0) + 1
            wait = min(self.interval * 2 ** self.failures[name], MAX_BACKOFF_S)
            self.not_before[name] = time.monotonic() + wait
            err = child.out.with_suffix(".err")
            say(f"{line}: {_last_line(err) or f'see {err}'}; next try in {wait:.0f}s")

    def enqueue(self) -> dict[str, int]:
        """Every selected table's new keys, one line per table that got some."""
        added = {}
        for info in self.infos:
            jt = JobTable(info.instance())
            added[info.name] = n = jt.enqueue(self.restriction) if jt.supported else 0
            if n:
                say(f"+{n} keys {info.name}")
        return added

    def survey(self, tables: list[TableInfo]) -> dict[str, dict[str, int]]:
        """Each table's jobs rows per status, ``ready`` within the restriction: one or two
        statements per table, what an idle server costs."""
        counts = {}
        for info in tables:
            jt = JobTable(info.instance())
            counts[info.name] = c = jt.status_counts()
            if jt.supported and self.restriction.keys is not None and c["ready"]:
                c["ready"] = jt.ready(restriction=self.restriction)
        return counts

    def reconcile(self, tables: list[TableInfo]) -> None:
        """Keys of workers that are gone back to pending (the backends' hints asked)."""
        if tables:
            instances = [t.instance() for t in tables]
            reconcile_all(instances, self.policy, backends.hint(instances), self.restriction)

    def ready(self, route: Route, counts: dict[str, dict[str, int]], added: dict[str, int]) -> bool:
        """Keys of the route a worker could claim now (or, a table with no jobs table,
        keys missing), not every one of them behind a table that is not made yet."""
        due = any(counts[t.name]["ready"] or added.get(t.name) if JobTable(t.instance()).supported
                  else JobTable(t.instance()).counts(self.restriction)["missing"] for t in route.tables)
        if not due:
            return False
        lines = waiting(route.tables, self.restriction)
        self._once(f"wait:{route.backend}", lines, "; ".join(lines))
        return not lines

    def tick(self, launch: bool = True) -> bool:
        """One round: reap; reconcile the tables with keys reserved; enqueue; start the
        runs that have work. Whether anything is going on (a live run, or one just started)."""
        self.reap()
        if not launch:
            return self.live()
        counts = self.survey(self.infos)
        held = [t for t in self.infos if counts[t.name]["reserved"]]
        self.reconcile(held)
        counts.update(self.survey(held))  # (keys released just now are ready now)
        added = self.enqueue()
        for route in self.routes:
            if self.not_before.get(route.backend, 0) > time.monotonic() or route.backend in self.children:
                continue
            if not self._remote_live(route) and self.ready(route, counts, added):
                self.start(route)
        return self.live()

    def start(self, route: Route, argv: list[str] | None = None, what: str = "") -> None:
        """A run of the route (or ``argv``, which takes up an earlier one) in its own process."""
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = self.options.log_dir / f"{route.backend}-{stamp}.json"
        with open(out, "w") as stdout, open(out.with_suffix(".err"), "w") as stderr:
            proc = subprocess.Popen(argv or self.options.argv(route), stdout=stdout, stderr=stderr,
                                    stdin=subprocess.DEVNULL, start_new_session=True)  # (the server stops its runs)
        self.children[route.backend] = Child(route, proc, out)
        say(f"{what or f'started a {route} run'} (pid {proc.pid}; log {out.with_suffix('.err')})")

    def _remote_live(self, route: Route) -> bool:
        """A run of these tables that a driver before this one started (a server that
        died, a user's ``run --wait``) and whose workers still run (its scheduler says
        so): no second array or Job for the same keys. One whose workers cannot finish
        without its gone driver is taken up (``Backend.resume``); one whose workers all
        ended is recorded as interrupted."""
        if route.backend == "local":
            return False
        if route.backend not in self.schedulers:  # (its config read once, not every interval)
            self.schedulers[route.backend] = backends.get(route.backend).from_config(self.options.config_path)
        backend = self.schedulers[route.backend]
        for run in ledger.open_runs(self.options.pipeline, route.backend, route.names):
            ended = backend.run_ended(run)
            if ended:
                ledger.finish_run(run["run_id"], "interrupted")
                continue
            argv = backend.resume(run) if run["run_id"] not in self.resumed else None
            if argv:
                self.resumed.add(run["run_id"])
                self.start(route, [sys.executable, "-m", "dj_orchestrate", *argv], f"taking up run {run['run_id']}")
            else:
                self._once(f"remote:{route.backend}", run["run_id"], f"run {run['run_id']} {route} is still live; waiting for it")
            return True
        return False

    def stop(self, grace: float) -> None:
        """SIGINT to every run, as a Ctrl-C (local and Dask workers release or finish their
        keys within ``grace``; a Kubernetes run deletes its Jobs, whose pods do the same;
        SLURM arrays go on and are followed by the next server), then wait for them; a run
        still there after that is killed."""
        self.stopping = True
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):  # (already gone)
                os.killpg(child.proc.pid, signal.SIGINT)
        deadline = time.monotonic() + grace + 3
        while self.children and time.monotonic() < deadline:
            time.sleep(0.2)
            self.reap()
        for child in self.children.values():
            with contextlib.suppress(ProcessLookupError):  # (already gone)
                os.killpg(child.proc.pid, signal.SIGKILL)
        self.reap()

    def _once(self, what: str, value: Any, line: str) -> None:
        """``line`` when ``value`` changed since it was last said (one line per change, not per poll)."""
        if value and self.said.get(what) != value:
            say(line)
        self.said[what] = value


def _last_line(path: Path) -> str:
    """The last line a run wrote on stderr (its error, when it could not run)."""
    lines = path.read_text(errors="replace").strip().splitlines() if path.is_file() else []
    return lines[-1].strip() if lines else ""


def _json_tail(text: str) -> dict:
    """The JSON summary a ``run --json`` printed last ({} when there is none)."""
    start = text.find("{")
    try:
        return json.loads(text[start:]) if start >= 0 else {}
    except ValueError:
        return {}


def say(line: str) -> None:
    """One line of a server's log, with its time (stderr: a ``run --json``'s stdout stays JSON)."""
    print(f"{datetime.datetime.now().isoformat(sep=' ', timespec='seconds')} {line}", file=sys.stderr, flush=True)
