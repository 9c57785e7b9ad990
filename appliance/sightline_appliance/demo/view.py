"""The terminal view of ``sightline demo``: golden signals read back from Prometheus.

Every number is the result of a query in ``sightline_appliance.queries``, the PromQL the Grafana
dashboards are generated from, over a one-minute window; below them, where each signal
goes and whether it flows, the alerts firing or pending, and the scaling hints.
"""

from __future__ import annotations

import math
import urllib.parse
from collections.abc import Sequence
from dataclasses import dataclass, field

from .. import alerts
from .. import queries as q
from ..stack.processes import API_FAILURES, get_json

WINDOW = "1m"

Key = tuple[str, ...]


@dataclass
class Snapshot:
    """One reading of every signal, keyed by the query's ``by`` labels."""

    values: dict[str, dict[Key, float]] = field(default_factory=dict)
    alerts: alerts.Alerts = field(default_factory=alerts.Alerts)
    error: str = ""

    def get(self, query: q.Query, key: Key) -> float | None:
        return self.values.get(query.title, {}).get(key)

    def keys(self, query: q.Query) -> list[Key]:
        return sorted(self.values.get(query.title, {}))


def read(
    prometheus: str,
    alertmanager: str,
    sel: str = "",
    timeout: float = 3.0,
    names: tuple[str, str] = ("Prometheus", "Prometheus"),
) -> Snapshot:
    """The demo's signals and the stack's alerts from ``prometheus``, which ``names`` name
    as the store queried and the ruler answering for alerts (VictoriaMetrics and vmalert,
    whose alerts it proxies, under the long-term storage layer)."""
    store, ruler = names
    snapshot = Snapshot()
    try:
        for query in (*q.GOLDEN_SIGNALS, *q.STATUS):
            params = urllib.parse.urlencode({"query": query.render(sel, WINDOW)})
            payload = get_json(f"{prometheus}/api/v1/query?{params}", timeout)
            series: dict[Key, float] = {}
            for item in payload.get("data", {}).get("result", []):
                key = tuple(item["metric"].get(label, "") for label in query.by)
                series[key] = float(item["value"][1])
            snapshot.values[query.title] = series
    except API_FAILURES as exc:
        snapshot.error = f"{store} at {prometheus} did not answer as expected: {exc!r}"
        return snapshot
    # Every alert of the stack, not only the demo's: a user's own service may be down.
    snapshot.alerts = alerts.read(prometheus, alertmanager, timeout, ruler)
    return snapshot


def _num(value: float | None, fmt: str, scale: float = 1.0) -> str:
    if value is None or math.isnan(value) or math.isinf(value):
        return "-"
    return fmt.format(value * scale)


@dataclass(frozen=True)
class Signal:
    """Where one signal goes from the demo, or why it does not."""

    name: str  # metrics, traces, logs
    to: str  # a description of the destination; "" when off
    off: str = ""  # why it is off, and how to turn it on


def render(
    snapshot: Snapshot,
    header: Sequence[str] = (),
    signals: Sequence[Signal] = (),
) -> str:
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
            inflight = _num(snapshot.get(q.INFLIGHT, (job,)), "{:.1f}")
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
    if signals:
        lines += ["", "SIGNALS", *_signals(snapshot, signals)]
    lines += ["", "ALERTS", *alerts.render(snapshot.alerts)]
    lines += ["", "SCALING (sightline:recommended_replicas:count)", *_scaling(snapshot)]
    return "\n".join(lines)


def _signals(snapshot: Snapshot, signals: Sequence[Signal]) -> list[str]:
    """One line per signal: where it goes and whether it flows, or why it is off; then
    one line per failure or drop reason the agents report."""
    lines = []
    for signal in signals:
        if not signal.to:
            lines.append(f"{signal.name:<9}off      {signal.off}")
            continue
        if signal.name == "metrics":
            lines.append(f"{signal.name:<9}on       {signal.to}")
            continue
        sent = _by(snapshot, q.EXPORTED, signal.name)
        failed = _by(snapshot, q.EXPORT_FAILURES, signal.name)
        dropped = _by(snapshot, q.DROPPED, signal.name)
        state = "FAILING" if failed or dropped else "on"
        flow = f"{sum(sent.values()):.1f}/s delivered" if sent else "nothing delivered yet"
        lines.append(f"{signal.name:<9}{state:<9}{signal.to}: {flow}")
        for reason, rate in sorted(failed.items()):
            lines.append(f"{'':<18}{rate:.2f} export requests/s failing ({reason})")
        for reason, rate in sorted(dropped.items()):
            lines.append(f"{'':<18}{rate:.2f}/s dropped ({reason})")
    return lines


def _by(snapshot: Snapshot, query: q.Query, signal: str) -> dict[str, float]:
    """``query``'s per-second rates for ``signal``, summed over jobs, by reason; only
    those above zero."""
    found: dict[str, float] = {}
    for key, value in snapshot.values.get(query.title, {}).items():
        labels = dict(zip(query.by, key, strict=True))
        if labels.get("signal") == signal and value > 0:
            reason = labels.get("reason", "")
            found[reason] = found.get(reason, 0.0) + value
    return found


def _scaling(snapshot: Snapshot) -> list[str]:
    recommended = snapshot.values.get(q.RECOMMENDED_REPLICAS.title, {})
    if not recommended:
        return ["(no recommendation yet: the rules need a few minutes of data)"]
    lines = [f"{'SERVICE':<14}{'REPLICAS':>9}{'RECOMMENDED':>13}  WHY"]
    required = snapshot.values.get(q.REQUIRED_REPLICAS.title, {})
    for (job,), wanted in sorted(recommended.items()):
        now = snapshot.get(q.ACTUAL_REPLICAS, (job,))
        reasons = sorted(
            ((reason, value) for (j, reason), value in required.items() if j == job),
            key=lambda item: (-item[1], item[0]),
        )
        change = (
            "keep"
            if now is None or wanted == now
            else ("scale up" if wanted > now else "scale down")
        )
        why = ", ".join(f"{reason} needs {value:.0f}" for reason, value in reasons)
        lines.append(
            f"{job:<14}{_num(now, '{:.0f}'):>9}{wanted:>13.0f}  {change}"
            + (f": {why}" if why else "")
        )
        pool = snapshot.get(q.POOL_UTILISATION, (job,))
        if pool is not None and pool >= q.POOL_SATURATED and (now is None or wanted > now):
            lines.append(
                f"{'':<38}but its database pools are {pool:.0%} in use: more replicas "
                "open more connections; raise the pools or the database first"
            )
    return lines
