"""Sightline / Capacity & SLO: how many replicas each service needs and why, how fast it
spends its error budgets, and which alerts are pending or firing.

The panels read the recording rules of ``alerts/scaling.rules.yml`` and
``alerts/slo.rules.yml``, so they show the very numbers the alerts and the autoscaling
hints act on.
"""

from __future__ import annotations

from sightline_appliance import thresholds as t

from .panels import (
    BLUE,
    BURN,
    DASHED,
    GREEN,
    ORANGE,
    PROMETHEUS,
    RED,
    SERVICE,
    YELLOW,
    Grid,
    Json,
    by_name,
    by_regex,
    colour_cells,
    dashboard,
    instant,
    panel,
    percent,
    prom,
    ref_id,
    service_variable,
    table,
    text,
    thresholds,
    timeseries,
)

REQUIRED = "sightline:required_replicas:count"
ACTUAL = "sightline:actual_replicas:count"
RECOMMENDED = "sightline:recommended_replicas:count"
SLO_WINDOWS = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")

TARGET = percent(t.SCALING_TARGET.value)
REASONS = f"""\
Each hint is a recording rule, `sightline:required_replicas:count{{reason=...}}`:

- **concurrency** (web): the mean number of requests in flight (Little's law, busy
  seconds per second) over request slots kept {TARGET} busy.
- **cpu**: the HPA's rule, replicas times CPU utilisation over {TARGET}, unchanged while
  within {percent(t.SCALING_TOLERANCE.value)} of the target.
- **queue** (workers): the task slots needed to keep up with arrivals and drain the
  backlog within {t.DRAIN_TARGET.value:g} s, over slots kept {TARGET} busy.

**Recommended** is the largest requirement of any reason, held for 5 minutes before it
may fall, as the Kubernetes HPA stabilises scale-down. None is below 1.
"""
# The alerts' burn-rate factors, as the description of the burn-rate graph names them.
FACTORS = (
    f"tickets {t.BURN_TICKET_3D.value:g} and {t.BURN_TICKET_1D.value:g}, "
    f"pages {t.BURN_PAGE_6H.value:g} and {t.BURN_PAGE_1H.value:g}"
)


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
    refs = [f"Value #{ref_id(i)}" for i in range(len(windows) + 1)]
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
            f"objective; the dashed lines are the alerts' factors ({FACTORS}).",
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
