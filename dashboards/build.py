"""Sightline's Grafana dashboards, written as Python and rendered to the JSON Grafana loads.

    python dashboards/build.py           # (re)write dashboards/*.json
    python dashboards/build.py --check   # exit 1, naming each file that differs

Each dashboard is a function returning Grafana's classic dashboard model. The golden-signal
panels render the PromQL of ``sightline._queries``, the same text the terminal view runs, so
both show the same numbers; other panels write their PromQL here. Panels are placed on the
24-column grid by :class:`Grid`, left to right, a new line when one is full, so two panels
never overlap. Plain Python, no dependency beyond the standard library and the agent's
own source tree.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
# The queries of this checkout, whether or not (and whichever) sightline is installed.
sys.path.insert(0, str(HERE.parent / "agent"))

from sightline import _queries as q  # noqa: E402
from sightline._queries import Query  # noqa: E402

Json = dict[str, Any]

PROMETHEUS = {"type": "prometheus", "uid": "prometheus"}
LOKI = {"type": "loki", "uid": "loki"}
TEMPO = {"type": "tempo", "uid": "tempo"}

SCHEMA_VERSION = 39
TAG = "sightline"

# Label matchers of the template variables.
SERVICE = 'job=~"$service"'
ROUTE = 'job=~"$service", http_route=~"$route"'
QUEUE = 'job=~"$service", task_queue=~"$queue"'
# Loki refuses a stream selector all of whose matchers match the empty string, as
# service_name=~".*" (the variable's "All") does: the second matcher never does.
STREAMS = 'service_name=~"$service", service_name!=""'
W = "$__rate_interval"  # the window of every rate drawn over time
RANGE = "$__range"  # the window of tables and totals: the whole time range on screen

# Colours: Grafana's named palette.
GREEN, YELLOW, ORANGE, RED, BLUE = "green", "yellow", "orange", "red", "blue"

Steps = tuple[tuple[float | None, str], ...]


def warn_at(orange: float, red: float) -> Steps:
    return ((None, GREEN), (orange, ORANGE), (red, RED))


# Where an alert watches the same quantity, red is its threshold (alerts/*.rules.yml).
UTILISATION = warn_at(0.8, 0.95)  # SightlineInFlightNearCapacity, SightlineAllWorkersBusy
ERRORS = warn_at(0.01, 0.05)  # SightlineHighErrorRatio
LATENCY = warn_at(0.5, 1.0)  # the latency objective's threshold, SightlineHighLatency
CPU = warn_at(0.7, 0.9)  # the scaling target, SightlineCPUNearLimit
THROTTLING = warn_at(0.1, 0.25)  # SightlineCPUThrottlingHigh
MEMORY = warn_at(0.8, 0.9)  # SightlineMemoryNearLimit
FDS = warn_at(0.5, 0.9)  # SightlineFileDescriptorsRunningOut
LOOP_LAG = warn_at(0.05, 0.1)  # SightlineEventLoopLagHigh
TASK_FAILURES = warn_at(0.05, 0.1)  # SightlineHighTaskFailureRatio
OLDEST = warn_at(60, 600)  # SightlineTaskQueueOldestMessageOld
DRAIN = warn_at(300, 900)  # the scaling target, SightlineTaskQueueDrainSlow
QUEUE_TIME = warn_at(0.05, 0.25)
WAIT = warn_at(5, 60)
GC_PAUSE = warn_at(0.05, 0.1)
BACKLOG = warn_at(100, 1000)
ZERO_IS_GOOD: Steps = ((None, GREEN), (1, RED))
NEUTRAL: Steps = ((None, BLUE),)


# -- queries


def variant(query: Query, *, by: tuple[str, ...] | None = None, quantile: str = "") -> Query:
    """The same signal split by other labels, or another quantile of the same histogram."""
    changed = query if by is None else dataclasses.replace(query, by=by)
    if quantile:
        template = changed.template.replace(
            "histogram_quantile(0.95,", f"histogram_quantile({quantile},"
        )
        if template == changed.template:
            raise ValueError(f"{query.title} is not a p95 query")
        changed = dataclasses.replace(
            changed, template=template, title=f"{query.title} ({quantile})"
        )
    return changed


def histogram_quantile(quantile: str, metric: str, sel: str, by: str) -> str:
    return (
        f"histogram_quantile({quantile}, sum by ({by}, le) (rate({metric}_bucket{{{sel}}}[{W}])))"
    )


# -- targets


def prom(expr: str, legend: str = "", *, exemplar: bool = False) -> Json:
    """A Prometheus query drawn over time."""
    target = {"datasource": PROMETHEUS, "editorMode": "code", "expr": expr, "range": True}
    target["legendFormat"] = legend or "__auto"
    if exemplar:
        target["exemplar"] = True
    return target


def instant(expr: str) -> Json:
    """A Prometheus query evaluated once, at the end of the range, as table rows."""
    return {
        "datasource": PROMETHEUS,
        "editorMode": "code",
        "expr": expr,
        "format": "table",
        "instant": True,
        "range": False,
    }


def logql(expr: str, legend: str = "") -> Json:
    target = {"datasource": LOKI, "editorMode": "code", "expr": expr, "queryType": "range"}
    if legend:
        target["legendFormat"] = legend
    return target


def traceql(query: str, limit: int = 20) -> Json:
    return {
        "datasource": TEMPO,
        "limit": limit,
        "query": query,
        "queryType": "traceql",
        "tableType": "traces",
    }


def with_refs(targets: list[Json]) -> list[Json]:
    return [{**t, "refId": chr(ord("A") + i)} for i, t in enumerate(targets)]


# -- field configuration


def thresholds(steps: Steps) -> Json:
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for value, color in steps],
    }


def by_name(name: str, **properties: Any) -> Json:
    return {
        "matcher": {"id": "byName", "options": name},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


def by_regex(pattern: str, **properties: Any) -> Json:
    return {
        "matcher": {"id": "byRegexp", "options": pattern},
        "properties": [{"id": key, "value": value} for key, value in properties.items()],
    }


DASHED = {"dash": [10, 10], "fill": "dash"}


# -- panels


def panel(kind: str, title: str, description: str, datasource: Json | None, **rest: Any) -> Json:
    found: Json = {"type": kind, "title": title, "description": description, **rest}
    if datasource is not None:
        found["datasource"] = datasource
    if "targets" in found:
        found["targets"] = with_refs(found["targets"])
    return found


def timeseries(
    title: str,
    description: str,
    targets: list[Json],
    unit: str,
    *,
    steps: Steps | None = None,
    soft_max: float | None = None,
    stack: bool = False,
    bars: bool = False,
    overrides: list[Json] | None = None,
    datasource: Json = PROMETHEUS,
) -> Json:
    """A graph over time; ``steps`` are drawn as dashed lines, ``soft_max`` keeps a ratio's
    axis at least up to its limit."""
    custom: Json = {
        "axisSoftMin": 0,
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 60 if bars else (25 if stack else 8),
        "lineWidth": 1,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"group": "A", "mode": "normal" if stack or bars else "none"},
        "thresholdsStyle": {"mode": "dashed" if steps else "off"},
    }
    if soft_max is not None:
        custom["axisSoftMax"] = soft_max
    return panel(
        "timeseries",
        title,
        description,
        datasource,
        targets=targets,
        fieldConfig={
            "defaults": {
                "color": {"mode": "palette-classic"},
                "custom": custom,
                "thresholds": thresholds(steps or NEUTRAL),
                "unit": unit,
            },
            "overrides": overrides or [],
        },
        options={
            "legend": {
                "calcs": ["mean", "max", "lastNotNull"],
                "displayMode": "table",
                "placement": "bottom",
                "showLegend": True,
                "sortBy": "Max",
                "sortDesc": True,
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def stat(title: str, description: str, targets: list[Json], unit: str, steps: Steps) -> Json:
    """The latest value of each series, coloured by ``steps``, with a sparkline."""
    return panel(
        "stat",
        title,
        description,
        PROMETHEUS,
        targets=targets,
        fieldConfig={
            "defaults": {
                "color": {"mode": "thresholds"},
                "decimals": 2,
                "thresholds": thresholds(steps),
                "unit": unit,
            },
            "overrides": [],
        },
        options={
            "colorMode": "background",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showPercentChange": False,
            "textMode": "auto",
            "wideLayout": True,
        },
    )


def table(
    title: str,
    description: str,
    targets: list[Json],
    *,
    columns: list[tuple[str, str]],
    overrides: list[Json],
    sort_by: str,
    descending: bool = True,
    datasource: Json = PROMETHEUS,
) -> Json:
    """Instant queries joined into one row per label set; ``columns`` is the order and
    the header of each field shown (others are hidden), ``overrides`` (by field name) add
    to a column's header its unit, colours and links."""
    shown = [name for name, _ in columns]
    properties: dict[str, list[Json]] = {
        name: [{"id": "displayName", "value": header}] for name, header in columns
    }
    for override in overrides:
        properties[override["matcher"]["options"]] += override["properties"]
    return panel(
        "table",
        title,
        description,
        datasource,
        targets=targets,
        fieldConfig={
            "defaults": {
                "color": {"mode": "thresholds"},
                "custom": {"align": "auto", "cellOptions": {"type": "auto"}, "inspect": False},
                "thresholds": thresholds(NEUTRAL),
            },
            "overrides": [
                {"matcher": {"id": "byName", "options": name}, "properties": found}
                for name, found in properties.items()
            ],
        },
        options={
            "cellHeight": "sm",
            "footer": {"countRows": False, "fields": "", "reducer": ["sum"], "show": False},
            "showHeader": True,
            "sortBy": [{"desc": descending, "displayName": dict(columns)[sort_by]}],
        },
        transformations=[
            {"id": "merge", "options": {}},
            {
                "id": "organize",
                "options": {
                    "excludeByName": {"Time": True},
                    "includeByName": {name: True for name in shown},
                    "indexByName": {name: i for i, name in enumerate(shown)},
                    "renameByName": {},
                },
            },
        ],
    )


def colour_cells(steps: Steps, unit: str) -> dict[str, Any]:
    """Field properties of a table column coloured by ``steps``."""
    return {
        "unit": unit,
        "thresholds": thresholds(steps),
        "custom.cellOptions": {"type": "color-background", "mode": "basic"},
    }


def logs(title: str, description: str, expr: str) -> Json:
    return panel(
        "logs",
        title,
        description,
        LOKI,
        targets=[logql(expr)],
        options={
            "dedupStrategy": "none",
            "enableLogDetails": True,
            "prettifyLogMessage": False,
            "showCommonLabels": False,
            "showLabels": False,
            "showTime": True,
            "sortOrder": "Descending",
            "wrapLogMessage": True,
        },
    )


def text(title: str, description: str, content: str) -> Json:
    return panel("text", title, description, None, options={"content": content, "mode": "markdown"})


# -- links


def explore(datasource: Json, query: Json) -> str:
    """A link opening ``query`` in Explore over the dashboard's time range. Grafana fills in
    the ``${...}`` variables (percent-encoded) before following it."""
    pane = {
        "a": {
            "datasource": datasource["uid"],
            "queries": [{"refId": "A", "datasource": datasource, **query}],
            "range": {"from": "${__from}", "to": "${__to}"},
        }
    }
    encoded = urllib.parse.quote(json.dumps(pane, separators=(",", ":")), safe="${}_.")
    return f"/explore?schemaVersion=1&orgId=1&panes={encoded}"


def link(title: str, url: str) -> Json:
    return {"targetBlank": False, "title": title, "url": url}


# -- layout


class Grid:
    """Places panels on Grafana's 24-column grid, left to right, wrapping to a new line
    below the tallest panel of the current one; a row header always starts a new line."""

    WIDTH = 24

    def __init__(self) -> None:
        self.panels: list[Json] = []
        self.x = self.y = self.height = 0

    def row(self, title: str, repeat: str = "") -> None:
        self._wrap()
        found: Json = {"type": "row", "title": title, "collapsed": False, "panels": []}
        if repeat:
            found["repeat"] = repeat
        found["gridPos"] = {"h": 1, "w": self.WIDTH, "x": 0, "y": self.y}
        self.panels.append(found)
        self.y += 1

    def add(self, width: int, height: int, *panels: Json) -> None:
        for found in panels:
            if self.x + width > self.WIDTH:
                self._wrap()
            found["gridPos"] = {"h": height, "w": width, "x": self.x, "y": self.y}
            self.panels.append(found)
            self.x += width
            self.height = max(self.height, height)

    def _wrap(self) -> None:
        self.y += self.height
        self.x = self.height = 0


# -- variables and dashboards


def variable(name: str, label: str, query: str, description: str) -> Json:
    """A multi-value Prometheus variable whose 'All' is the regex ``.*``."""
    return {
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "datasource": PROMETHEUS,
        "definition": query,
        "description": description,
        "hide": 0,
        "includeAll": True,
        "label": label,
        "multi": True,
        "name": name,
        "options": [],
        "query": {
            "qryType": 1,
            "query": query,
            "refId": "PrometheusVariableQueryEditor-VariableQuery",
        },
        "refresh": 2,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }


def service_variable(metric: str) -> Json:
    return variable(
        "service",
        "Service",
        f"label_values({metric}, job)",
        "The Prometheus job of each instrumented service.",
    )


def dashboard(uid: str, title: str, description: str, grid: Grid, variables: list[Json]) -> Json:
    for number, found in enumerate(grid.panels, start=1):
        found["id"] = number
    return {
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "description": description,
        "editable": True,
        "fiscalYearStartMonth": 0,
        "graphTooltip": 1,
        "id": None,
        "links": [
            {
                "asDropdown": False,
                "icon": "external link",
                "includeVars": True,
                "keepTime": True,
                "tags": [TAG],
                "targetBlank": False,
                "title": "Sightline",
                "tooltip": "",
                "type": "dashboards",
                "url": "",
            }
        ],
        "panels": grid.panels,
        "refresh": "30s",
        "schemaVersion": SCHEMA_VERSION,
        "tags": [TAG],
        "templating": {"list": variables},
        "time": {"from": "now-1h", "to": "now"},
        "timepicker": {},
        "timezone": "",
        "title": f"Sightline / {title}",
        "uid": uid,
        "version": 1,
        "weekStart": "",
    }


# -- Overview


def overview() -> Json:
    grid = Grid()
    rate_by_job = variant(q.REQUEST_RATE, by=("job",))
    errors_by_job = variant(q.ERROR_RATIO, by=("job",))
    p95_by_job = variant(q.LATENCY_P95, by=("job",))

    grid.row("$service", repeat="service")
    grid.add(
        6,
        4,
        stat(
            "Requests",
            "Requests per second the service answered, over the selected routes.",
            [prom(rate_by_job.render(ROUTE), "{{job}}")],
            q.REQUEST_RATE.unit,
            NEUTRAL,
        ),
        stat(
            "Errors (5xx)",
            "Share of requests answered with a 5xx status.",
            [prom(errors_by_job.render(ROUTE), "{{job}}")],
            q.ERROR_RATIO.unit,
            ERRORS,
        ),
        stat(
            "Latency p95",
            "95th percentile of the time from the app receiving a request to its last byte.",
            [prom(p95_by_job.render(ROUTE), "{{job}}")],
            q.LATENCY_P95.unit,
            LATENCY,
        ),
        stat(
            "Request slots in use",
            "Requests in flight over the requests the server's workers can run at once.",
            [prom(q.INFLIGHT_RATIO.render(SERVICE), "{{job}}")],
            q.INFLIGHT_RATIO.unit,
            UTILISATION,
        ),
    )

    grid.row("Requests")
    grid.add(
        8,
        9,
        timeseries(
            "Request rate",
            "Requests per second by service and route (the route template, never the raw path).",
            [prom(q.REQUEST_RATE.render(ROUTE), "{{job}} {{http_route}}")],
            q.REQUEST_RATE.unit,
            stack=True,
        ),
        timeseries(
            "Error ratio (5xx)",
            "Share of each route's requests answered with a 5xx status; 0 when it has none.",
            [prom(q.ERROR_RATIO.render(ROUTE), "{{job}} {{http_route}}")],
            q.ERROR_RATIO.unit,
            steps=ERRORS,
        ),
        timeseries(
            "Latency p50 / p95 / p99",
            "Request duration percentiles by service; the dots are exemplars of the p95 "
            "query, each opening its trace.",
            [
                prom(variant(p95_by_job, quantile="0.5").render(ROUTE), "{{job}} p50"),
                prom(p95_by_job.render(ROUTE), "{{job}} p95", exemplar=True),
                prom(variant(p95_by_job, quantile="0.99").render(ROUTE), "{{job}} p99"),
            ],
            q.LATENCY_P95.unit,
            steps=LATENCY,
        ),
    )
    grid.add(
        8,
        9,
        timeseries(
            "In flight ÷ capacity",
            "Requests in flight over the requests the server's workers can run at once; "
            "near 1, new requests queue.",
            [prom(q.INFLIGHT_RATIO.render(SERVICE), "{{job}}")],
            q.INFLIGHT_RATIO.unit,
            steps=UTILISATION,
            soft_max=1,
        ),
    )
    grid.add(16, 9, routes_table())

    grid.row("Logs and traces")
    grid.add(
        24,
        6,
        timeseries(
            "Log lines by level",
            "Log lines the services shipped to Loki per interval, by level.",
            [
                logql(
                    f"sum by (level) (count_over_time({{{STREAMS}}} [$__interval]))",
                    "{{level}}",
                )
            ],
            "short",
            bars=True,
            datasource=LOKI,
            overrides=[
                by_name("error", color={"fixedColor": RED, "mode": "fixed"}),
                by_name("critical", color={"fixedColor": "dark-red", "mode": "fixed"}),
                by_name("warning", color={"fixedColor": ORANGE, "mode": "fixed"}),
            ],
        ),
    )
    grid.add(
        12,
        11,
        logs(
            "Errors in the logs",
            "Error and critical log lines of the selected services, newest first; a line's "
            "trace_id opens its trace.",
            f'{{{STREAMS}, level=~"error|critical"}}',
        ),
        panel(
            "table",
            "Slow or failed traces",
            "Traces of the selected services with a failed span or a span slower than 500 ms.",
            TEMPO,
            targets=[
                traceql('{resource.service.name=~"$service" && (status=error || duration>500ms)}')
            ],
            fieldConfig={"defaults": {"custom": {"inspect": False}}, "overrides": []},
            options={"cellHeight": "sm", "showHeader": True},
        ),
    )

    grid.row("Service map")
    grid.add(
        14,
        12,
        panel(
            "nodeGraph",
            "Service map",
            "Services and the calls between them, drawn by Tempo from the traces "
            "(its service-graph metrics).",
            TEMPO,
            targets=[{"datasource": TEMPO, "queryType": "serviceMap"}],
            options={},
        ),
    )
    grid.add(10, 12, calls_table())
    return dashboard(
        "sightline-overview",
        "Overview",
        "Traffic, errors and latency of each service and route, with its logs and traces.",
        grid,
        [
            service_variable("http_server_request_duration_seconds_count"),
            variable(
                "route",
                "Route",
                'label_values(http_server_request_duration_seconds_count{job=~"$service"}, '
                "http_route)",
                "The route templates of the selected services.",
            ),
        ],
    )


def routes_table() -> Json:
    tempo_query = {
        "queryType": "traceql",
        "query": '{resource.service.name="${__data.fields.job}" '
        '&& span.http.route="${__data.fields.http_route}"}',
    }
    loki_query = {"expr": '{service_name="${__data.fields.job}"}', "queryType": "range"}
    return table(
        "Routes",
        "Each route's request rate, 5xx share and p95 latency over the time range; a route "
        "links to its traces, its service's logs and this dashboard narrowed to it.",
        [
            instant(q.REQUEST_RATE.render(ROUTE, RANGE)),
            instant(q.ERROR_RATIO.render(ROUTE, RANGE)),
            instant(q.LATENCY_P95.render(ROUTE, RANGE)),
        ],
        columns=[
            ("job", "Service"),
            ("http_route", "Route"),
            ("Value #A", "Requests/s"),
            ("Value #B", "Errors (5xx)"),
            ("Value #C", "p95"),
        ],
        sort_by="Value #A",
        overrides=[
            by_name("Value #A", unit=q.REQUEST_RATE.unit, decimals=2),
            by_name("Value #B", **colour_cells(ERRORS, q.ERROR_RATIO.unit)),
            by_name("Value #C", **colour_cells(LATENCY, q.LATENCY_P95.unit)),
            by_name(
                "http_route",
                links=[
                    link("Traces of this route", explore(TEMPO, tempo_query)),
                    link("Logs of this service", explore(LOKI, loki_query)),
                    link(
                        "Only this route",
                        "/d/sightline-overview/?var-service=${__data.fields.job}"
                        "&var-route=${__data.fields.http_route}&${__url_time_range}",
                    ),
                ],
            ),
        ],
    )


def calls_table() -> Json:
    calls = "traces_service_graph_request_total"
    failed = "traces_service_graph_request_failed_total"
    sel = 'server=~"$service"'
    return table(
        "Calls between services",
        "Calls into the selected services by caller over the time range, from Tempo's "
        "service-graph metrics: rate, failed share and the server side's p95.",
        [
            instant(f"sum by (client, server) (rate({calls}{{{sel}}}[{RANGE}]))"),
            instant(
                f"(sum by (client, server) (rate({failed}{{{sel}}}[{RANGE}]))"
                f" or sum by (client, server) (rate({calls}{{{sel}}}[{RANGE}])) * 0)"
                f" / sum by (client, server) (rate({calls}{{{sel}}}[{RANGE}]))"
            ),
            instant(
                "histogram_quantile(0.95, sum by (client, server, le) "
                f"(rate(traces_service_graph_request_server_seconds_bucket{{{sel}}}[{RANGE}])))"
            ),
        ],
        columns=[
            ("client", "Caller"),
            ("server", "Service"),
            ("Value #A", "Calls/s"),
            ("Value #B", "Failed"),
            ("Value #C", "p95"),
        ],
        sort_by="Value #A",
        overrides=[
            by_name("Value #A", unit="reqps", decimals=2),
            by_name("Value #B", **colour_cells(ERRORS, "percentunit")),
            by_name("Value #C", **colour_cells(LATENCY, "s")),
        ],
    )


# -- Saturation


def saturation() -> Json:
    grid = Grid()
    by_process = variant(q.INFLIGHT_RATIO, by=("job", "process_pid"))
    grid.row("Request slots")
    grid.add(
        6,
        8,
        timeseries(
            "In flight vs capacity",
            "Requests in flight (solid) against the requests the server's workers can run "
            "at once (dashed).",
            [
                prom(q.INFLIGHT.render(SERVICE), "{{job}} in flight"),
                prom(q.CAPACITY.render(SERVICE), "{{job}} capacity"),
            ],
            q.INFLIGHT.unit,
            overrides=[by_regex(".* capacity", **{"custom.lineStyle": DASHED})],
        ),
        timeseries(
            "In flight ÷ capacity",
            "Requests in flight over the requests the server's workers can run at once, "
            "sampled at each scrape.",
            [prom(q.INFLIGHT_RATIO.render(SERVICE), "{{job}}")],
            q.INFLIGHT_RATIO.unit,
            steps=UTILISATION,
            soft_max=1,
        ),
        timeseries(
            "Mean concurrency ÷ capacity",
            "Seconds spent serving requests per second (Little's law: the mean number in "
            "flight) over capacity; unlike a scrape-time sample it misses no short request.",
            [
                prom(
                    "sum by (job) (rate(http_server_request_duration_seconds_sum"
                    f"{{{SERVICE}}}[{W}])) / sum by (job) "
                    f"(http_server_worker_capacity{{{SERVICE}}})",
                    "{{job}}",
                )
            ],
            "percentunit",
            steps=UTILISATION,
            soft_max=1,
        ),
        timeseries(
            "In flight ÷ capacity per process",
            "The same ratio for each live worker process (process_pid).",
            [prom(by_process.render(SERVICE), "{{job}} {{process_pid}}")],
            q.INFLIGHT_RATIO.unit,
            steps=UTILISATION,
            soft_max=1,
        ),
    )

    grid.row("Server workers")
    grid.add(
        8,
        8,
        timeseries(
            "Busy workers ÷ configured",
            "Worker processes with a request in flight over the workers the server is "
            "configured to run.",
            [
                prom(
                    f"sum by (job) (server_workers_busy{{{SERVICE}}}) / sum by (job) "
                    f"(server_workers_configured{{{SERVICE}}})",
                    "{{job}}",
                )
            ],
            "percentunit",
            steps=UTILISATION,
            soft_max=1,
        ),
        timeseries(
            "Workers live vs configured",
            "Worker processes running and reporting (solid) against those configured "
            "(dashed); a gap means workers are crashing or being recycled.",
            [
                prom(f"sum by (job) (server_workers_live{{{SERVICE}}})", "{{job}} live"),
                prom(
                    f"sum by (job) (server_workers_configured{{{SERVICE}}})",
                    "{{job}} configured",
                ),
            ],
            "short",
            overrides=[by_regex(".* configured", **{"custom.lineStyle": DASHED})],
        ),
        timeseries(
            "Request queue time p95",
            "95th percentile of the time requests waited between the front proxy and the "
            "app (from X-Request-Start), where the proxy sends it.",
            [
                prom(
                    histogram_quantile(
                        "0.95", "http_server_request_queue_duration_seconds", SERVICE, "job"
                    ),
                    "{{job}}",
                )
            ],
            "s",
            steps=QUEUE_TIME,
        ),
    )

    grid.row("CPU and memory")
    grid.add(
        6,
        8,
        timeseries(
            "CPU ÷ limit",
            "CPU used by all of an instance's processes over its CPU limit (cgroup quota, "
            "else the CPUs it may run on).",
            [
                prom(
                    f"sum by (job, instance) (rate(process_cpu_seconds_total{{{SERVICE}}}[{W}]))"
                    f" / max by (job, instance) (process_cpu_limit_cores{{{SERVICE}}})",
                    "{{job}} {{instance}}",
                )
            ],
            "percentunit",
            steps=CPU,
            soft_max=1,
        ),
        timeseries(
            "CPU throttled share",
            "Share of CFS scheduling periods in which the container ran out of CPU quota; "
            "above a few percent, requests stall.",
            [
                prom(
                    "max by (job, instance) (rate(process_cpu_throttled_periods_total"
                    f"{{{SERVICE}}}[{W}])) / max by (job, instance) "
                    f"(rate(process_cpu_periods_total{{{SERVICE}}}[{W}]))",
                    "{{job}} {{instance}}",
                )
            ],
            "percentunit",
            steps=THROTTLING,
        ),
        timeseries(
            "Memory ÷ limit",
            "Resident memory of all of an instance's processes over its memory limit "
            "(cgroup limit, else the host's memory); pages shared after fork count once "
            "per process.",
            [
                prom(
                    f"sum by (job, instance) (process_resident_memory_bytes{{{SERVICE}}})"
                    f" / max by (job, instance) (process_memory_limit_bytes{{{SERVICE}}})",
                    "{{job}} {{instance}}",
                )
            ],
            "percentunit",
            steps=MEMORY,
            soft_max=1,
        ),
        timeseries(
            "Resident memory per process",
            "Resident memory of each process; steady growth in one worker is a leak.",
            [
                prom(
                    f"max by (job, process_pid) (process_resident_memory_bytes{{{SERVICE}}})",
                    "{{job}} {{process_pid}}",
                )
            ],
            "bytes",
        ),
    )

    grid.row("Runtime")
    grid.add(
        6,
        8,
        timeseries(
            "Open file descriptors ÷ limit",
            "Open file descriptors of each process over its limit; at 1, sockets and "
            "files fail to open.",
            [
                prom(
                    f"max by (job, process_pid) (process_open_fds{{{SERVICE}}}"
                    f" / process_max_fds{{{SERVICE}}})",
                    "{{job}} {{process_pid}}",
                )
            ],
            "percentunit",
            steps=FDS,
        ),
        timeseries(
            "Threads",
            "Operating-system threads of each process.",
            [
                prom(
                    f"max by (job, process_pid) (process_threads{{{SERVICE}}})",
                    "{{job}} {{process_pid}}",
                )
            ],
            "short",
        ),
        timeseries(
            "GC pause p99",
            "99th percentile of the time the interpreter stopped for a garbage collection, "
            "by generation.",
            [
                prom(
                    histogram_quantile(
                        "0.99", "python_gc_pause_seconds", SERVICE, "job, generation"
                    ),
                    "{{job}} gen {{generation}}",
                )
            ],
            "s",
            steps=GC_PAUSE,
        ),
        timeseries(
            "Event-loop lag p99",
            "99th percentile of how late the asyncio event loop ran a due timer, which every "
            "request on that loop waited too (empty for WSGI apps).",
            [
                prom(
                    histogram_quantile("0.99", "asyncio_event_loop_lag_seconds", SERVICE, "job"),
                    "{{job}}",
                )
            ],
            "s",
            steps=LOOP_LAG,
        ),
    )
    return dashboard(
        "sightline-saturation",
        "Saturation",
        "How full each service is: request slots, server workers, CPU, memory and the "
        "runtime, per process where it matters.",
        grid,
        [service_variable("process_cpu_limit_cores")],
    )


# -- Workers


def workers() -> Json:
    grid = Grid()
    by_task = ("job", "task_name")
    grid.row("Now")
    grid.add(
        6,
        4,
        stat(
            "Tasks",
            "Tasks finished per second, whatever their outcome.",
            [prom(variant(q.TASK_RATE, by=("job",)).render(QUEUE), "{{job}}")],
            q.TASK_RATE.unit,
            NEUTRAL,
        ),
        stat(
            "Failed",
            "Share of finished tasks that raised.",
            [prom(variant(q.TASK_FAILURE_RATIO, by=("job",)).render(QUEUE), "{{job}}")],
            q.TASK_FAILURE_RATIO.unit,
            TASK_FAILURES,
        ),
        stat(
            "Backlog",
            "Messages waiting in the selected queues.",
            [prom(variant(q.QUEUE_DEPTH, by=("job",)).render(QUEUE), "{{job}}")],
            q.QUEUE_DEPTH.unit,
            BACKLOG,
        ),
        stat(
            "Task slots in use",
            "Tasks running over the tasks the workers can run at once.",
            [prom(q.WORKER_UTILISATION.render(SERVICE), "{{job}}")],
            q.WORKER_UTILISATION.unit,
            UTILISATION,
        ),
    )

    grid.row("Tasks")
    grid.add(
        12,
        9,
        timeseries(
            "Task rate by task and outcome",
            "Tasks finished per second by task name and outcome (success, failure, retry, "
            "revoked, rejected).",
            [
                prom(
                    variant(q.TASK_RATE, by=("job", "task_name", "task_outcome")).render(QUEUE),
                    "{{job}} {{task_name}} {{task_outcome}}",
                )
            ],
            q.TASK_RATE.unit,
            stack=True,
            overrides=[
                by_regex(".* failure", color={"fixedColor": RED, "mode": "fixed"}),
                by_regex(".* retry", color={"fixedColor": ORANGE, "mode": "fixed"}),
            ],
        ),
        timeseries(
            "Failure ratio",
            "Share of each task's runs that raised; 0 when none did.",
            [
                prom(
                    variant(q.TASK_FAILURE_RATIO, by=by_task).render(QUEUE), "{{job}} {{task_name}}"
                )
            ],
            q.TASK_FAILURE_RATIO.unit,
            steps=TASK_FAILURES,
        ),
        timeseries(
            "Duration p95",
            "95th percentile of how long each task ran, from start to outcome.",
            [
                prom(
                    histogram_quantile(
                        "0.95", "worker_task_duration_seconds", QUEUE, "job, task_name"
                    ),
                    "{{job}} {{task_name}}",
                )
            ],
            "s",
        ),
        timeseries(
            "Wait p95",
            "95th percentile of how long tasks waited between being published and starting "
            "(tasks from instrumented producers).",
            [prom(q.QUEUE_WAIT_P95.render(QUEUE), "{{job}} {{task_queue}}")],
            q.QUEUE_WAIT_P95.unit,
            steps=WAIT,
        ),
    )

    grid.row("Queues and workers")
    grid.add(
        8,
        8,
        timeseries(
            "Queue depth",
            "Messages waiting in each queue the workers consume, read every few seconds "
            "from the broker.",
            [prom(q.QUEUE_DEPTH.render(QUEUE), "{{job}} {{task_queue}}")],
            q.QUEUE_DEPTH.unit,
        ),
        timeseries(
            "Oldest message age",
            "Age of the oldest waiting message of each queue: how late the next task "
            "already is (Redis and RQ).",
            [
                prom(
                    f"max by (job, task_queue) (worker_queue_oldest_age_seconds{{{QUEUE}}})",
                    "{{job}} {{task_queue}}",
                )
            ],
            "s",
            steps=OLDEST,
        ),
        timeseries(
            "Drain time estimate",
            "Seconds the workers need to work through each queue's backlog at the pace "
            "they finished tasks over the last 5 minutes; empty while they finish none.",
            [
                prom(
                    f"job_task_queue:worker_queue_drain_seconds:estimate5m{{{QUEUE}}}",
                    "{{job}} {{task_queue}}",
                )
            ],
            "s",
            steps=DRAIN,
        ),
    )
    grid.add(
        8,
        8,
        timeseries(
            "Busy ÷ capacity",
            "Tasks running over the tasks the workers can run at once (their concurrency); "
            "near 1 with a growing backlog, add workers.",
            [prom(q.WORKER_UTILISATION.render(SERVICE), "{{job}}")],
            q.WORKER_UTILISATION.unit,
            steps=UTILISATION,
            soft_max=1,
        ),
        timeseries(
            "Published rate",
            "Tasks sent to the broker per second by instrumented producers (the web app's "
            "job, or a worker retrying), by queue and task.",
            [
                prom(
                    "sum by (job, task_queue, task_name) (rate(worker_tasks_published_total"
                    f'{{task_queue=~"$queue"}}[{W}]))',
                    "{{task_name}} from {{job}}",
                )
            ],
            "ops",
            stack=True,
        ),
        timeseries(
            "RQ registries",
            "Jobs in each RQ queue's started (running now) and failed (kept for inspection) "
            "registries.",
            [
                prom(
                    f"max by (job, task_queue, registry) (worker_queue_registry_jobs{{{QUEUE}}})",
                    "{{job}} {{task_queue}} {{registry}}",
                )
            ],
            "short",
        ),
    )
    return dashboard(
        "sightline-workers",
        "Workers",
        "Background tasks (Celery, RQ, custom loops): throughput, failures, latency, "
        "backlog and how busy the workers are.",
        grid,
        [
            service_variable("worker_task_duration_seconds_count"),
            variable(
                "queue",
                "Queue",
                'label_values(worker_task_duration_seconds_count{job=~"$service"}, task_queue)',
                "The queues the selected workers consume.",
            ),
        ],
    )


# -- Agent health


def health() -> Json:
    grid = Grid()
    grid.row("Now")
    grid.add(
        6,
        4,
        stat(
            "Internal errors since start",
            "Errors inside Sightline suppressed instead of reaching the app since its "
            "processes started; should stay at zero.",
            [prom(f"sum by (job) (sightline_internal_errors_total{{{SERVICE}}})", "{{job}}")],
            "short",
            ZERO_IS_GOOD,
        ),
        stat(
            "Dropped since start",
            "Spans and log lines given up on for any reason since the processes started.",
            [prom(f"sum by (job) (sightline_dropped_total{{{SERVICE}}})", "{{job}}")],
            "short",
            ZERO_IS_GOOD,
        ),
        stat(
            "Fullest export queue",
            "The fullest export queue of each service: items waiting over the queue's bound.",
            [prom(queue_fill("job"), "{{job}}")],
            "percentunit",
            UTILISATION,
        ),
        stat(
            "Folded since start",
            "Observations the cardinality guard folded into overflow series since the "
            "processes started; above zero, a label is less bounded than it should be.",
            [prom(f"sum by (job) (sightline_series_folded_total{{{SERVICE}}})", "{{job}}")],
            "short",
            ZERO_IS_GOOD,
        ),
    )

    grid.row("Export")
    grid.add(
        8,
        8,
        timeseries(
            "Exported",
            "Spans and log lines the backends accepted per second.",
            [
                prom(
                    f"sum by (job, signal) (rate(sightline_exported_total{{{SERVICE}}}[{W}]))",
                    "{{job}} {{signal}}",
                )
            ],
            "cps",
            stack=True,
        ),
        timeseries(
            "Dropped",
            "Spans and log lines given up on per second, by signal and reason (queue full, "
            "refused, retries exhausted, shutdown).",
            [
                prom(
                    "sum by (job, signal, reason) (rate(sightline_dropped_total"
                    f"{{{SERVICE}}}[{W}]))",
                    "{{job}} {{signal}} {{reason}}",
                )
            ],
            "cps",
        ),
        timeseries(
            "Retried",
            "Items sent again after a failed attempt per second, by signal and the "
            "attempt's failure.",
            [
                prom(
                    "sum by (job, signal, reason) (rate(sightline_export_retried_total"
                    f"{{{SERVICE}}}[{W}]))",
                    "{{job}} {{signal}} {{reason}}",
                )
            ],
            "cps",
        ),
    )
    grid.add(
        8,
        8,
        timeseries(
            "Failed export requests",
            "Export requests that failed per second, by signal and reason (connection, "
            "timeout, HTTP status).",
            [
                prom(
                    "sum by (job, signal, reason) (rate(sightline_export_failures_total"
                    f"{{{SERVICE}}}[{W}]))",
                    "{{job}} {{signal}} {{reason}}",
                )
            ],
            "reqps",
        ),
        timeseries(
            "Export queue fill",
            "Items waiting in each process's export queue over its bound; at 1 new items "
            "are dropped.",
            [prom(queue_fill("job, signal"), "{{job}} {{signal}}")],
            "percentunit",
            steps=UTILISATION,
            soft_max=1,
        ),
        timeseries(
            "Scrape health",
            "Whether Prometheus could scrape each instance's metrics endpoint (1) or not (0).",
            [prom(f"up{{{SERVICE}}}", "{{job}} {{instance}}")],
            "short",
            steps=((None, RED), (1, GREEN)),
        ),
    )

    grid.row("Guards")
    grid.add(
        12,
        8,
        timeseries(
            "Internal errors",
            "Errors inside Sightline suppressed per second, by component; each cause is "
            "logged at most once a minute.",
            [
                prom(
                    "sum by (job, component) (rate(sightline_internal_errors_total"
                    f"{{{SERVICE}}}[{W}]))",
                    "{{job}} {{component}}",
                )
            ],
            "cps",
        ),
        timeseries(
            "Series folded",
            "Observations folded into each metric's overflow series per second.",
            [
                prom(
                    f"sum by (job, metric) (rate(sightline_series_folded_total{{{SERVICE}}}[{W}]))",
                    "{{job}} {{metric}}",
                )
            ],
            "cps",
        ),
    )
    return dashboard(
        "sightline-health",
        "Agent health",
        "Whether Sightline itself is keeping up: what it exported, dropped and retried, "
        "how full its queues are, and what it suppressed or folded.",
        grid,
        [service_variable("process_cpu_limit_cores")],
    )


def queue_fill(by: str) -> str:
    return (
        f"max by ({by}) (sightline_queue_items{{{SERVICE}}}"
        f" / sightline_queue_capacity{{{SERVICE}}})"
    )


# -- Capacity and SLO

REQUIRED = "sightline:required_replicas:count"
ACTUAL = "sightline:actual_replicas:count"
RECOMMENDED = "sightline:recommended_replicas:count"
# The burn-rate factors of the SLO alerts: tickets at 1 and 3, pages at 6 and 14.4.
BURN: Steps = ((None, GREEN), (1, YELLOW), (3, ORANGE), (6, RED), (14.4, "dark-red"))
SLO_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")

REASONS = """\
Each hint is a recording rule, `sightline:required_replicas:count{reason=...}`:

- **concurrency** (web): the mean number of requests in flight (Little's law, busy
  seconds per second) over request slots kept 70 % busy.
- **cpu**: the HPA's rule, replicas times CPU utilisation over 70 %, unchanged while
  within 10 % of the target.
- **queue** (workers): the task slots needed to keep up with arrivals and drain the
  backlog within 300 s, over slots kept 70 % busy.

**Recommended** is the largest requirement of any reason, held for 5 minutes before it
may fall, as the Kubernetes HPA stabilises scale-down. None is below 1.
"""


def per_reason(expr: str) -> str:
    """A per-service series copied onto each of its hint's reasons, to share table rows."""
    return f"{expr} + on (job) group_right () (0 * {REQUIRED}{{{SERVICE}}})"


def capacity() -> Json:
    grid = Grid()
    grid.row("Replicas")
    grid.add(
        15,
        9,
        table(
            "Required vs actual replicas",
            "Replicas each reason calls for against the replicas answering scrapes and the "
            "recommendation; Missing is red where a reason needs more than run now.",
            [
                instant(f"{REQUIRED}{{{SERVICE}}}"),
                instant(per_reason(f"{ACTUAL}{{{SERVICE}}}")),
                instant(per_reason(f"{RECOMMENDED}{{{SERVICE}}}")),
                instant(f"{REQUIRED}{{{SERVICE}}} - on (job) group_left () {ACTUAL}"),
            ],
            columns=[
                ("job", "Service"),
                ("reason", "Reason"),
                ("Value #A", "Required"),
                ("Value #B", "Actual"),
                ("Value #C", "Recommended"),
                ("Value #D", "Missing"),
            ],
            sort_by="Value #D",
            overrides=[
                by_name("Value #A", unit="short"),
                by_name("Value #B", unit="short"),
                by_name("Value #C", unit="short"),
                by_name("Value #D", **colour_cells(((None, GREEN), (0.5, RED)), "short")),
            ],
        ),
    )
    grid.add(9, 9, text("Reasons", "What each replica hint computes.", REASONS))
    grid.add(
        24,
        8,
        timeseries(
            "Recommended vs actual replicas",
            "The recommendation (solid) against the replicas answering scrapes (dashed) "
            "and each reason's requirement (dotted).",
            [
                prom(f"{RECOMMENDED}{{{SERVICE}}}", "{{job}} recommended"),
                prom(f"{ACTUAL}{{{SERVICE}}}", "{{job}} actual"),
                prom(f"{REQUIRED}{{{SERVICE}}}", "{{job}} {{reason}}"),
            ],
            "short",
            overrides=[
                by_regex(".* actual", **{"custom.lineStyle": DASHED, "custom.lineWidth": 2}),
                by_regex(
                    ".* (concurrency|cpu|queue)",
                    **{"custom.lineStyle": {"dash": [2, 6], "fill": "dot"}},
                ),
            ],
        ),
    )

    grid.row("Service-level objectives")
    windows = [
        instant(
            f"slo:sli_error:ratio_rate{window}{{{SERVICE}}}"
            " / on (slo) group_left () slo:error_budget:ratio"
        )
        for window in SLO_WINDOWS
    ]
    objective = instant(
        f"0 * slo:sli_total:rate5m{{{SERVICE}}} + on (slo) group_left () slo:objective:ratio"
    )
    refs = [f"Value #{chr(ord('A') + i)}" for i in range(len(windows) + 1)]
    grid.add(
        14,
        8,
        table(
            "Burn rate by window",
            "How many times faster than its objective allows each service spends its error "
            "budget, over each alerting window (1 spends it in exactly 30 days).",
            [objective, *windows],
            columns=[
                ("job", "Service"),
                ("slo", "Objective"),
                (refs[0], "Target"),
                *zip(refs[1:], SLO_WINDOWS, strict=True),
            ],
            sort_by=refs[1],
            overrides=[
                by_name(refs[0], unit="percentunit", decimals=1),
                *(by_name(ref, **colour_cells(BURN, "suffix:x"), decimals=2) for ref in refs[1:]),
            ],
        ),
    )
    grid.add(
        10,
        8,
        panel(
            "bargauge",
            "Error budget remaining (30 days)",
            "Share of each objective's error budget not yet spent over the last 30 days, "
            "or as far back as Prometheus keeps the recorded error ratios.",
            PROMETHEUS,
            targets=[
                prom(
                    f"1 - (sum_over_time(slo:sli_error:rate5m{{{SERVICE}}}[30d])"
                    f" / sum_over_time(slo:sli_total:rate5m{{{SERVICE}}}[30d]))"
                    " / on (slo) group_left () slo:error_budget:ratio",
                    "{{job}} {{slo}}",
                )
            ],
            fieldConfig={
                "defaults": {
                    "color": {"mode": "thresholds"},
                    "max": 1,
                    "min": 0,
                    "thresholds": thresholds(((None, RED), (0.25, ORANGE), (0.5, GREEN))),
                    "unit": "percentunit",
                },
                "overrides": [],
            },
            options={
                "displayMode": "gradient",
                "orientation": "horizontal",
                "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                "showUnfilled": True,
                "valueMode": "color",
            },
        ),
    )
    grid.add(
        24,
        8,
        timeseries(
            "Burn rate now",
            "Error budget spent per unit of time over the last 5 minutes, relative to the "
            "objective; the dashed lines are the alerts' factors (tickets 1 and 3, pages 6 "
            "and 14.4).",
            [prom(f"slo:current_burn_rate:ratio{{{SERVICE}}}", "{{job}} {{slo}}")],
            "suffix:x",
            steps=BURN,
        ),
    )

    grid.row("Alerts")
    grid.add(
        24,
        8,
        table(
            "Firing and pending alerts",
            "Alerts of the selected services that Prometheus evaluates as pending or firing now.",
            [instant(f"ALERTS{{{SERVICE}}}")],
            columns=[
                ("alertname", "Alert"),
                ("alertstate", "State"),
                ("severity", "Severity"),
                ("job", "Service"),
                ("instance", "Instance"),
                ("http_route", "Route"),
                ("task_queue", "Queue"),
                ("slo", "Objective"),
                ("reason", "Reason"),
            ],
            sort_by="alertstate",
            descending=False,  # firing before pending
            overrides=[
                by_name(
                    "severity",
                    mappings=[value_colours({"critical": RED, "warning": ORANGE, "info": BLUE})],
                    **{"custom.cellOptions": {"type": "color-text"}},
                ),
                by_name(
                    "alertstate",
                    mappings=[value_colours({"firing": RED, "pending": YELLOW})],
                    **{"custom.cellOptions": {"type": "color-text"}},
                ),
            ],
        ),
    )
    return dashboard(
        "sightline-capacity",
        "Capacity & SLO",
        "How many replicas each service needs and why, how fast it spends its error "
        "budgets, and which alerts are pending or firing.",
        grid,
        [service_variable(ACTUAL)],
    )


def value_colours(colours: dict[str, str]) -> Json:
    return {
        "type": "value",
        "options": {
            value: {"color": colour, "index": i}
            for i, (value, colour) in enumerate(colours.items())
        },
    }


# -- files

DASHBOARDS: dict[str, Callable[[], Json]] = {
    "overview.json": overview,
    "saturation.json": saturation,
    "workers.json": workers,
    "capacity.json": capacity,
    "health.json": health,
}


def render(build: Callable[[], Json]) -> str:
    return json.dumps(build(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def main(argv: list[str]) -> int:
    check = argv == ["--check"]
    if argv and not check:
        print("usage: python dashboards/build.py [--check]", file=sys.stderr)
        return 2
    stale = []
    for name, build in DASHBOARDS.items():
        path = HERE / name
        wanted = render(build)
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == wanted:
            continue
        if check:
            stale.append(name)
        else:
            path.write_text(wanted, encoding="utf-8")
            print(f"wrote dashboards/{name}")
    extra = sorted(p.name for p in HERE.glob("*.json") if p.name not in DASHBOARDS)
    for name in stale + extra:
        reason = "is not generated by" if name in extra else "differs from what generates"
        print(f"dashboards/{name} {reason} dashboards/build.py", file=sys.stderr)
    if (stale or extra) and check:
        print("run: python dashboards/build.py", file=sys.stderr)
    return 1 if stale or extra else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
