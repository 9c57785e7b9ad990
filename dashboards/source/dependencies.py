"""Sightline / Dependencies: what the services wait on. Databases and caches (operations,
errors, latency, cache hit ratio), their connection pools (use, wait, timeouts) and the
HTTP hosts they call (requests, errors, latency).

A saturated pool is the signal that changes the scaling advice: more app replicas open
more connections to a database that is already the limit (SightlineDbPoolSaturated).
"""

from __future__ import annotations

from sightline_appliance import thresholds as t

from .panels import (
    DEPENDENCY_ERRORS,
    POOL_USE,
    SERVICE,
    ZERO_IS_GOOD,
    Grid,
    Json,
    W,
    dashboard,
    histogram_quantile,
    percent,
    prom,
    service_variable,
    stat,
    timeseries,
    utilisation,
)

DB = "job, db_system_name"
POOL = "job, db_system_name, db_client_connection_pool_name"
HOST = "job, server_address"


def dependencies() -> Json:
    grid = Grid()
    grid.row("Now")
    grid.add(
        8,
        4,
        stat(
            "Fullest connection pool",
            "The share of its connections the fullest pool of each service has in use; "
            f"at {percent(t.POOL_SATURATED.value)} requests start to wait for the pool, not the "
            "database.",
            [
                prom(
                    f"max by (job) (job:db_client_connection_utilisation:max{{{SERVICE}}})",
                    "{{job}}",
                )
            ],
            "percentunit",
            POOL_USE,
        ),
        stat(
            "Failing database calls",
            "The share of database and cache operations that raised over 5 minutes, the "
            "worst system of each service.",
            [
                prom(
                    "max by (job) (job_db_system:db_client_operation_errors:ratio_rate5m"
                    f"{{{SERVICE}}})",
                    "{{job}}",
                )
            ],
            "percentunit",
            DEPENDENCY_ERRORS,
        ),
        stat(
            "Failing HTTP calls",
            "The share of outgoing HTTP requests answered 5xx or not at all over 5 minutes, "
            "the worst host of each service.",
            [
                prom(
                    "max by (job) (job_server_address:http_client_request_errors:ratio_rate5m"
                    f"{{{SERVICE}}})",
                    "{{job}}",
                )
            ],
            "percentunit",
            DEPENDENCY_ERRORS,
        ),
    )

    grid.row("Databases and caches")
    grid.add(
        6,
        8,
        timeseries(
            "Operations",
            "Database and cache operations per second, by system.",
            [
                prom(
                    f"sum by ({DB}) (rate(db_client_operation_duration_seconds_count"
                    f"{{{SERVICE}}}[{W}]))",
                    "{{job}} {{db_system_name}}",
                )
            ],
            "ops",
            stack=True,
        ),
        timeseries(
            "Errors",
            "Share of operations that raised (a constraint violated, a timeout, a "
            "connection refused), by system.",
            [
                prom(
                    f"job_db_system:db_client_operation_errors:ratio_rate5m{{{SERVICE}}}",
                    "{{job}} {{db_system_name}}",
                )
            ],
            "percentunit",
            steps=DEPENDENCY_ERRORS,
        ),
        timeseries(
            "Operation time p95",
            "95th percentile of the time an operation took, from sending it to reading the "
            "reply, by system.",
            [
                prom(
                    histogram_quantile("0.95", "db_client_operation_duration_seconds", SERVICE, DB),
                    "{{job}} {{db_system_name}}",
                )
            ],
            "s",
        ),
        timeseries(
            "Cache hit ratio",
            "Share of cache reads (GET, each key of MGET) that found their key.",
            [
                prom(
                    f'sum by ({DB}) (rate(cache_lookups_total{{{SERVICE}, cache_result="hit"}}'
                    f"[{W}])) / sum by ({DB}) (rate(cache_lookups_total{{{SERVICE}}}[{W}]))",
                    "{{job}} {{db_system_name}}",
                )
            ],
            "percentunit",
            soft_max=1,
        ),
    )

    grid.row("Connection pools")
    grid.add(
        8,
        8,
        utilisation(
            "Pool in use",
            "Connections in use over the most each pool hands out (size plus overflow), "
            "summed over the service's processes.",
            [
                prom(
                    f"job_pool:db_client_connection_utilisation:ratio{{{SERVICE}}}",
                    "{{job}} {{db_client_connection_pool_name}}",
                )
            ],
            "percentunit",
            steps=POOL_USE,
        ),
        timeseries(
            "Wait for a connection p95",
            "95th percentile of the time getting a connection from the pool took: waiting "
            "for a free one, or opening one.",
            [
                prom(
                    histogram_quantile(
                        "0.95", "db_client_connection_wait_time_seconds", SERVICE, POOL
                    ),
                    "{{job}} {{db_client_connection_pool_name}}",
                )
            ],
            "s",
        ),
        timeseries(
            "Pool timeouts",
            "Requests for a connection that gave up waiting, per second; each one reached "
            "the app as an error.",
            [
                prom(
                    f"sum by ({POOL}) (rate(db_client_connection_timeouts_total"
                    f"{{{SERVICE}}}[{W}]))",
                    "{{job}} {{db_client_connection_pool_name}}",
                )
            ],
            "reqps",
            steps=ZERO_IS_GOOD,
        ),
    )

    grid.row("Outgoing HTTP")
    grid.add(
        8,
        8,
        timeseries(
            "Requests by host",
            "Outgoing HTTP requests per second, by host called.",
            [
                prom(
                    f"sum by ({HOST}) (rate(http_client_request_duration_seconds_count"
                    f"{{{SERVICE}}}[{W}]))",
                    "{{job}} {{server_address}}",
                )
            ],
            "reqps",
            stack=True,
        ),
        timeseries(
            "Failed by host",
            "Share of outgoing requests answered 5xx or not at all, by host called.",
            [
                prom(
                    f"job_server_address:http_client_request_errors:ratio_rate5m{{{SERVICE}}}",
                    "{{job}} {{server_address}}",
                )
            ],
            "percentunit",
            steps=DEPENDENCY_ERRORS,
        ),
        timeseries(
            "Response time p95 by host",
            "95th percentile of the time to the response headers, by host called.",
            [
                prom(
                    histogram_quantile(
                        "0.95", "http_client_request_duration_seconds", SERVICE, HOST
                    ),
                    "{{job}} {{server_address}}",
                )
            ],
            "s",
        ),
    )
    return dashboard(
        "sightline-dependencies",
        "Dependencies",
        "What the services wait on: databases and caches, their connection pools, and the "
        "HTTP hosts they call.",
        grid,
        [service_variable("db_client_operation_duration_seconds_count")],
    )
