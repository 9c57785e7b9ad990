"""``sightline hints``: how many replicas each service runs, how many its load calls for, and why.

The numbers are the scaling recording rules' (``alerts/scaling.rules.yml``), read from
Prometheus' HTTP API with the inputs each reason is computed from: requests in flight
against request slots (``concurrency``), CPU used against the limit (``cpu``), the task
backlog, its arrivals, completions and drain time, and the task slots needed against
those there are (``queue``), and how full the
database pools are, since more replicas open more connections to a pool that is
already full. ``sightline hints keda|hpa --service S`` prints a KEDA ScaledObject or a
HorizontalPodAutoscaler that scales a Deployment to the same recommendation.

    $ sightline hints --prometheus http://127.0.0.1:9090
    $ sightline hints keda --service shop --namespace shop | kubectl apply -f -
"""

from __future__ import annotations

import json
import math
import re
import sys
import urllib.error
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import queries as q
from . import thresholds as _thresholds
from .doctor import default_query_url
from .stack.processes import API_FAILURES, get_json

#: The reasons of ``sightline:required_replicas:count``, in the order they are shown.
REASONS = ("concurrency", "cpu", "queue")
#: The utilisation every reason aims at, and the share of it within which the cpu reason
#: keeps the replica count (the numbers of scaling.rules.yml).
TARGET = _thresholds.SCALING_TARGET.value
TOLERANCE = _thresholds.SCALING_TOLERANCE.value
#: Replicas answering scrapes: a service without this series does not report yet.
ACTUAL = "sightline:actual_replicas:count"
#: The recording rule the manifests scale on, and the name prometheus-adapter serves it as.
RECOMMENDED = "sightline:recommended_replicas:count"
EXTERNAL_METRIC = "sightline_recommended_replicas"
#: Prometheus as a workload in the cluster reaches it, unless --prometheus says otherwise.
CLUSTER_PROMETHEUS = "http://prometheus.monitoring.svc:9090"

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"^{_DNS_LABEL}(\.{_DNS_LABEL})*$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")

Values = dict[str, dict[str, float]]  # query title -> job -> value


class Unreachable(Exception):
    """Prometheus did not answer, or not as its HTTP API does."""


@dataclass(frozen=True)
class Hint:
    """One service's recommendation and the numbers behind each reason (None: no data)."""

    service: str
    replicas: float | None
    recommended: float | None
    required: Mapping[str, float] = field(default_factory=dict)  # reason -> replicas
    in_flight: float | None = None
    capacity: float | None = None
    cpu_utilisation: float | None = None
    cpu_limit: float | None = None
    backlog: float | None = None
    arrived: float | None = None
    completed: float | None = None
    drain_seconds: float | None = None
    task_slots: float | None = None
    slots_needed: float | None = None
    pool: float | None = None

    @property
    def direction(self) -> str:
        if self.replicas is None or self.recommended is None:
            return "hold"
        if self.recommended > self.replicas:
            return "up"
        return "down" if self.recommended < self.replicas else "hold"

    @property
    def pool_saturated(self) -> bool:
        return self.pool is not None and self.pool >= q.POOL_SATURATED

    @property
    def held(self) -> bool:
        """Scale-up advice that more connections to a full pool would defeat."""
        return self.direction == "up" and self.pool_saturated

    def as_json(self) -> dict[str, Any]:
        """The documented shape (docs/hints.md): every key always present, null for no data."""
        used = _product(self.cpu_utilisation, self.cpu_limit)
        return {
            "service": self.service,
            "replicas": _int(self.replicas),
            "recommended": _int(self.recommended),
            "direction": self.direction,
            "held": self.held,
            "required": {
                reason: _int(self.required.get(reason))
                for reason in (*REASONS, *sorted(set(self.required) - set(REASONS)))
            },
            "concurrency": {
                "in_flight": self.in_flight,
                "capacity": self.capacity,
                "utilisation": _ratio(self.in_flight, self.capacity),
            },
            "cpu": {
                "used_cores": used,
                "limit_cores": self.cpu_limit,
                "utilisation": self.cpu_utilisation,
            },
            "queue": {
                "backlog": self.backlog,
                "arrived_per_second": self.arrived,
                "completed_per_second": self.completed,
                "drain_seconds": self.drain_seconds,
                "task_slots": self.task_slots,
                "slots_needed": self.slots_needed,
                "utilisation": _ratio(self.slots_needed, self.task_slots),
            },
            "db_pool": {"utilisation": self.pool, "saturated": self.pool_saturated},
        }


def read(prometheus: str, timeout: float = 5.0) -> list[Hint]:
    """Every service with replicas or a recommendation; raises :class:`Unreachable`."""
    queries = (q.ACTUAL_REPLICAS, q.RECOMMENDED_REPLICAS, *q.SCALING_INPUTS)
    values: Values = {query.title: _by_job(prometheus, query, timeout) for query in queries}
    required: dict[str, dict[str, float]] = {}
    for labels, value in _instant(prometheus, q.REQUIRED_REPLICAS.render(), timeout):
        required.setdefault(labels.get("job", ""), {})[labels.get("reason", "")] = value
    jobs = set(values[q.ACTUAL_REPLICAS.title]) | set(values[q.RECOMMENDED_REPLICAS.title])

    def get(query: q.Query, job: str) -> float | None:
        return values[query.title].get(job)

    return [
        Hint(
            service=job,
            replicas=get(q.ACTUAL_REPLICAS, job),
            recommended=get(q.RECOMMENDED_REPLICAS, job),
            required=required.get(job, {}),
            in_flight=get(q.INFLIGHT_MEAN, job),
            capacity=get(q.CAPACITY, job),
            cpu_utilisation=get(q.CPU_UTILISATION, job),
            cpu_limit=get(q.CPU_LIMIT, job),
            backlog=get(q.BACKLOG, job),
            arrived=get(q.TASKS_ARRIVED, job),
            completed=get(q.TASKS_COMPLETED, job),
            drain_seconds=get(q.DRAIN_TIME, job),
            task_slots=get(q.TASK_SLOTS, job),
            slots_needed=get(q.TASK_SLOTS_NEEDED, job),
            pool=get(q.POOL_UTILISATION, job),
        )
        for job in sorted(jobs)
    ]


def _by_job(prometheus: str, query: q.Query, timeout: float) -> dict[str, float]:
    # The rules' own window, should a query ever take one.
    return {
        labels.get("job", ""): value
        for labels, value in _instant(prometheus, query.render(window="5m"), timeout)
    }


def _instant(prometheus: str, promql: str, timeout: float) -> list[tuple[dict[str, str], float]]:
    """Each series' labels and value; NaN and ±Inf (a ratio over nothing) are no data."""
    url = f"{prometheus.rstrip('/')}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    try:
        payload = get_json(url, timeout)
        if payload.get("status") != "success":
            raise ValueError(f"status {payload.get('status')!r}")
        series = [(dict(r["metric"]), float(r["value"][1])) for r in payload["data"]["result"]]
        return [(labels, value) for labels, value in series if math.isfinite(value)]
    except API_FAILURES as exc:
        if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
            # The reason (connection refused, a timeout) without "<urlopen error ...>".
            raise Unreachable(f"Prometheus at {prometheus} did not answer: {exc.reason}") from None
        raise Unreachable(
            f"Prometheus at {prometheus} did not answer as its HTTP API does: {exc}"
        ) from None


def _product(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a * b


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else a / b


def _int(value: float | None) -> float | int | None:
    if value is None or not math.isfinite(value):
        return None
    return int(value) if value == int(value) else value


# -- the table ------------------------------------------------------------------------------


def render(hints: Iterable[Hint]) -> str:
    """One block per service: the recommendation, then one row per reason with its numbers."""
    blocks = []
    for hint in hints:
        replicas = _fmt(hint.replicas, "{:.0f}")
        wanted = _fmt(hint.recommended, "{:.0f}")
        change = {"up": "scale up", "down": "scale down", "hold": "hold"}[hint.direction]
        plural = "" if hint.replicas == 1 else "s"
        lines = [f"{hint.service}: {replicas} replica{plural}, recommended {wanted} ({change})"]
        if hint.held:
            lines.append(
                f"  held: its database pools are {hint.pool:.0%} in use; more replicas open "
                "more connections, so raise the pools or the database's capacity first"
            )
        lines.append(f"  {'REASON':<13}{'REQUIRED':>8}  NUMBERS BEHIND IT")
        for reason, numbers in _rows(hint):
            required = "" if reason == "db pools" else _fmt(hint.required.get(reason), "{:.0f}")
            lines.append(f"  {reason:<13}{required:>8}  {numbers}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _rows(hint: Hint) -> list[tuple[str, str]]:
    rows = []
    target = f"target {TARGET:.0%}"
    if "concurrency" in hint.required or hint.capacity is not None:
        rows.append(
            (
                "concurrency",
                f"{_fmt(hint.in_flight, '{:.2f}')} requests in flight of "
                f"{_fmt(hint.capacity, '{:.0f}')} slots "
                f"({_fmt(_ratio(hint.in_flight, hint.capacity), '{:.0%}')}, {target})",
            )
        )
    if "cpu" in hint.required or hint.cpu_limit is not None:
        used = _product(hint.cpu_utilisation, hint.cpu_limit)
        rows.append(
            (
                "cpu",
                f"{_fmt(used, '{:.2f}')} of {_fmt(hint.cpu_limit, '{:.2f}')} cores "
                f"({_fmt(hint.cpu_utilisation, '{:.0%}')}, {target} ±{TOLERANCE:.0%})",
            )
        )
    if "queue" in hint.required or hint.backlog is not None:
        drain = (
            "not draining"
            if hint.drain_seconds is None
            else f"drained in {_fmt(hint.drain_seconds, '{:.0f}')} s"
        )
        rows.append(
            (
                "queue",
                f"backlog {_fmt(hint.backlog, '{:.0f}')}, {drain}; "
                f"{_fmt(hint.arrived, '{:.2f}')} arriving/s, "
                f"{_fmt(hint.completed, '{:.2f}')} finished/s; "
                f"{_fmt(hint.slots_needed, '{:.2f}')} task slots needed of "
                f"{_fmt(hint.task_slots, '{:.0f}')} "
                f"({_fmt(_ratio(hint.slots_needed, hint.task_slots), '{:.0%}')}, {target})",
            )
        )
    rows += [(reason, "") for reason in sorted(set(hint.required) - set(REASONS))]
    if hint.pool is not None:
        state = "saturated: more replicas will not help" if hint.pool_saturated else "ok"
        rows.append(("db pools", f"fullest {hint.pool:.0%} in use ({state})"))
    return rows


def _fmt(value: float | None, fmt: str) -> str:
    if value is None or math.isnan(value) or math.isinf(value):
        return "-"
    return fmt.format(value)


def main(
    prometheus: str | None,
    as_json: bool,
    out: Callable[[str], None] = print,
    err: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> int:
    """``sightline hints``: 0 with hints, 1 when no service reports yet, 2 when Prometheus
    does not answer."""
    if prometheus is None:
        prometheus = default_query_url()
    try:
        hints = read(prometheus)
    except Unreachable as exc:
        err(f"sightline hints: {exc}")
        return 2
    if as_json:
        out(json.dumps({"prometheus": prometheus, "services": [h.as_json() for h in hints]}))
    if not hints:
        err(
            f"sightline hints: no service reports to Prometheus at {prometheus} yet "
            f"(no {ACTUAL} series: are Sightline's rules loaded, and the services scraped "
            'with their targets labelled sightline="service"?)'
        )
        return 1
    if not as_json:
        out(render(hints))
    return 0


# -- the manifests --------------------------------------------------------------------------


def manifest(
    kind: str,
    service: str,
    namespace: str | None = None,
    deployment: str | None = None,
    min_replicas: int = 1,
    max_replicas: int = 10,
    prometheus: str | None = None,
) -> str:
    """A KEDA ScaledObject (``keda``) or an autoscaling/v2 HPA (``hpa``) keeping a
    Deployment at ``sightline:recommended_replicas:count{job=service}``; ValueError on
    arguments Kubernetes would refuse."""
    if kind not in ("keda", "hpa"):
        raise ValueError(f"no manifest {kind!r}: keda or hpa")
    if not service or any(ord(c) < 32 for c in service):
        raise ValueError(f"--service {service!r} is not a Prometheus job name")
    name = deployment or service
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        raise ValueError(
            f"{name!r} is not a Kubernetes object name (lower-case letters, digits, '-', '.'): "
            "name the Deployment with --deployment"
        )
    if namespace is not None and (
        len(namespace) > 63 or not re.match(f"^{_DNS_LABEL}$", namespace)
    ):
        raise ValueError(f"--namespace {namespace!r} is not a Kubernetes namespace name")
    if not 1 <= min_replicas <= max_replicas:
        raise ValueError(f"need 1 <= --min ({min_replicas}) <= --max ({max_replicas})")
    if kind == "hpa" and not _LABEL_VALUE.match(service):
        raise ValueError(
            f"--service {service!r} cannot be a Kubernetes label value, which the HPA's "
            "metric selector needs (63 characters: letters, digits, '-', '_', '.')"
        )
    server = prometheus or CLUSTER_PROMETHEUS
    head = f"  name: {_scalar(name)}\n"
    head += f"  namespace: {_scalar(namespace)}\n" if namespace else ""
    target = f"    apiVersion: apps/v1\n    kind: Deployment\n    name: {_scalar(name)}\n"
    if kind == "keda":
        return _KEDA.format(
            service=service,
            name=name,
            head=head,
            target=target,
            min=min_replicas,
            max=max_replicas,
            server=_quoted(server),
            query=_quoted(query(service)),
        )
    return _HPA.format(
        service=service,
        job=_scalar(service),
        name=name,
        head=head,
        target=target,
        min=min_replicas,
        max=max_replicas,
        server=server,
        metric=EXTERNAL_METRIC,
        rule=RECOMMENDED,
        rule_re=_quoted(f"^{re.escape(RECOMMENDED)}$"),
    )


def query(service: str) -> str:
    """The recording rule's series of one service, as PromQL."""
    # A JSON string is a valid PromQL string: the same escapes.
    return f"{RECOMMENDED}{{job={json.dumps(service)}}}"


def _quoted(text: str) -> str:
    # A single-quoted YAML scalar: no escapes but '' for '.
    return "'" + text.replace("'", "''") + "'"


def _scalar(text: str) -> str:
    """``text`` as a YAML string: plain when YAML would not read it as anything else."""
    plain = re.match(r"^[A-Za-z][-A-Za-z0-9_.]*$", text) and text.lower() not in _YAML_WORDS
    return text if plain else _quoted(text)


# Plain scalars YAML 1.1 (PyYAML, older tools) reads as booleans or null.
_YAML_WORDS = {"y", "n", "yes", "no", "on", "off", "true", "false", "null"}


def print_manifest(
    kind: str,
    service: str,
    namespace: str | None = None,
    deployment: str | None = None,
    min_replicas: int = 1,
    max_replicas: int = 10,
    prometheus: str | None = None,
    out: Callable[[str], None] = print,
    err: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> int:
    """``sightline hints keda|hpa``: 0 with the manifest printed, 2 on bad arguments."""
    try:
        text = manifest(
            kind, service, namespace, deployment, min_replicas, max_replicas, prometheus
        )
    except ValueError as exc:
        err(f"sightline hints {kind}: {exc}")
        return 2
    out(text.rstrip("\n"))
    return 0


_KEDA = """\
# Keeps Deployment {name} at the replicas Sightline recommends for service {service}:
# sightline:recommended_replicas:count, the largest of the concurrency, cpu and queue
# requirements of alerts/scaling.rules.yml, held 5 minutes before it may fall.
#
# The query's value becomes replicas this way: KEDA gives it to the HPA it creates as an
# External metric with an AverageValue target of `threshold`, and the HPA wants
# ceil(value / threshold) replicas, so threshold "1" means replicas = recommendation.
# (metricType Value would instead multiply the current replica count by the value.)
# ignoreNullValues "false": without the series (Prometheus no longer scrapes the service)
# the scaler reports an error and the replicas stay as they are, rather than reading 0
# and falling to minReplicaCount. The HPA's scale-down stabilisation is 0 because the
# rule already holds a recommendation for 5 minutes; the default would add 5 more. The
# HPA ignores changes within 10 % of the current count (its tolerance).
# serverAddress is Prometheus as KEDA's operator reaches it from inside the cluster.
apiVersion: keda.sh/v1alpha1
kind: ScaledObject
metadata:
{head}spec:
  scaleTargetRef:
{target}  minReplicaCount: {min}
  maxReplicaCount: {max}
  advanced:
    horizontalPodAutoscalerConfig:
      behavior:
        scaleDown:
          stabilizationWindowSeconds: 0
  triggers:
    - type: prometheus
      name: sightline-recommended-replicas
      metricType: AverageValue
      metadata:
        serverAddress: {server}
        query: {query}
        threshold: "1"
        ignoreNullValues: "false"
"""

_HPA = """\
# Keeps Deployment {name} at the replicas Sightline recommends for service {service}:
# sightline:recommended_replicas:count, the largest of the concurrency, cpu and queue
# requirements of alerts/scaling.rules.yml, held 5 minutes before it may fall.
#
# The HPA reads it as the External metric {metric},
# which prometheus-adapter serves (below), and with an AverageValue target of 1 wants
# ceil(value / 1) replicas: the recommendation. Its scale-down stabilisation is 0 because
# the rule already holds a recommendation for 5 minutes; the default would add 5 more.
# It ignores changes within 10 % of the current count (its tolerance).
apiVersion: autoscaling/v2
kind: HorizontalPodAutoscaler
metadata:
{head}spec:
  scaleTargetRef:
{target}  minReplicas: {min}
  maxReplicas: {max}
  behavior:
    scaleDown:
      stabilizationWindowSeconds: 0
  metrics:
    - type: External
      external:
        metric:
          name: {metric}
          selector:
            matchLabels:
              job: {job}
        target:
          type: AverageValue
          averageValue: "1"
# prometheus-adapter serves that metric with this entry in its configuration file (with
# the Helm chart: rules.external), reading Prometheus from inside the cluster at
# --prometheus-url={server}
#
# externalRules:
#   - seriesQuery: '{rule}{{job!=""}}'
#     resources:
#       namespaced: false  # the rule's series carry no namespace label
#     name:
#       matches: {rule_re}
#       as: {metric}
#     metricsQuery: 'max(<<.Series>>{{<<.LabelMatchers>>}})'
"""
