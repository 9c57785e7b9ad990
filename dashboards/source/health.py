"""Sightline / Agent health: whether Sightline itself keeps up inside each service: what it
exported, dropped and retried, how full its export queues are, and what it suppressed or
folded into overflow series.
"""

from __future__ import annotations

from .panels import (
    GREEN,
    RED,
    SERVICE,
    UTILISATION,
    ZERO_IS_GOOD,
    Grid,
    Json,
    W,
    dashboard,
    prom,
    service_variable,
    stat,
    timeseries,
    utilisation,
)


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
            "The fullest export queue of each service: items (or bytes) waiting over the "
            "queue's bound.",
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
        utilisation(
            "Export queue fill",
            "Items, or bytes, waiting in each process's export queue over its bound, "
            "whichever is fuller; at 1 new items are dropped.",
            [prom(queue_fill("job, signal"), "{{job}} {{signal}}")],
            "percentunit",
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
        8,
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
        timeseries(
            "Snapshot store problems",
            "Trouble with the directory where a server's processes merge their metrics, "
            "by reason: a directory refused (the processes then serve their own metrics, "
            "and the log names the fix), files skipped, writes failed, a worker's "
            "snapshot late or stale (its numbers in the merged view old).",
            [
                prom(
                    "sum by (job, reason) (increase(sightline_snapshot_errors_total"
                    f"{{{SERVICE}}}[{W}]))",
                    "{{job}} {{reason}}",
                )
            ],
            "short",
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
    """The fuller of each export queue's two bounds: items, and bytes."""
    items = f"sightline_queue_items{{{SERVICE}}} / sightline_queue_capacity{{{SERVICE}}}"
    size = f"sightline_queue_bytes{{{SERVICE}}} / sightline_queue_capacity_bytes{{{SERVICE}}}"
    return (
        f"max by ({by}) ("
        f'label_replace({items}, "bound", "items", "", "")'
        f' or label_replace({size}, "bound", "bytes", "", ""))'
    )
