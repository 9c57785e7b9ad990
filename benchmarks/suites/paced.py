"""The full stack at equal delivered work: the ``paced`` suite (see ``overhead.py``).

The ``full`` suite serves requests back to back, as fast as the app goes: an export
thread that cannot follow drops spans, and what it drops is work it never does, so the
stack that drops more looks cheaper. Here requests come at a rate both stacks' export
threads follow (:data:`RATE` a second, in batches of :data:`BATCH` with the process idle
between them, as a server between bursts), every span must reach the sink, and the cost
is the CPU time of the whole process, every thread's, from the first timed request to
the end of the final flush: the request path, encoding and sending spans, and (in
``paced_sightline_loki``) shipping every log line to Loki. The sink runs in a process of
its own, so receiving costs the timed process nothing.
"""

from __future__ import annotations

import time
from typing import Any

from suites.common import (
    RemoteSink,
    Suite,
    check_exported,
    sightline_full,
    use_remote_sink,
)
from suites.web import (
    FULL_STACK_LIBRARIES,
    Setup,
    Variant,
    check_served,
    hello_app,
    setup_bare_log,
    setup_incumbent,
    setup_sightline_full,
    warmed,
)

#: Requests a second, and how many come at once: 1,000 a second is a busy web worker,
#: and well within what either stack's export thread sends.
RATE, BATCH = 1000.0, 50

#: What the Loki variant's sink received, for its worker to check.
_loki_sink: list[RemoteSink] = []


def setup_sightline_loki() -> Variant:
    """``sightline_full``, and every log line also pushed to Loki's push API."""
    sink = RemoteSink()
    _loki_sink.append(sink)
    recorded, handler, exported = sightline_full(sink=sink, loki=True)
    return Variant(hello_app(log_line=True), recorded, handler, exported)


VARIANTS: dict[str, Setup] = {
    "paced_bare": setup_bare_log,
    "paced_incumbent": setup_incumbent,
    "paced_incumbent_10pct": lambda: setup_incumbent(0.1),
    "paced_sightline": setup_sightline_full,
    "paced_sightline_10pct": lambda: setup_sightline_full(0.1),
    "paced_sightline_loki": setup_sightline_loki,
}


def worker(name: str, requests: int, warmup: int) -> dict[str, Any]:
    """Set up one variant, check it, warm up, serve ``requests`` requests at :data:`RATE`,
    flush, and check that every span (and log line) arrived; the result is CPU µs per
    request, all threads, the flush included."""
    use_remote_sink()
    variant = VARIANTS[name]()
    driver, content = warmed(name, variant, warmup)
    batches, interval, late = max(1, requests // BATCH), BATCH / RATE, 0
    cpu, wall = time.process_time(), time.perf_counter()
    due = wall
    for _ in range(batches):
        driver.run(BATCH)
        due += interval
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            late += 1
    served = batches * BATCH
    total = 1 + warmup + served
    # Read before the flush, which stops the agent; the reading's own CPU is not counted.
    reading = time.process_time()
    count = variant.recorded() if variant.recorded is not None else total
    cpu += time.process_time() - reading
    flushing = time.process_time()
    spans = variant.exported() if variant.exported is not None else None
    flush = time.process_time() - flushing
    cpu = time.process_time() - cpu
    wall = time.perf_counter() - wall
    check_served(name, driver, content, count, total)
    if late > batches // 10:
        raise SystemExit(f"{name}: {late} of {batches} batches late at {RATE:g} requests/s")
    result: dict[str, Any] = {
        "us_per_request": cpu / served * 1e6,
        "flush_ms": flush * 1e3,  # part of the above: what the final flush took
        "wall_s": wall,
    }
    if spans is not None:
        result["spans"] = spans
        result["spans_share"] = spans / total
        if variant.sampled >= 1.0 and spans != total:
            raise SystemExit(f"{name}: the sink received {spans} spans for {total} requests")
        check_exported(name, spans, total, variant.sampled)
    if _loki_sink:
        result["log_lines"] = lines = _loki_sink[0].lines()
        if lines < total:  # one per request, and the agent's own lines
            raise SystemExit(f"{name}: Loki received {lines} log lines for {total} requests")
    return result


SUITES: dict[str, Suite] = {
    "paced": Suite(
        title=(
            f"Full stack at equal delivered work: {RATE:g} requests/s, every span delivered, "
            "CPU time of all threads"
        ),
        variants=tuple(VARIANTS),
        baseline="paced_bare",
        references={
            "paced_incumbent": "paced_incumbent",
            "paced_incumbent_10pct": "paced_incumbent_10pct",
            "paced_sightline": "paced_incumbent",
            "paced_sightline_10pct": "paced_incumbent_10pct",
            "paced_sightline_loki": "paced_incumbent",
        },
        targets={"paced_sightline": 1 / 6, "paced_sightline_10pct": 1 / 10},
        rounds=8,
        requests=4000,
        warmup=500,
        libraries=FULL_STACK_LIBRARIES,
        unit="request",
        target_text={"paced_sightline": "1/6x (0.167x)", "paced_sightline_10pct": "1/10x"},
    ),
}
