"""Every instrument the agent exposes, declared once. docs/metrics.md is the contract.

Names follow Prometheus conventions in base units; label names are OpenTelemetry's
stable semantic-convention attribute names with dots turned into underscores.
Labelled metrics go through :class:`GuardedMetric`, which caches children for the
hot path and folds label sets past ``SIGHTLINE_MAX_SERIES`` into one overflow series.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from opentelemetry import trace
from opentelemetry.semconv.attributes import (
    deployment_attributes,
    http_attributes,
    service_attributes,
)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from ._settings import Settings


def prometheus_label(attribute: str) -> str:
    return attribute.replace(".", "_")


METHOD = prometheus_label(http_attributes.HTTP_REQUEST_METHOD)
ROUTE = prometheus_label(http_attributes.HTTP_ROUTE)
STATUS = prometheus_label(http_attributes.HTTP_RESPONSE_STATUS_CODE)

#: ``http.server.request.duration`` boundaries from OpenTelemetry's stable HTTP conventions.
HTTP_DURATION_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
)
#: Time spent queued in front of the app (proxy → worker) can be far longer than a request.
QUEUE_DURATION_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

#: Route label of a request that matched no route template (404s, apps without a router).
UNMATCHED_ROUTE = "_unmatched"
#: Method label of a request whose method is not one of the standard HTTP methods.
OTHER_METHOD = "_OTHER"
#: Every label of the one series that takes label sets past the cardinality cap.
OVERFLOW = "_overflow"

KNOWN_METHODS = frozenset(
    ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH")
)


class GuardedMetric:
    """A labelled metric with cached children and a cap on distinct label sets.

    ``child(key)`` costs one dict lookup once a label set has been seen. The first
    ``max_series`` label sets get their own series; later ones share the overflow
    series (every label ``_overflow``) and count into ``sightline_series_folded_total``.
    """

    __slots__ = ("_children", "_folded", "_lock", "_max", "_metric", "_overflow", "name")

    def __init__(self, metric: Any, name: str, max_series: int, folded: Counter) -> None:
        self._metric = metric
        self.name = name
        self._max = max_series
        self._children: dict[tuple[str, ...], Any] = {}
        self._lock = threading.Lock()
        self._overflow: Any = None
        # Exposed from the start, so a query for folded samples finds a zero, not nothing.
        self._folded = folded.labels(name)

    def child(self, key: tuple[str, ...]) -> Any:
        child = self._children.get(key)
        return child if child is not None else self._new_child(key)

    def _new_child(self, key: tuple[str, ...]) -> Any:
        with self._lock:
            child = self._children.get(key)
            if child is not None:
                return child
            if len(self._children) < self._max:
                child = self._children[key] = self._metric.labels(*key)
                return child
            if self._overflow is None:
                self._overflow = self._metric.labels(*([OVERFLOW] * len(key)))
        self._folded.inc()
        return self._overflow

    def series(self) -> int:
        """Label sets holding their own series (the overflow series not counted)."""
        return len(self._children)


class Metrics:
    """The agent's instruments, registered in one registry and removable as a whole."""

    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._collectors: list[Collector] = []

        self.series_folded = self._add(
            Counter(
                "sightline_series_folded",
                "Observations folded into a metric's overflow series by the cardinality guard.",
                ["metric"],
                registry=None,
            )
        )
        self.internal_errors = self._add(
            Counter(
                "sightline_internal_errors",
                "Errors inside the agent that were suppressed instead of reaching the app.",
                ["component"],
                registry=None,
            )
        )
        duration = self._add(
            Histogram(
                "http_server_request_duration_seconds",
                "Duration of HTTP server requests, until the response body is sent or closed.",
                [METHOD, ROUTE, STATUS],
                buckets=HTTP_DURATION_BUCKETS,
                registry=None,
            )
        )
        self.request_duration = GuardedMetric(
            duration,
            "http_server_request_duration_seconds",
            settings.max_series,
            self.series_folded,
        )
        self.active_requests = self._add(
            Gauge(
                "http_server_active_requests",
                "HTTP server requests in flight.",
                registry=None,
            )
        )
        self.queue_duration = self._add(
            Histogram(
                "http_server_request_queue_duration_seconds",
                "Time a request waited between the front proxy (X-Request-Start) and the app.",
                buckets=QUEUE_DURATION_BUCKETS,
                registry=None,
            )
        )
        self._add(_TargetInfo(settings))
        for collector in self._collectors:
            registry.register(collector)
        self.exemplars = settings.exemplars

    def _add(self, collector: Any) -> Any:
        self._collectors.append(collector)
        return collector

    def register(self, collector: Collector) -> None:
        self._registry.register(collector)
        self._collectors.append(collector)

    def close(self) -> None:
        for collector in self._collectors:
            try:
                self._registry.unregister(collector)
            except KeyError:
                pass
        self._collectors.clear()

    def observe_request(self, method: str, route: str, status: str, seconds: float) -> None:
        child = self.request_duration.child((method, route, status))
        if self.exemplars:
            span = trace.get_current_span()
            if span.is_recording():
                ctx = span.get_span_context()
                child.observe(
                    seconds,
                    {
                        "trace_id": format(ctx.trace_id, "032x"),
                        "span_id": format(ctx.span_id, "016x"),
                    },
                )
                return
        child.observe(seconds)


def resource_labels(settings: Settings) -> dict[str, str]:
    """``target_info`` labels: the resource attributes, dots turned into underscores."""
    from . import _resource

    attributes = dict(settings.resource_attributes)
    attributes[service_attributes.SERVICE_NAME] = settings.service
    if settings.service_version:
        attributes[service_attributes.SERVICE_VERSION] = settings.service_version
    if settings.environment:
        attributes[deployment_attributes.DEPLOYMENT_ENVIRONMENT_NAME] = settings.environment
    attributes[service_attributes.SERVICE_INSTANCE_ID] = _resource.instance_id()
    labels: dict[str, str] = {}
    for key, value in attributes.items():
        label = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in key)
        if label and not label[0].isdigit() and not label.startswith("__"):
            labels[label] = value
    return labels


class _TargetInfo(Collector):
    """``target_info``, built at scrape time so a forked worker shows its own instance id."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def collect(self) -> Iterable[Metric]:
        yield InfoMetricFamily(
            "target",
            "Resource attributes of this process, as in OpenTelemetry.",
            value=resource_labels(self._settings),
        )
