"""How keys flow between the tables one worker serves: no level barrier.

A key is ready as soon as it is in its table's ``key_source``, whatever still runs
elsewhere in the pipeline. So a worker serving several tables claims from whichever
table has ready keys, and when it has made keys of a table it enqueues, before it marks
them done, the keys they added to each table whose ``key_source`` reads that table
(``JobTable.enqueue(after=...)``: the cost grows with the keys made, not with the tables;
a fan-in's key appears only once all of its parts are there, since ``key_source`` says so).

What a ``key_source`` does not show, a worker cannot see become ready key by key: an
upstream table reached only through a secondary foreign key, or a table its ``make`` reads
(``TableInfo.hidden``: always, since a make may read all of it). Such a table, and every
table upstream of it, *gates* its dependent: no key of the dependent is claimed until they
have nothing left due or reserved (then it is enqueued whole), as every table did in the
level-by-level runs. Its keys are still queued as they appear (progress counts them).
A table its make reads that the worker does not serve (not selected) gates it too: it
opens only once that table has no key missing or reserved (``waiting`` says what a
table that cannot open waits for, so that a run ends instead of polling for ever).

``order`` says which open table a claim tries first:

* ``upstream`` (the default): the shallowest table first. Every upstream key is started
  as early as it can be, which exposes the most parallelism and starts a straggler as
  early as possible (the makespan); downstream keys are taken whenever no upstream key
  is ready, so once the upstream queue is claimed, results follow each upstream key.
* ``downstream``: the deepest table first. A key's downstream work is done before new
  upstream work starts, so the first final results arrive sooner and few made-but-
  unconsumed intermediate keys pile up; a straggler late in the queue starts later.
* ``levels``: the level-by-level run (every table gated on all tables of lower levels),
  kept to measure what pipelining gains.
* ``declared``: one table at a time in the order the module defines them (``run`` and
  every worker apply ``pipeline.in_declared_order``), for pipelines whose makes read
  tables in ways no analysis sees.

A claim that comes back empty from a table that still has keys due (another worker's
claim was scanning past them) is tried again before the next table, so the order holds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .jobs import JobTable, Restriction, activity_of, status_counts_of
from .pipeline import TableInfo

ORDERS = ("upstream", "downstream", "levels", "declared")
BARRIERS = ("levels", "declared")  # no pipelining: every table waits for the tables before it


@dataclass(eq=False)
class Node:
    """One table as a worker sees it: who to tell when its keys are made, what it waits for."""

    info: TableInfo
    jt: JobTable
    readers: list["Node"] = field(default_factory=list)  # enqueue into these after keys here are made
    gates: list["Node"] = field(default_factory=list)  # open only when these are finished
    feeds: bool = False  # another table here waits for this one's keys
    opened: bool = True  # claimable: no gates, or gates passed (and enqueued whole)
    outside: list[JobTable] = field(default_factory=list)  # read by its make, not served here: gates too
    blocked: list[tuple[JobTable, dict[str, int]]] = field(default_factory=list)  # outside gates not finished


def build(infos: list[TableInfo], order: str = "upstream") -> list[Node]:
    """The worker's tables as nodes, in the order a claim tries them."""
    nodes = [Node(t, JobTable(t.instance()), outside=[JobTable(c()) for c in t.outside])
             for t in sorted(infos, key=lambda t: (t.level, t.order))]
    by_name = {n.info.full_name: n for n in nodes}
    by_class = {n.info.name: n.info.full_name for n in nodes}

    def closure(names: set[str]) -> set[str]:
        """The tables named and every table here upstream of them: a gate is finished
        only once nothing upstream of it can add keys to it either."""
        out: set[str] = set()
        todo = [u for u in names if u in by_name]
        while todo:
            u = todo.pop()
            if u not in out:
                out.add(u)
                todo += [x for x in by_name[u].info.upstream if x in by_name]
        return out

    covered: dict[str, set[str]] = {}
    for n in nodes:  # upstream first: covered[x] is known for every table n reads
        read = [x for x in nodes if x is not n and n.jt.reads(x.jt)]
        covered[n.info.full_name] = set().union(*({x.info.full_name} | x.info.upstream | covered[x.info.full_name]
                                                  for x in read if x.info.full_name in covered))
        if order in BARRIERS:
            gates = {x.info.full_name for x in nodes if x.info.level < n.info.level}
        else:  # a table its make reads is a gate even where a key_source path covers it
            hidden = {by_class[h] for h in n.info.hidden if h in by_class}
            gates = closure((n.info.upstream - covered[n.info.full_name]) | hidden)
        n.gates = [x for x in nodes if x.info.full_name in gates]
        n.opened = not n.gates and not n.outside
        for x in read:
            if order not in BARRIERS:  # a gated table's keys are queued too, claimed once it opens
                x.readers.append(n)
        for g in n.gates:
            g.feeds = True
    for n in nodes:
        n.feeds = n.feeds or bool(n.readers)
    return nodes[::-1] if order == "downstream" else nodes


def open_gates(nodes: list[Node], activity: dict[Node, tuple[bool, bool]], restriction: Restriction) -> bool:
    """Open every closed table whose gates are finished (opened, nothing due or reserved):
    enqueue it whole. ``activity``: (keys due, keys reserved) per node. True when one opened."""
    opened = False
    for n in sorted(nodes, key=lambda n: (n.info.level, n.info.order)):
        if not n.opened and all(g.opened and not any(activity[g]) for g in n.gates) and not _blocked(n, restriction):
            n.jt.enqueue(restriction)
            n.opened = opened = True
            activity[n] = (True, False)
    return opened


def _blocked(n: Node, restriction: Restriction) -> list[tuple[JobTable, dict[str, int]]]:
    """The tables outside the worker that ``n``'s make reads and that are not finished
    (keys missing or reserved, within the run's ``--key``); remembered on the node."""
    n.blocked = [(jt, c) for jt in n.outside if (c := jt.counts(restriction))["missing"] or c["reserved"]]
    return n.blocked


def waiting(infos: list[TableInfo], restriction: Restriction = Restriction()) -> list[str]:
    """What the selected tables wait for when nothing can make progress: one line per
    table with pending keys that no claim can reach (behind a table it reads that is not
    selected and has keys missing, or behind a gate that itself cannot open), and one per
    table downstream of keys in error (a fan-in's key never appears while a part failed).
    Empty while any key is reserved (here or in a table read from outside) or a key is
    ready in a table that can open: then work goes on."""
    nodes = build(infos)
    # a table with no jobs table (made under its lock) is due while it has keys missing
    queued = [n for n in nodes if n.jt.supported]
    activity = dict(zip(queued, activity_of([n.jt for n in queued])))
    activity.update({n: (bool(n.jt.counts(restriction)["missing"]), False) for n in nodes if not n.jt.supported})
    if any(reserved for _, reserved in activity.values()):
        return []
    memo: dict[Node, bool] = {}

    def can_open(n: Node) -> bool:
        if n not in memo:
            memo[n] = True  # (a cycle through key_source: not stuck on that account)
            memo[n] = not _blocked(n, restriction) and all(can_open(g) for g in n.gates)
        return memo[n]

    if any(c["reserved"] for n in nodes if not can_open(n) for _, c in n.blocked):
        return []  # someone else is making the table it reads
    if any(activity[n][0] and can_open(n) for n in nodes):
        return []
    by_name = {n.info.full_name: n for n in nodes}
    status = dict(zip(nodes, status_counts_of([n.jt for n in nodes])))
    lines = []
    for n in nodes:
        counts = status[n]
        keys = f"{counts['pending']} key{'s' * (counts['pending'] != 1)}"
        if counts["pending"] and not can_open(n):
            if n.blocked:
                jt, c = n.blocked[0]
                lines.append(f"{n.info.name}: {keys} wait for {type(jt.table).__name__} (not selected; {c['missing']} "
                             f"keys missing): run it first, or select it")
            else:
                g = next(g for g in n.gates if not can_open(g))
                lines.append(f"{n.info.name}: {keys} wait for {g.info.name}, which cannot run")
        failed = [f"{u.info.name} ({e} key{'s' * (e != 1)} failed)" for u in (by_name.get(x) for x in sorted(n.info.upstream))
                  if u is not None and (e := status[u]["error"])]
        if failed:
            lines.append(f"{n.info.name}: waits for {', '.join(failed)}: see `dj-orchestrate errors`")
    return lines
