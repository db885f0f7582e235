"""The dashboard's web application: Starlette, pages rendered by Jinja2 on the server.

One DataJoint connection serves every request, so database work is serialised by a
lock (requests run in Starlette's thread pool); what costs a pass over every key is read
from snapshots (``snapshot``), computed on a second connection: taken before the server
accepts a request and again by each action before it answers, and kept fresh by a thread
while pages ask for them. GET only reads. Every action is a POST that must pass
``Dashboard.refusal``: the account may write, the Origin is this
server's, and the caller holds the token (a cookie set by the URL printed at start, or
``Authorization: Bearer TOKEN``). Every answer says what it cost (``meter``)."""

from __future__ import annotations

import contextlib
import datetime
import hmac
import json
import logging
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, AsyncIterator, Callable

import datajoint as dj
from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from .. import backends, db, ledger, pipeline, queries, reports
from ..errors import UsageError
from ..jobs import STATUSES, JobTable, Policy, Restriction, counts_of, key_source_of, reconcile_all
from ..planner import TablePlan, plan_table
from . import serial_keys, view
from .meter import Meter
from .snapshot import TTL, Keeper, Snapshot

HERE = Path(__file__).parent
COOKIE = "djo_dashboard_token"
log = logging.getLogger("dj_orchestrate")
GROUP_KEYS = 200  # failed keys listed, with their stacks, when a group opens
OWNERS = 200  # owners of reserved keys listed on /runs (rendering thousands costs more than their queries)
COLOURS = {"done": "#3a9a50", "pending": "#9aa5b1", "reserved": "#3c78c8", "error": "#d0453a", "ignore": "#c9a227"}


class Dashboard:
    """What the pages show (one pipeline, its tables) and who may act on it."""

    def __init__(self, spec: str, infos: list[pipeline.TableInfo], token: str, target: Any) -> None:
        self.spec, self.infos, self.token, self.target = spec, infos, token, target
        self.lock = threading.Lock()
        self.jts = {t.name: JobTable(t.instance()) for t in infos}
        # The snapshots read on a connection of their own, so that pages go on while one is
        # refreshed; their JobTables' key_source SQL is read now (catalog queries, on the
        # pages' connection), not by the thread that refreshes them.
        self.reader = db.another_connection(dj.conn())
        self._prepare_reader()
        self.readers = {t.name: JobTable(t.instance(), self.reader) for t in infos}
        for jt in self.readers.values():
            if jt.supported:
                key_source_of(type(jt.table))
        reading = threading.Lock()
        self.counts = Snapshot("counts", self._on_reader(self._count), reading)
        self.groups = Snapshot("failures by cause", self._on_reader(lambda: queries.error_groups(
            {name: jt for name, jt in self.readers.items() if jt.supported})), reading)
        self.plans = Snapshot("plans", self._on_reader(self._plan), reading)
        self.keeper = Keeper([self.counts, self.groups, self.plans])
        self.identity = pipeline.identity(pipeline.load(spec))
        self.aliases = {spec, pipeline.resolve_spec(spec), self.identity[0]}
        self.templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape())
        self.templates.filters["keyjson"] = lambda key: json.dumps(key, default=str)  # a str: escaped where it goes
        self.templates.filters["when"] = lambda t: t.strftime("%Y-%m-%d %H:%M:%S") if t else ""
        self.templates.globals.update(colours=COLOURS, statuses=["done", "pending", "reserved", "error", "ignore"],
                                      spec=spec, database=target.describe(), ttl=TTL)
        self._missing: tuple[float, str | None] = (0.0, None)
        self.meter = Meter()
        for conn in {id(c): c for c in [*(t.cls.connection for t in infos), dj.conn(), self.reader]}.values():
            self.meter.watch(conn)

    # -------------------------------------------------------------- snapshots
    def _prepare_reader(self) -> None:
        # PostgreSQL JIT-compiles a statement whose estimated cost is high, and that of one
        # statement over every table is the sum of theirs: compiling one (an earlier form of
        # the counts, 1M jobs rows) took 3.7 s for 0.4 s of work
        if self.reader.adapter.backend == "postgresql":
            self.reader.query("SET jit = off")

    def _on_reader(self, compute: Callable[[], Any]) -> Callable[[], Any]:
        """``compute``, on the reader connection opened again if the server dropped it (a restart)."""

        def run() -> Any:
            if db.is_lost(None, self.reader):
                self.reader.connect()
                self._prepare_reader()
            return compute()

        return run

    def _count(self) -> dict[str, dict[str, int]]:
        """The counts of every table with a jobs key, in one statement."""
        names = [name for name, jt in self.readers.items() if jt.supported]
        return dict(zip(names, counts_of([self.readers[name] for name in names])))

    def _plan(self) -> dict[str, TablePlan]:
        """The plans of every table with a jobs key (counts read at once, then shard bounds)."""
        return {name: plan_table(self.table(name), Restriction(), jt=self.readers[name], counts=c)
                for name, c in self._count().items()}

    def status(self) -> tuple[list[dict[str, Any]], datetime.datetime]:
        """``status --json``'s rows and when their counts were taken. Tables without a jobs
        key are counted now (by DataJoint, on the pages' connection)."""
        counts, taken = self.counts.get()
        found = {t.name: counts[t.name] if t.name in counts else self.jts[t.name].counts() for t in self.infos}
        return reports.status_rows(self.infos, Restriction(), found), taken

    def plan(self) -> list[TablePlan]:
        plans, _ = self.plans.get()
        return [plans[t.name] if t.name in plans else plan_table(t, Restriction()) for t in self.infos]

    def failures(self) -> tuple[list[queries.Group], datetime.datetime]:
        """The failures by cause and when the jobs tables' were grouped. Those of tables
        that can have no jobs table (in the ledger) are grouped now, as ``status`` counts
        them (by DataJoint, on the pages' connection)."""
        groups, taken = self.groups.get()
        serial = {name: jt for name, jt in self.jts.items() if not jt.supported}
        return (queries.merged(groups, queries.error_groups(serial)) if serial else groups), taken

    def servers(self) -> list[dict[str, Any]]:
        """The pipeline's ``serve`` processes, as ``status --json`` lists them."""
        return reports.server_rows(self.identity[1])

    def warm(self, plans: bool = True) -> None:
        """Take the snapshots, so that the next page waits for none: at the start, and
        after an action (then after ``invalidate``). The plans (only /api/plan shows them,
        and the slowest) only if ``plans``: after an action the keeper takes them again if
        /api/plan was asked for lately."""
        self.counts.warm()
        self.groups.warm()
        if plans:
            self.plans.warm()

    def invalidate(self) -> None:
        """After an action: what was taken before it is not shown again."""
        for snapshot in (self.counts, self.groups, self.plans):
            snapshot.invalidate()

    # ------------------------------------------------------------- who may act
    def missing_privilege(self) -> str | None:
        """The privilege this account lacks to change the jobs tables (None: it has them).
        Asked again after a minute: a grant may come while the dashboard runs."""
        at, missing = self._missing
        if time.monotonic() - at > 60:
            missing = next((m for m in map(queries.can_write, self.jts.values()) if m), None)
            self._missing = (time.monotonic(), missing)
        return missing

    def holds_token(self, request: Request) -> bool:
        given = request.cookies.get(COOKIE, "")
        auth = request.headers.get("authorization", "")
        if auth.startswith("Bearer "):
            given = auth[len("Bearer "):]
        return bool(given) and hmac.compare_digest(given.encode(), self.token.encode())

    def refusal(self, request: Request) -> str | None:
        """Why this POST may not act (None: it may)."""
        missing = self.missing_privilege()
        if missing:
            return f"the database account lacks the privilege {missing}: the dashboard only reads"
        origin = request.headers.get("origin")
        own = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin is not None and origin != own:
            return f"Origin {origin} is not this dashboard ({own})"
        if origin is None and not request.headers.get("authorization"):
            return "a browser's POST must say its Origin"
        if not self.holds_token(request):
            return "this action needs the dashboard's token (open the URL printed at start, or send Authorization: Bearer TOKEN)"
        return None

    # ---------------------------------------------------------------- helpers
    def render(self, request: Request, name: str, **context: Any) -> HTMLResponse:
        may_act = self.holds_token(request) and not self.missing_privilege()
        page = self.templates.get_template(name).render(
            request=request, may_act=may_act, readonly=self.missing_privilege(), path=request.url.path,
            here=request.url.path + (f"?{request.url.query}" if request.url.query else ""),
            msg=request.query_params.get("msg", ""), **context)
        return HTMLResponse(page)

    def table(self, name: str) -> pipeline.TableInfo | None:
        return next((t for t in self.infos if t.name == name), None)

    def overview(self) -> dict[str, Any]:
        rows, taken = self.status()
        return {"rows": rows, "graph": view.graph(self.infos, {r["table"]: r for r in rows}), "taken": taken}


def keys_of(text: str | None) -> list[dict] | None:
    """A key restriction from a form or query (JSON, as --key takes it)."""
    return pipeline.parse_keys(text) if text else None


def back(request_next: str | None, msg: str) -> RedirectResponse:
    """Redirect after an action, to a path on this server only."""
    target = request_next if request_next and request_next.startswith("/") and not request_next.startswith("//") else "/"
    sep = "&" if "?" in target else "?"
    return RedirectResponse(f"{target}{sep}msg={urllib.parse.quote(msg)}", status_code=303)


def build(dash: Dashboard) -> Starlette:
    """The application: pages, fragments, actions, the API, /metrics and /healthz."""

    def locked(handler: Callable[[Request], Response]) -> Callable[[Request], Response]:
        def run(request: Request) -> Response:
            with dash.lock:
                return handler(request)

        return dash.meter.timed(run)

    def overview(request: Request) -> Response:
        if request.query_params.get("token") is not None:  # the URL printed at start: keep the token, drop it from the URL
            response = RedirectResponse("/", status_code=303)
            if hmac.compare_digest(request.query_params["token"].encode(), dash.token.encode()):
                response.set_cookie(COOKIE, dash.token, httponly=True, samesite="strict")
            return response
        return dash.render(request, "overview.html", **dash.overview())

    def overview_fragment(request: Request) -> Response:
        return dash.render(request, "overview_body.html", **dash.overview())

    def failures(request: Request) -> Response:
        groups, taken = dash.failures()
        return dash.render(request, "failures.html", groups=groups, taken=taken)

    def failure_group(request: Request) -> Response:
        cause = request.query_params.get("cause", "")
        group = next((g for g in dash.failures()[0] if g.cause == cause), None)
        # the tables the group has (every table, if it is newer than the snapshot), until GROUP_KEYS are found
        keys: list[dict] = []
        for name, jt in dash.jts.items():
            if len(keys) < GROUP_KEYS and (group is None or name in group.tables):
                keys += [{"table": name, **item, "log": queries.log_of(item)}
                         for item in queries.group_keys(jt, cause, limit=GROUP_KEYS - len(keys))]
        return dash.render(request, "group.html", cause=cause, keys=keys, total=max(len(keys), group.count if group else 0))

    def runs(request: Request) -> Response:
        found = ledger.recent_runs(dash.identity, dash.aliases, limit=50)
        shards = [s for r in found if r["state"] in ("running", "submitted") for s in ledger.shards_of(r["run_id"])]
        owners = sorted(queries.orphans(dash.jts), key=lambda o: not o["gone"])  # those reconcile releases first
        gone = [o for o in owners if o["gone"]]
        return dash.render(request, "runs.html", runs=found, shards=shards, owners=owners[:OWNERS], more=owners[OWNERS:],
                           gone=len(gone), gone_keys=sum(o["keys"] for o in gone), servers=dash.servers(),
                           lost_after=reports.LOST_AFTER)

    def keys(request: Request) -> Response:
        info = dash.table(request.path_params["name"])
        if info is None:
            return PlainTextResponse(f"no table {request.path_params['name']} in {dash.spec}", status_code=404)
        status = request.query_params.get("status") or None
        if status is not None and status not in STATUSES:
            return PlainTextResponse(f"status must be one of {', '.join(STATUSES)}", status_code=400)
        try:
            restriction = Restriction(pipeline.check_key_attributes(keys_of(request.query_params.get("key")), [info]))
            after = json.loads(request.query_params["after"]) if request.query_params.get("after") else None
            offset = max(0, int(request.query_params.get("offset") or 0))
        except (UsageError, ValueError) as err:
            return PlainTextResponse(f"bad key: {getattr(err, 'message', err)}", status_code=400)
        jt = dash.jts[info.name]
        if jt.supported:  # its jobs table's rows, by keyset; the table's counts from the snapshot
            rows = queries.key_page(jt, status, restriction, after)
            more = {"after": json.dumps(rows[-1]["raw"], default=str)} if len(rows) == queries.PAGE else {}
            every, taken = dash.counts.get()
            counts = every.get(info.name)
        else:  # its keys not made, by offset; counted now, as status counts it
            rows = serial_keys.key_page(jt, status, restriction, offset)
            more = {"offset": offset + queries.PAGE} if len(rows) == queries.PAGE else {}
            counts, taken = jt.counts(restriction), None
        return dash.render(request, "keys.html", table=info.name, rows=rows, status=status or "",
                           key=request.query_params.get("key", ""), serial=not jt.supported, counts=counts,
                           taken=taken, more=more)

    async def act(request: Request) -> Response:
        form = await request.form()  # read here (async); the database work in the thread pool, under the lock
        return await run_in_threadpool(dash.meter.timed(lambda r: perform(r, request.path_params["verb"], dict(form))),
                                       request)

    def perform(request: Request, verb: str, form: dict) -> Response:
        with dash.lock:
            refused = dash.refusal(request)
            if refused:
                return PlainTextResponse(f"403 Forbidden: {refused}", status_code=403)
            try:
                response = act_on(request, verb, form)
            finally:
                dash.invalidate()
        # taken again before the answer, so that the page it leads to is fast and shows the
        # action's effect; outside the pages' lock (on the snapshots' connection): other
        # viewers' pages go on meanwhile
        dash.warm(plans=False)
        return response

    def act_on(request: Request, verb: str, form: dict) -> Response:
        tables = [t for t in dash.infos if not form.get("table") or t.name == form["table"]]
        if verb == "reconcile":
            instances = [t.instance() for t in tables]
            r = reconcile_all(instances, Policy(), backends.hint(instances))
            return back(form.get("next"), f"reconcile: {r['released'] + r['charged'] - r['errors']} keys back to pending, "
                                          f"{r['completed']} already done, {r['errors']} became errors")
        if verb not in ("retry", "ignore"):
            return PlainTextResponse(f"no action {verb}", status_code=404)
        if verb == "ignore" and not form.get("key") and form.get("cause") is None:
            return PlainTextResponse("ignore needs a key or a cause (as the CLI's ignore needs --key)", status_code=400)
        try:
            chosen = pipeline.check_key_attributes(keys_of(form.get("key")), tables)
        except UsageError as err:
            return PlainTextResponse(f"bad key: {err.message}", status_code=400)
        moved = 0
        for t in tables:
            jt = dash.jts[t.name]
            if form.get("cause") is not None:  # a group: its keys, in bounded chunks
                found = [item["key"] for item in queries.group_keys(jt, form["cause"], limit=None, stack=False)]
                batches = [found[i:i + 1000] for i in range(0, len(found), 1000)]
            else:
                batches = [chosen]
            for batch in batches:
                restriction = Restriction(batch)
                moved += jt.retry(restriction) if verb == "retry" else jt.ignore(restriction)
        word = "back to pending" if verb == "retry" else "now ignored"
        return back(form.get("next"), f"{moved} keys {word}")

    def api_status(request: Request) -> Response:
        return JSONResponse(ledger.as_json(dash.status()[0]))

    def api_errors(request: Request) -> Response:
        return JSONResponse(ledger.as_json(reports.error_rows(dash.infos, Restriction(),
                                                             request.query_params.get("match"),
                                                             request.query_params.get("stack") == "1")))

    def api_plan(request: Request) -> Response:
        return JSONResponse(ledger.as_json(reports.plan_json(dash.infos, dash.plan())))

    def metrics(request: Request) -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(view.metrics(dash), media_type=CONTENT_TYPE_LATEST)

    def healthz(request: Request) -> Response:
        try:
            dash.infos[0].instance().connection.query("SELECT 1").fetchone() if dash.infos else None
        except Exception as err:
            return PlainTextResponse(f"database unreachable: {type(err).__name__}", status_code=503)
        return PlainTextResponse("ok")

    pages = [("/", overview), ("/fragment/overview", overview_fragment), ("/failures", failures),
             ("/failures/group", failure_group), ("/runs", runs), ("/tables/{name}", keys),
             ("/api/status", api_status), ("/api/errors", api_errors), ("/api/plan", api_plan),
             ("/metrics", metrics), ("/healthz", healthz)]
    routes = [Route(p, locked(h), methods=["GET"]) for p, h in pages]
    routes += [Route("/actions/{verb}", act, methods=["POST"]),
               Mount("/static", StaticFiles(directory=HERE / "static"), name="static")]

    def start() -> None:
        try:
            with dash.lock:
                dash.missing_privilege()  # (a statement per table, on the pages' connection)
        except Exception as err:  # the first page asks again, and shows the error
            log.warning("dashboard: reading the account's privileges failed: %s", err)
        dash.warm()
        dash.keeper.start()

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        """Before the server accepts a request: what the first page needs, so that it waits
        for nothing; then the snapshots are kept fresh while they are viewed."""
        await run_in_threadpool(start)
        try:
            yield
        finally:
            await run_in_threadpool(dash.keeper.stop)

    return Starlette(routes=routes, lifespan=lifespan)
