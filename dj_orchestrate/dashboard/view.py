"""What the overview draws (the pipeline as an SVG graph, levels left to right) and what
/metrics says, computed from counts the pages already read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import pipeline

BOX_W, BOX_H, GAP_X, GAP_Y, PAD = 210, 64, 70, 18, 10
ORDER = ("done", "pending", "reserved", "error", "ignore")


@dataclass
class Box:
    name: str
    x: int
    y: int
    counts: dict[str, Any]
    bars: list[tuple[str, float, float]]  # (status, x offset, width)


@dataclass
class Edge:
    x1: int
    y1: int
    x2: int
    y2: int
    gate: bool  # found in make's code, not a foreign key


def graph(infos: list[pipeline.TableInfo], counts: dict[str, dict]) -> dict[str, Any]:
    """Boxes in columns by level, each with its share of done/pending/reserved/error/ignore,
    and the edges between selected tables: foreign keys, and gates (drawn dashed)."""
    boxes: dict[str, Box] = {}
    for col, level in enumerate(pipeline.levels_of(infos)):
        for row, t in enumerate(level):
            c = counts.get(t.name, {})
            total = max(1, sum(int(c.get(s, 0)) for s in ORDER))
            bars, at = [], 0.0
            for s in ORDER:
                width = (BOX_W - 2 * PAD) * int(c.get(s, 0)) / total
                if width:
                    bars.append((s, at, width))
                at += width
            boxes[t.full_name] = Box(t.name, PAD + col * (BOX_W + GAP_X), PAD + row * (BOX_H + GAP_Y), c, bars)
    edges = []
    for t in infos:
        for up in sorted(t.upstream):
            if up in boxes:
                a, b = boxes[up], boxes[t.full_name]
                edges.append(Edge(a.x + BOX_W, a.y + BOX_H // 2, b.x, b.y + BOX_H // 2, boxes[up].name in t.hidden))
    width = max((b.x for b in boxes.values()), default=0) + BOX_W + PAD
    height = max((b.y for b in boxes.values()), default=0) + BOX_H + PAD
    return {"boxes": list(boxes.values()), "edges": edges, "width": width, "height": height,
            "box_w": BOX_W, "box_h": BOX_H, "pad": PAD}


def metrics(dash: Any) -> bytes:
    """The Prometheus text: keys by table and status, keys made in the last hour, make
    durations, live workers, each server's heartbeat age, whether the database answers.
    A registry per scrape: nothing is kept between them."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily

    from .. import durations, queries

    families = []
    up = GaugeMetricFamily("djo_database_up", "1 when the database answered this scrape")
    try:
        rows = dash.status()[0]
        workers = queries.live_workers({r["table"]: dash.jts[r["table"]] for r in rows if r["reserved"]})
        stats = durations.totals([t.name for t in dash.infos])
        servers = dash.servers()
        up.add_metric([], 1)
    except Exception:
        up.add_metric([], 0)
        rows, workers, stats, servers = [], {}, {}, []
    families.append(up)
    keys = GaugeMetricFamily("djo_keys", "Keys of a table by status", labels=["table", "status"])
    for r in rows:
        for s in ORDER:
            keys.add_metric([r["table"], s], r[s])
    families.append(keys)
    made = GaugeMetricFamily("djo_keys_made_last_hour", "Keys of a table that workers made in this minute and the 59 "
                             "before it", labels=["table"])
    for r in rows:
        made.add_metric([r["table"]], r["made_last_hour"])
    families.append(made)
    live = GaugeMetricFamily("djo_workers", "Live workers holding keys of a table", labels=["table"])
    for t in dash.infos:
        live.add_metric([t.name], workers.get(t.name, 0))
    families.append(live)
    hist = HistogramMetricFamily("djo_make_duration_seconds", "Make durations recorded by workers", labels=["table"])
    for name, s in stats.items():
        cumulative, running = [], 0
        for bound, n in zip(durations.BOUNDS, s["buckets"]):
            running += n
            cumulative.append((str(bound) if bound != float("inf") else "+Inf", running))
        hist.add_metric([name], cumulative, sum_value=s["sum"])
    families.append(hist)
    beats = GaugeMetricFamily("djo_server_heartbeat_age_seconds", "Seconds since a serve process of the pipeline "
                              "beat, by server (host:pid:start) and role (leader, standby, lost)", labels=["server", "role"])
    for s in servers:
        beats.add_metric([s["server"], s["role"]], s["beat_age_s"])
    families.append(beats)

    class Collector:
        def collect(self):
            return families

    registry = CollectorRegistry()
    registry.register(Collector())
    return generate_latest(registry)
