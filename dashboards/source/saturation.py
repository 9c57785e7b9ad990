"""Sightline / Saturation: how full each service is, by the USE method: request slots,
server workers, CPU, memory and the runtime, per process where it matters.

CPU and memory are summed per instance, since the limit they are compared with is the
container's; descriptors, threads and resident memory are per process (``process_pid``).
"""

from __future__ import annotations

from sightline_appliance import queries as q

from .panels import (
    CPU,
    DASHED,
    FDS,
    GC_PAUSE,
    LOOP_LAG,
    MEMORY,
    QUEUE_TIME,
    SERVICE,
    THROTTLING,
    Grid,
    Json,
    W,
    by_regex,
    dashboard,
    histogram_quantile,
    prom,
    service_variable,
    timeseries,
    utilisation,
)


def saturation() -> Json:
    grid = Grid()
    grid.row("Request slots")
    grid.add(
        8,
        8,
        timeseries(
            "In flight vs capacity",
            "The mean number of requests in flight (solid: request-seconds spent in flight "
            "per second, exact however rarely scraped) against the requests the server's "
            "workers can run at once (dashed).",
            [
                prom(q.INFLIGHT.render(SERVICE), "{{job}} in flight"),
                prom(q.CAPACITY.render(SERVICE), "{{job}} capacity"),
            ],
            q.INFLIGHT.unit,
            overrides=[by_regex(".* capacity", **{"custom.lineStyle": DASHED})],
        ),
        utilisation(
            "Slots in use",
            "Request-seconds spent in flight over the slot-seconds the workers offered: the "
            "share of request slots in use (SightlineInFlightNearCapacity's measure).",
            [prom(q.INFLIGHT_RATIO.render(SERVICE), "{{job}}")],
            q.INFLIGHT_RATIO.unit,
        ),
        timeseries(
            "In flight at each scrape, per process",
            "Each live worker process's in-flight gauge as the scrape read it (process_pid), "
            "a sample that reads a busy sync worker low (it answers mostly between "
            "requests), though a value that stays high is a request that is stuck.",
            [
                prom(
                    f"sum by (job, process_pid) (http_server_active_requests{{{SERVICE}}})",
                    "{{job}} {{process_pid}}",
                )
            ],
            "short",
        ),
    )

    grid.row("Server workers")
    grid.add(
        8,
        8,
        utilisation(
            "Busy workers ÷ configured",
            "Worker processes busy (each counted by its share of the last second or two "
            "with a request in flight, or running a task) over the workers the server is "
            "configured to run.",
            [
                prom(
                    f"sum by (job) (server_workers_busy{{{SERVICE}}}) / sum by (job) "
                    f"(server_workers_configured{{{SERVICE}}})",
                    "{{job}}",
                )
            ],
            "percentunit",
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
        utilisation(
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
        utilisation(
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
