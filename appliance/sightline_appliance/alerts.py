"""What is firing and pending, grouped as Alertmanager groups it: ``sightline alerts`` and
the ALERTS section of ``sightline demo``.

Firing alerts come from Alertmanager's groups (``/api/v2/alerts/groups``): one group per
route and value of the route's ``group_by`` labels, with the receiver that gets it, so
what is shown is what is (or would be) notified together; an alert silenced or inhibited
there says so. Pending alerts have not reached Alertmanager (their ``for`` has not passed):
they come from what runs the rules (``/api/v1/alerts``: Prometheus, or vmalert under
the long-term storage layer, named by the caller), grouped by the root route's
``group_by`` of the shipped configuration. When Alertmanager does not answer, the ruler's
firing alerts are shown instead, ungrouped, and the first line says why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .stack.processes import API_FAILURES, get_json

#: The root route's group_by in alerts/alertmanager.yml: how pending alerts are grouped.
GROUP_BY = ("alertname", "job", "severity")


@dataclass(frozen=True)
class Alert:
    labels: dict[str, str]
    summary: str
    since: str  # RFC 3339, as the API gives it
    state: str  # firing, pending, suppressed (silenced or inhibited in Alertmanager)


@dataclass(frozen=True)
class Group:
    labels: dict[str, str]  # the group_by labels and their values
    receiver: str  # "" for pending alerts, which no receiver has seen
    alerts: list[Alert] = field(default_factory=list)


@dataclass
class Alerts:
    firing: list[Group] = field(default_factory=list)
    pending: list[Group] = field(default_factory=list)
    #: Why a source did not answer (shown above the alerts), by source.
    errors: list[str] = field(default_factory=list)
    #: What runs the rules, where pending alerts wait: Prometheus, or vmalert.
    ruler: str = "Prometheus"

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def read(
    prometheus: str, alertmanager: str, timeout: float = 3.0, ruler: str = "Prometheus"
) -> Alerts:
    """The alerts of the ruler at ``prometheus`` (Prometheus, or vmalert or VictoriaMetrics
    answering for it; ``ruler`` names it in what is shown) and of Alertmanager."""
    found = Alerts(ruler=ruler)
    rules: list[Mapping[str, Any]] = []
    try:
        # vmalert before 1.79.14 (Debian 12's) answers null when no alert is active.
        active = get_json(f"{prometheus}/api/v1/alerts", timeout)["data"]["alerts"] or []
        rules = [a for a in active if isinstance(a, dict) and isinstance(a.get("labels"), dict)]
    except API_FAILURES as exc:
        found.errors.append(f"No answer as expected from {ruler} at {prometheus}: {exc!r}")
    found.pending = _grouped(a for a in rules if a.get("state") == "pending")
    try:
        groups = get_json(f"{alertmanager}/api/v2/alerts/groups", timeout)
        found.firing = sorted(
            (_group(g) for g in groups if isinstance(g, dict) and g.get("alerts")),
            key=lambda g: (g.receiver, sorted(g.labels.items())),
        )
    except API_FAILURES as exc:
        found.errors.append(
            f"Alertmanager at {alertmanager} did not answer as expected ({exc!r}): the "
            f"firing alerts below are {ruler}'s view, ungrouped, and may not be notified"
        )
        firing = [a for a in rules if a.get("state") == "firing"]
        found.firing = [Group({}, "", [_alert(a, "firing") for a in firing])] if firing else []
    return found


def _alert(raw: Mapping[str, Any], state: str) -> Alert:
    annotations = raw.get("annotations") or {}
    return Alert(
        labels={str(k): str(v) for k, v in raw["labels"].items()},
        summary=str(annotations.get("summary", "")),
        since=str(raw.get("activeAt") or raw.get("startsAt") or ""),
        state=state,
    )


def _group(raw: Mapping[str, Any]) -> Group:
    alerts = []
    for item in raw["alerts"]:
        status = (item.get("status") or {}).get("state", "active")
        alerts.append(_alert(item, "firing" if status == "active" else "suppressed"))
    labels = {str(k): str(v) for k, v in (raw.get("labels") or {}).items()}
    receiver = str((raw.get("receiver") or {}).get("name", ""))
    return Group(labels, receiver, sorted(alerts, key=lambda a: sorted(a.labels.items())))


def _grouped(raw: Iterable[Mapping[str, Any]]) -> list[Group]:
    groups: dict[tuple[str, ...], Group] = {}
    for item in raw:
        alert = _alert(item, "pending")
        key = tuple(alert.labels.get(name, "") for name in GROUP_BY)
        labels = {n: v for n, v in zip(GROUP_BY, key, strict=True) if v}
        groups.setdefault(key, Group(labels, "")).alerts.append(alert)
    return [groups[key] for key in sorted(groups)]


def render(found: Alerts) -> list[str]:
    """The text of ``sightline alerts`` (and of the demo's ALERTS section)."""
    lines = [f"! {error}" for error in found.errors]
    lines.append("FIRING (as Alertmanager groups and routes them)")
    lines += _lines(found.firing) or ["(none)"]
    lines.append(f"PENDING (in {found.ruler} until their `for` passes; not notified yet)")
    lines += _lines(found.pending) or ["(none)"]
    return lines


def _lines(groups: Sequence[Group]) -> list[str]:
    lines = []
    for group in groups:
        key = ", ".join(f"{k}={v}" for k, v in sorted(group.labels.items()))
        to = f" -> {group.receiver}" if group.receiver else ""
        count = len(group.alerts)
        lines.append(f"  {{{key}}}{to}  ({count} alert{'s' if count != 1 else ''})")
        for alert in group.alerts:
            extra = " ".join(
                f"{k}={v}" for k, v in sorted(alert.labels.items()) if k not in group.labels
            )
            since = alert.since[11:19]
            state = "" if alert.state in ("firing", "pending") else f"[{alert.state}] "
            lines.append(
                f"    {state}{alert.labels.get('alertname', '')}"
                + (f" {extra}" if extra else "")
                + (f"  since {since} UTC" if since else "")
                + (f": {alert.summary}" if alert.summary else "")
            )
    return lines
