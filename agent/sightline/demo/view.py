"""The terminal view of ``sightline demo``: golden signals read back from Prometheus.

Every number is the result of a query in ``sightline._queries``, the PromQL the Grafana
dashboards are generated from, over a one-minute window.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field

from .. import _queries as q
from .._stack.processes import LOCAL

WINDOW = "1m"

Key = tuple[str, ...]


@dataclass
class Snapshot:
    """One reading of every signal, keyed by the query's ``by`` labels."""

    values: dict[str, dict[Key, float]] = field(default_factory=dict)
    error: str = ""

    def get(self, query: q.Query, key: Key) -> float | None:
        return self.values.get(query.title, {}).get(key)

    def keys(self, query: q.Query) -> list[Key]:
        return sorted(self.values.get(query.title, {}))


def read(prometheus: str, sel: str = "", timeout: float = 3.0) -> Snapshot:
    snapshot = Snapshot()
    for query in q.GOLDEN_SIGNALS:
        params = urllib.parse.urlencode({"query": query.render(sel, WINDOW)})
        try:
            with LOCAL.open(f"{prometheus}/api/v1/query?{params}", timeout=timeout) as response:
                payload = json.load(response)
        except (OSError, ValueError) as exc:
            snapshot.error = f"Prometheus at {prometheus} did not answer: {exc}"
            return snapshot
        series: dict[Key, float] = {}
        for item in payload.get("data", {}).get("result", []):
            key = tuple(item["metric"].get(label, "") for label in query.by)
            series[key] = float(item["value"][1])
        snapshot.values[query.title] = series
    return snapshot


def _num(value: float | None, fmt: str, scale: float = 1.0) -> str:
    if value is None or math.isnan(value) or math.isinf(value):
        return "-"
    return fmt.format(value * scale)


def render(snapshot: Snapshot, header: Sequence[str] = ()) -> str:
    lines = list(header)
    if snapshot.error:
        return "\n".join([*lines, snapshot.error])
    lines.append("")
    lines.append(f"{'SERVICE':<14}{'ROUTE':<28}{'REQ/S':>8}{'ERRORS':>9}{'P95':>10}")
    routes = snapshot.keys(q.REQUEST_RATE)
    for key in routes:
        job, route = key
        lines.append(
            f"{job:<14}{route[:27]:<28}"
            f"{_num(snapshot.get(q.REQUEST_RATE, key), '{:.1f}'):>8}"
            f"{_num(snapshot.get(q.ERROR_RATIO, key), '{:.1f} %', 100):>9}"
            f"{_num(snapshot.get(q.LATENCY_P95, key), '{:.0f} ms', 1000):>10}"
        )
    if not routes:
        lines.append("(no requests scraped yet)")
    lines.append("")
    lines.append(f"{'SERVICE':<14}{'IN FLIGHT / CAPACITY':<28}{'WORKERS BUSY / CAPACITY':<24}")
    jobs = sorted({k[0] for k in snapshot.keys(q.CAPACITY) + snapshot.keys(q.WORKER_UTILISATION)})
    for job in jobs:
        web = ""
        capacity = snapshot.get(q.CAPACITY, (job,))
        if capacity is not None:
            inflight = _num(snapshot.get(q.INFLIGHT, (job,)), "{:.0f}")
            ratio = _num(snapshot.get(q.INFLIGHT_RATIO, (job,)), "{:.0f} %", 100)
            web = f"{inflight} / {capacity:.0f} ({ratio})"
        busy = _num(snapshot.get(q.WORKER_UTILISATION, (job,)), "{:.0f} %", 100)
        lines.append(f"{job:<14}{web:<28}{busy if busy != '-' else '':<24}")
    lines.append("")
    lines.append(
        f"{'SERVICE':<14}{'QUEUE':<12}{'DEPTH':>7}{'WAIT P95':>10}{'TASKS/S':>9}{'FAILED':>9}"
    )
    queues = sorted(set(snapshot.keys(q.QUEUE_DEPTH)) | set(snapshot.keys(q.TASK_RATE)))
    for key in queues:
        job, queue = key
        lines.append(
            f"{job:<14}{queue[:11]:<12}"
            f"{_num(snapshot.get(q.QUEUE_DEPTH, key), '{:.0f}'):>7}"
            f"{_num(snapshot.get(q.QUEUE_WAIT_P95, key), '{:.0f} ms', 1000):>10}"
            f"{_num(snapshot.get(q.TASK_RATE, key), '{:.1f}'):>9}"
            f"{_num(snapshot.get(q.TASK_FAILURE_RATIO, key), '{:.1f} %', 100):>9}"
        )
    if not queues:
        lines.append("(no queues scraped yet)")
    return "\n".join(lines)
