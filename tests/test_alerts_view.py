"""`sightline alerts` and the demo's ALERTS section: what fires, grouped and routed as a
real Alertmanager (the shipped configuration) groups it, and what is pending in a real
Prometheus."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from sightline import cli
from sightline_appliance import alerts as _alerts

from .helpers import free_port
from .servers import FLAVOURS, ROOT, alertmanager, prometheus

RULES = """groups:
  - name: probe
    rules:
      - alert: ProbeOverloaded
        expr: vector(1)
        labels: {job: shop, severity: critical}
        annotations: {summary: the shop is overloaded}
      - alert: ProbeOverloaded
        expr: vector(1)
        labels: {job: shop, severity: warning}
        annotations: {summary: the shop is busy}
      - alert: ProbeSlowSoon
        expr: vector(1)
        for: 1h
        labels: {job: shop, severity: warning}
      - alert: SightlineScaleUpRecommended
        expr: vector(1)
        labels: {job: shop, severity: info}
"""


@pytest.fixture(params=FLAVOURS)
def urls(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    """A real Alertmanager with the shipped configuration, and a real Prometheus sending
    it the alerts of a rule file of three firing alerts and one pending."""
    rules = tmp_path / "probe.rules.yml"
    rules.write_text(RULES)
    with alertmanager(tmp_path, ROOT / "alerts/alertmanager.yml", request.param) as am:
        target = am.removeprefix("http://")
        with prometheus(tmp_path, {}, [rules], request.param, alertmanager=target) as prom:
            yield prom.url, am


def wait_for_groups(prom: str, am: str, count: int) -> _alerts.Alerts:
    deadline = time.monotonic() + 40
    while True:
        found = _alerts.read(prom, am)
        if sum(len(g.alerts) for g in found.firing) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_firing_alerts_are_grouped_and_routed_as_alertmanager_does(urls: Any) -> None:
    """Firing alerts are listed by Alertmanager's groups, each with its receiver (critical
    to page, the scaling hint to scaling-hints), an inhibited one marked suppressed; the
    alert whose `for` has not passed is listed as pending, from Prometheus."""
    prom, am = urls
    found = wait_for_groups(prom, am, 3)
    assert found.errors == []
    groups = {(g.receiver, tuple(sorted(g.labels.items()))): g for g in found.firing}
    assert set(groups) == {
        ("page", (("alertname", "ProbeOverloaded"), ("job", "shop"), ("severity", "critical"))),
        ("ticket", (("alertname", "ProbeOverloaded"), ("job", "shop"), ("severity", "warning"))),
        ("scaling-hints", (("alertname", "SightlineScaleUpRecommended"), ("job", "shop"))),
    }
    page = groups[next(k for k in groups if k[0] == "page")]
    ticket = groups[next(k for k in groups if k[0] == "ticket")]
    assert [a.state for a in page.alerts] == ["firing"]
    assert page.alerts[0].summary == "the shop is overloaded"
    # The critical alert inhibits the warning of the same alert and service.
    assert [a.state for a in ticket.alerts] == ["suppressed"]
    [pending] = found.pending
    assert pending.labels == {"alertname": "ProbeSlowSoon", "job": "shop", "severity": "warning"}
    text = "\n".join(_alerts.render(found))
    assert "{alertname=ProbeOverloaded, job=shop, severity=critical} -> page  (1 alert)" in text
    assert "[suppressed] ProbeOverloaded" in text
    pending_part = text.split("PENDING", 1)[1]
    assert "ProbeSlowSoon" in pending_part
    assert "ProbeOverloaded" not in pending_part


def test_alerts_command_prints_the_groups_and_json(
    urls: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """`sightline alerts --json` gives the same groups as data; without --json, text."""
    prom, am = urls
    wait_for_groups(prom, am, 3)
    assert cli.main(["alerts", "--prometheus", prom, "--alertmanager", am, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert sorted(g["receiver"] for g in data["firing"]) == ["page", "scaling-hints", "ticket"]
    assert [g["labels"]["alertname"] for g in data["pending"]] == ["ProbeSlowSoon"]
    assert cli.main(["alerts", "--prometheus", prom, "--alertmanager", am]) == 0
    assert "-> scaling-hints" in capsys.readouterr().out


def test_a_ruler_that_does_not_answer_is_named_as_the_caller_names_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """When neither the rules' evaluator nor Alertmanager answers, each is named in an
    error line, the evaluator as the caller named it (vmalert under the long-term layer;
    "the ruler" for a URL given on the command line, which may be either), and so is
    where the pending alerts would wait; the command exits 1."""
    ruler, nowhere = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    found = _alerts.read(ruler, nowhere, ruler="vmalert")
    assert found.errors[0].startswith(f"No answer as expected from vmalert at {ruler}: ")
    assert found.errors[1].startswith(f"Alertmanager at {nowhere} did not answer")
    assert "firing alerts below are vmalert's view" in found.errors[1]
    assert "PENDING (in vmalert until their `for` passes; not notified yet)" in _alerts.render(
        found
    )
    assert cli.main(["alerts", "--prometheus", ruler, "--alertmanager", nowhere]) == 1
    out = capsys.readouterr().out
    assert f"! No answer as expected from the ruler at {ruler}: " in out
    assert "PENDING (in the ruler until" in out


def test_without_alertmanager_the_firing_alerts_come_from_prometheus_and_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """With Alertmanager unreachable, the firing alerts are Prometheus' view, ungrouped,
    under a line naming the Alertmanager that did not answer; the command exits 1."""
    rules = tmp_path / "probe.rules.yml"
    rules.write_text(RULES)
    nowhere = f"http://127.0.0.1:{free_port()}"
    with prometheus(tmp_path, {}, [rules]) as prom:
        deadline = time.monotonic() + 30
        while True:
            found = _alerts.read(prom.url, nowhere)
            if len(found.firing and found.firing[0].alerts) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert cli.main(["alerts", "--prometheus", prom.url, "--alertmanager", nowhere]) == 1
    [error] = found.errors
    assert error.startswith(f"Alertmanager at {nowhere} did not answer as expected")
    [group] = found.firing
    assert (group.labels, group.receiver) == ({}, "")
    assert sorted(a.labels["severity"] for a in group.alerts) == ["critical", "info", "warning"]
    assert f"! Alertmanager at {nowhere}" in capsys.readouterr().out
