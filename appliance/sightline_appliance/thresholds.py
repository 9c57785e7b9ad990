"""Every number the alert and recording rules compare with or aim at, written once.

The rules in ``alerts/*.rules.yml`` stay hand-written YAML, which promtool checks and
unit-tests as it is; a test fails while a rule's number differs from the one here, or a
rule compares with a number this table does not hold. The dashboards
(``dashboards/source``) and ``sightline hints`` take their numbers from here, so a panel
turns red where its alert fires and the hints aim where the scaling rules do. A number
that no dashboard draws is here too, so that every threshold has one place to look it up.

Each entry names the rules that use it, in their expression or in what their annotations
query or quote (a rule's name, with ``{label="value"}`` where several rules share the
name), and the panels coloured at it (the dashboard's JSON file without ``.json``, then
the panel's title). Comparisons with 0 ("any at all") and equality tests (``up == 0``)
are no thresholds and are not here, nor are the service-level objectives, which their
recording rule (``slo:objective:ratio``) holds and the dashboards read from Prometheus.

    >>> SCALING_TARGET.value
    0.7
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Threshold:
    """One number, its unit, what it means, and the rules and panels that use it."""

    value: float
    unit: str  # ratio (a share, 0 to 1), s, requests/s, calls/s, runs/s, messages, x
    meaning: str
    rules: tuple[str, ...]
    panels: tuple[str, ...] = ()


_SLOTS_PANELS = (
    "overview: Request slots in use",
    "overview: Slots in use",
    "saturation: Slots in use",
    "saturation: Busy workers ÷ configured",
    "workers: Task slots in use",
    "workers: Busy ÷ capacity",
    "health: Fullest export queue",
    "health: Export queue fill",
)
_LATENCY_PANELS = (
    "overview: Latency p95",
    "overview: Latency p50 / p95 / p99",
    "overview: Routes",
    "overview: Calls between services",
)
_BURN_PANELS = ("capacity: Burn rate by window", "capacity: Burn rate now")
_AVAILABILITY_PAGE = 'SightlineAvailabilityBudgetBurn{severity="critical"}'
_AVAILABILITY_TICKET = 'SightlineAvailabilityBudgetBurn{severity="warning"}'
_LATENCY_PAGE = 'SightlineLatencyBudgetBurn{severity="critical"}'
_LATENCY_TICKET = 'SightlineLatencyBudgetBurn{severity="warning"}'


# -- HTTP (http.rules.yml) and service-level objectives (slo.rules.yml)

ERROR_RATIO = Threshold(
    0.05,
    "ratio",
    "Share of a route's requests answered 5xx over 5 minutes above which it alerts.",
    ("SightlineHighErrorRatio",),
    (
        "overview: Errors (5xx)",
        "overview: Error ratio (5xx)",
        "overview: Routes",
        "overview: Calls between services",
    ),
)
LATENCY_P95 = Threshold(
    1.0,
    "s",
    "A route's p95 latency over 5 minutes above which it alerts.",
    ("SightlineHighLatency",),
    _LATENCY_PANELS,
)
SLOW_REQUEST = Threshold(
    0.5,
    "s",
    "A request slower than this spends the latency objective's budget (a bucket boundary).",
    (
        'slo:sli_error:rate5m{slo="latency"}',
        _LATENCY_PAGE,
        _LATENCY_TICKET,
    ),
    _LATENCY_PANELS,
)
MINIMUM_TRAFFIC = Threshold(
    0.1,
    "requests/s",
    "Traffic below which the error, latency and error-budget alerts stay silent.",
    (
        "SightlineHighErrorRatio",
        "SightlineHighLatency",
        _AVAILABILITY_PAGE,
        _AVAILABILITY_TICKET,
        _LATENCY_PAGE,
        _LATENCY_TICKET,
    ),
)
BURN_PAGE_1H = Threshold(
    14.4,
    "x",
    "Burn rate over 1h and 5m that pages (2 % of a 30-day budget in an hour).",
    (_AVAILABILITY_PAGE, _LATENCY_PAGE),
    _BURN_PANELS,
)
BURN_PAGE_6H = Threshold(
    6,
    "x",
    "Burn rate over 6h and 30m that pages (5 % of a 30-day budget in 6 hours).",
    (_AVAILABILITY_PAGE, _LATENCY_PAGE),
    _BURN_PANELS,
)
BURN_TICKET_1D = Threshold(
    3,
    "x",
    "Burn rate over 1d and 2h that opens a ticket.",
    (_AVAILABILITY_TICKET, _LATENCY_TICKET),
    _BURN_PANELS,
)
BURN_TICKET_3D = Threshold(
    1,
    "x",
    "Burn rate over 3d and 6h that opens a ticket: the budget would not last 30 days.",
    (_AVAILABILITY_TICKET, _LATENCY_TICKET),
    _BURN_PANELS,
)


# -- saturation (saturation.rules.yml)

NEAR_CAPACITY = Threshold(
    0.8,
    "ratio",
    "Share of the request slots in use (5-minute mean) from which new requests are about "
    "to queue; every share of a capacity on the dashboards turns orange here.",
    ('SightlineInFlightNearCapacity{severity="warning"}',),
    (
        *_SLOTS_PANELS,
        "dependencies: Fullest connection pool",
        "dependencies: Pool in use",
    ),
)
SATURATED = Threshold(
    0.95,
    "ratio",
    "Share of the request slots in use, or of the time the server workers are busy "
    "(5-minute mean), from which requests queue.",
    (
        'SightlineInFlightNearCapacity{severity="critical"}',
        "SightlineAllWorkersBusy",
    ),
    _SLOTS_PANELS,
)
CPU_NEAR_LIMIT = Threshold(
    0.9,
    "ratio",
    "Share of its CPU limit a replica uses over 5 minutes above which it alerts.",
    ("SightlineCPUNearLimit",),
    ("saturation: CPU ÷ limit",),
)
CPU_THROTTLED = Threshold(
    0.25,
    "ratio",
    "Share of CFS periods a replica ran out of quota in above which it alerts.",
    ("SightlineCPUThrottlingHigh",),
    ("saturation: CPU throttled share",),
)
MEMORY_NEAR_LIMIT = Threshold(
    0.9,
    "ratio",
    "Share of its memory limit a replica's processes use above which it warns.",
    ('SightlineMemoryNearLimit{severity="warning"}',),
    ("saturation: Memory ÷ limit",),
)
MEMORY_FILLING = Threshold(
    0.8,
    "ratio",
    "Share of its memory limit above which growth that reaches the limit within the hour pages.",
    ('SightlineMemoryNearLimit{severity="critical"}',),
    ("saturation: Memory ÷ limit",),
)
FDS_FILLING = Threshold(
    0.5,
    "ratio",
    "Share of its file descriptors open above which a process that runs out within 4 hours warns.",
    ('SightlineFileDescriptorsRunningOut{severity="warning"}',),
    ("saturation: Open file descriptors ÷ limit",),
)
FDS_NEAR_LIMIT = Threshold(
    0.9,
    "ratio",
    "Share of its file descriptors open above which a process pages.",
    ('SightlineFileDescriptorsRunningOut{severity="critical"}',),
    ("saturation: Open file descriptors ÷ limit",),
)
FULL = Threshold(
    1,
    "ratio",
    "The limit itself: a forecast of memory or file descriptors above it runs out.",
    (
        'SightlineMemoryNearLimit{severity="critical"}',
        'SightlineFileDescriptorsRunningOut{severity="warning"}',
    ),
)
EVENT_LOOP_LAG = Threshold(
    0.1,
    "s",
    "p99 of how late the asyncio event loop runs due work above which it alerts.",
    ("SightlineEventLoopLagHigh",),
    ("saturation: Event-loop lag p99",),
)


# -- background workers (workers.rules.yml)

TASK_FAILURE_RATIO = Threshold(
    0.1,
    "ratio",
    "Share of a task's runs that raised over 5 minutes above which it alerts.",
    ("SightlineHighTaskFailureRatio",),
    ("workers: Failed", "workers: Failure ratio"),
)
TASK_MINIMUM_RUNS = Threshold(
    0.02,
    "runs/s",
    "Runs of a task below which its failure ratio does not alert.",
    ("SightlineHighTaskFailureRatio",),
)
BACKLOG = Threshold(
    100,
    "messages",
    "Depth above which a queue that keeps growing alerts.",
    ("SightlineTaskQueueBacklogGrowing",),
    ("workers: Backlog",),
)
OLDEST_MESSAGE = Threshold(
    600,
    "s",
    "Age of a queue's oldest message above which it alerts.",
    ("SightlineTaskQueueOldestMessageOld",),
    ("workers: Oldest message age",),
)
DRAIN_SLOW = Threshold(
    900,
    "s",
    "Time the workers need to work through a backlog at their pace above which it alerts.",
    ("SightlineTaskQueueDrainSlow",),
    ("workers: Drain time estimate",),
)


# -- autoscaling hints (scaling.rules.yml, and the task slots of workers.rules.yml)

SCALING_TARGET = Threshold(
    0.7,
    "ratio",
    "Share of request slots, task slots and CPU each scaling reason keeps in use.",
    (
        'sightline:required_replicas:count{reason="concurrency"}',
        'sightline:required_replicas:count{reason="cpu"}',
        'sightline:required_replicas:count{reason="queue"}',
    ),
    ("saturation: CPU ÷ limit",),
)
SCALING_TOLERANCE = Threshold(
    0.1,
    "ratio",
    "The HPA's tolerance: CPU within this share of the target keeps the replica count.",
    ('sightline:required_replicas:count{reason="cpu"}',),
)
DRAIN_TARGET = Threshold(
    300,
    "s",
    "Time within which the queue reason sizes the task slots to work through the backlog.",
    ("job:worker_task_slots_needed:estimate5m",),
    ("workers: Drain time estimate",),
)


# -- dependencies (dependencies.rules.yml)

POOL_SATURATED = Threshold(
    0.9,
    "ratio",
    "Share of a connection pool in use from which it alerts and more replicas are no answer.",
    ("SightlineDbPoolSaturated", "SightlineScaleUpRecommended"),
    ("dependencies: Fullest connection pool", "dependencies: Pool in use"),
)
POOL_WAIT = Threshold(
    0.1,
    "s",
    "p95 of the time to get a pool's connection above which the pool counts as saturated.",
    ("SightlineDbPoolSaturated",),
)
DEPENDENCY_ERROR_RATIO = Threshold(
    0.05,
    "ratio",
    "Share of calls to a database, cache or HTTP host that fail above which it alerts.",
    ("SightlineDependencyErrors",),
    (
        "dependencies: Failing database calls",
        "dependencies: Failing HTTP calls",
        "dependencies: Errors",
        "dependencies: Failed by host",
    ),
)
DEPENDENCY_MINIMUM_CALLS = Threshold(
    0.1,
    "calls/s",
    "Calls to a dependency below which their failures do not alert.",
    ("SightlineDependencyErrors",),
)


#: Every threshold by its name here.
THRESHOLDS: dict[str, Threshold] = {
    name: found for name, found in dict(globals()).items() if isinstance(found, Threshold)
}
