"""Sightline / Overview: traffic, errors and latency of each service and route, with its
logs, its traces and the service map.

The golden-signal panels render the PromQL of ``sightline_appliance.queries``, the same text the
terminal view of ``sightline demo`` runs, so both show the same numbers; a test checks that
no query of this dashboard on the HTTP metrics is written by hand.
"""

from __future__ import annotations

from typing import Any

from sightline_appliance import queries as q
from sightline_appliance import thresholds as t
from sightline_appliance.queries import Query

from .panels import (
    ERRORS,
    LATENCY,
    LOKI,
    NEUTRAL,
    ORANGE,
    RANGE,
    RED,
    ROUTE,
    SERVICE,
    STREAMS,
    TEMPO,
    UTILISATION,
    Grid,
    Json,
    by_name,
    colour_cells,
    dashboard,
    explore,
    instant,
    link,
    logql,
    logs,
    panel,
    prom,
    service_variable,
    stat,
    table,
    timeseries,
    traceql,
    utilisation,
    variable,
    variant,
)

# A request slower than the latency objective's threshold spends its error budget; the
# collector keeps every trace that slow.
SLOW = f"{t.SLOW_REQUEST.value * 1000:g}"


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
            "Request-seconds spent in flight over the slot-seconds the server's workers "
            "offered: the share of request slots in use.",
            [prom(q.INFLIGHT_RATIO.render(SERVICE), "{{job}}")],
            q.INFLIGHT_RATIO.unit,
            UTILISATION,
        ),
    )

    grid.row("Requests")
    grid.add(
        8,
        9,
        per_route(
            q.REQUEST_RATE,
            "Request rate",
            "Requests per second by service and route (the route template, never the raw path).",
            stack=True,
        ),
        per_route(
            q.ERROR_RATIO,
            "Error ratio (5xx)",
            "Share of each route's requests answered with a 5xx status; 0 when it has none.",
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
        utilisation(
            "Slots in use",
            "Request-seconds spent in flight over the slot-seconds the server's workers "
            "offered; near 1, new requests queue.",
            [prom(q.INFLIGHT_RATIO.render(SERVICE), "{{job}}")],
            q.INFLIGHT_RATIO.unit,
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
            f"Traces of the selected services with a failed span or a span slower than {SLOW} ms.",
            TEMPO,
            targets=[
                traceql(
                    f'{{resource.service.name=~"$service" && (status=error || duration>{SLOW}ms)}}'
                )
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


def per_route(query: Query, title: str, description: str, **options: Any) -> Json:
    """A graph of one shared query for each service and route, in the query's unit."""
    target = prom(query.render(ROUTE), "{{job}} {{http_route}}")
    return timeseries(title, description, [target], query.unit, **options)


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
