"""The demo's load generator against a real gunicorn: its requests arrive, and what it
reports is what the terminal view reads; what the view makes of alerts, hints and signals."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

import pytest
from sightline_appliance import alerts as _alerts
from sightline_appliance import queries as q
from sightline_appliance.demo import load as load_module
from sightline_appliance.demo import view
from sightline_appliance.demo.load import Load, Plan, format_counts, parse_report

from .servers import gunicorn


def test_load_loses_nothing_to_connections_the_server_closed_while_idle(tmp_path: Path) -> None:
    """At a rate that leaves each of the load's connections idle for about as long as
    gunicorn keeps one alive (2 s), no request fails: a connection idle too long is
    replaced before use, and a GET that meets one closed anyway is sent again."""
    args = ["--worker-class", "gthread", "--threads", "2", "--keep-alive", "2"]
    with gunicorn("tests.apps.flask_app:app", {}, args, tmp_path) as url:
        plan = Plan(rate=3.0, burst_rate=3.0, burst_start=1000.0)
        load = Load(url, plan, concurrency=6)
        counts = load.run(duration=12, report_every=100)
    assert counts["sent"] >= 20
    assert counts["failed"] == 0, counts
    answered = sum(n for key, n in counts.items() if key.endswith("xx"))
    assert answered == counts["sent"]


@pytest.mark.parametrize(("method", "retried"), [("GET", True), ("POST", False)])
def test_only_idempotent_requests_are_sent_again_on_a_connection_the_server_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str, retried: bool
) -> None:
    """With connections kept far longer than the server keeps them (1 s), a GET that meets
    one the server closed is sent again on a fresh one and answered; a POST is not sent
    again (it may have been applied) and counts as failed."""
    monkeypatch.setattr(load_module, "_REUSE_WITHIN", 3600.0)
    args = ["--worker-class", "gthread", "--threads", "2", "--keep-alive", "1"]
    with gunicorn("tests.apps.flask_app:app", {}, args, tmp_path) as url:
        load = Load(url, Plan(), concurrency=1)
        load.workers[0].start()
        for _ in range(3):  # each after the server closed the connection the last one used
            load.pending.put((method, "/health" if method == "GET" else "/orders"))
            time.sleep(1.8)
        load.pending.put(None)
        load.workers[0].join(10)
    counts = load.counts
    assert counts["sent"] == 3, counts
    if retried:
        assert counts["retried"] == 2, counts
        assert (counts["failed"], counts["2xx"]) == (0, 3), counts
    else:
        assert counts["retried"] == 0, counts
        # The second met the closed connection; the third went on a new one.
        assert (counts["failed"], counts["2xx"]) == (1, 2), counts


def test_report_lines_read_back_as_the_counts_they_print() -> None:
    """A report line the load prints parses back to the same counts; sent and failed are
    always present, so the view can tell a quiet load from a broken one."""
    counts = Counter({"sent": 120, "failed": 3, "retried": 2, "2xx": 110, "5xx": 5})
    line = f"load:    25 s burst    {format_counts(counts)}"
    assert parse_report(line) == counts
    assert parse_report(f"load:     5 s baseline {format_counts(Counter())}") == Counter(
        {"sent": 0, "failed": 0}
    )
    assert parse_report("load: failed GET /products/3: ConnectionRefusedError(111)") is None
    assert parse_report("gunicorn: booting worker") is None


def test_view_shows_alerts_and_the_scaling_hint_with_its_reasons() -> None:
    """The view lists firing alerts in their Alertmanager groups before pending ones, and
    per service the replicas it runs, the recommendation, the direction and each reason's need,
    largest first, and says when saturated database pools make more replicas no answer;
    a signal that is off says why."""
    snapshot = view.Snapshot()
    snapshot.values = {
        q.ACTUAL_REPLICAS.title: {("shop",): 2.0, ("shop-worker",): 1.0},
        q.RECOMMENDED_REPLICAS.title: {("shop",): 5.0, ("shop-worker",): 1.0},
        q.REQUIRED_REPLICAS.title: {("shop", "concurrency"): 5.0, ("shop", "cpu"): 3.0},
        q.POOL_UTILISATION.title: {("shop",): 0.95, ("shop-worker",): 0.95},
        q.EXPORTED.title: {("shop", "traces"): 12.5},
        q.EXPORT_FAILURES.title: {("shop", "traces", "connection"): 0.5},
    }
    snapshot.alerts = _alerts.Alerts(
        firing=[
            _alerts.Group(
                {"alertname": "A", "job": "shop", "severity": "critical"},
                "page",
                [_alerts.Alert({"alertname": "A", "job": "shop", "severity": "critical",
                                "instance": "a:1"}, "", "2026-12-03T21:40:12.5Z", "firing")],
            )
        ],
        pending=[
            _alerts.Group(
                {"alertname": "B", "job": "shop"}, "",
                [_alerts.Alert({"alertname": "B", "job": "shop"}, "", "", "pending")],
            )
        ],
    )  # fmt: skip
    signals = [
        view.Signal("traces", "the Collector at http://127.0.0.1:4318"),
        view.Signal("logs", "", "no Loki on this machine"),
    ]
    text = view.render(snapshot, signals=signals)
    lines = text.splitlines()
    alerts = lines[lines.index("ALERTS") + 1 :][:6]
    assert alerts == [
        "FIRING (as Alertmanager groups and routes them)",
        "  {alertname=A, job=shop, severity=critical} -> page  (1 alert)",
        "    A instance=a:1  since 21:40:12 UTC",
        "PENDING (in Prometheus until their `for` passes; not notified yet)",
        "  {alertname=B, job=shop}  (1 alert)",
        "    B",
    ]
    assert re.search(r"^shop +2 +5  scale up: concurrency needs 5, cpu needs 3$", text, re.M), text
    assert re.search(r"^shop-worker +1 +1  keep$", text, re.M), text
    # Scaling up past a saturated pool is called out; keeping the count is not.
    assert re.search(r"^ +but its database pools are 95% in use: more replicas", text, re.M)
    assert text.count("database pools") == 1
    assert re.search(
        r"^traces +FAILING +the Collector at http://127.0.0.1:4318: 12.5/s delivered$", text, re.M
    )
    assert re.search(r"^ +0.50 export requests/s failing \(connection\)$", text, re.M)
    assert re.search(r"^logs +off +no Loki on this machine$", text, re.M)
