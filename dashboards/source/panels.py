"""The building blocks every dashboard shares: data sources, label selectors, thresholds,
targets, panels, links, template variables, the grid layout and the dashboard frame.

Each function returns a piece of Grafana's classic dashboard model as plain dicts, with the
defaults the dashboards agree on written once, so a dashboard module says only what its
panels show. Panels are placed on the 24-column grid by :class:`Grid`, left to right, a new
line when one is full, so two panels never overlap. Where an alert watches the same
quantity as a panel, the thresholds below turn the panel red where the alert fires.
"""

from __future__ import annotations

import dataclasses
import json
import urllib.parse
from typing import Any

from sightline_appliance import thresholds as t
from sightline_appliance.queries import Query

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


def percent(ratio: float) -> str:
    """A ratio as the dashboards' texts write it: 0.7 is "70 %"."""
    return f"{round(ratio * 100, 6):g} %"


# Where an alert watches the same quantity, red is its threshold and orange, where it has
# one, the alert's warning or the scaling target; both come from the rules' threshold table
# (sightline_appliance/thresholds.py), which also names the panels coloured at each number. An
# orange written here as a number is the dashboards' own early warning: no rule uses it.
UTILISATION = warn_at(t.NEAR_CAPACITY.value, t.SATURATED.value)
POOL_USE = warn_at(t.NEAR_CAPACITY.value, t.POOL_SATURATED.value)
ERRORS = warn_at(0.01, t.ERROR_RATIO.value)
DEPENDENCY_ERRORS = warn_at(0.01, t.DEPENDENCY_ERROR_RATIO.value)
LATENCY = warn_at(t.SLOW_REQUEST.value, t.LATENCY_P95.value)
CPU = warn_at(t.SCALING_TARGET.value, t.CPU_NEAR_LIMIT.value)
THROTTLING = warn_at(0.1, t.CPU_THROTTLED.value)
MEMORY = warn_at(t.MEMORY_FILLING.value, t.MEMORY_NEAR_LIMIT.value)
FDS = warn_at(t.FDS_FILLING.value, t.FDS_NEAR_LIMIT.value)
LOOP_LAG = warn_at(0.05, t.EVENT_LOOP_LAG.value)
TASK_FAILURES = warn_at(0.05, t.TASK_FAILURE_RATIO.value)
OLDEST = warn_at(60, t.OLDEST_MESSAGE.value)
DRAIN = warn_at(t.DRAIN_TARGET.value, t.DRAIN_SLOW.value)
BACKLOG = warn_at(t.BACKLOG.value, 1000)
# The burn-rate factors of the SLO alerts: the tickets' yellow and orange, the pages' red.
BURN: Steps = (
    (None, GREEN),
    (t.BURN_TICKET_3D.value, YELLOW),
    (t.BURN_TICKET_1D.value, ORANGE),
    (t.BURN_PAGE_6H.value, RED),
    (t.BURN_PAGE_1H.value, "dark-red"),
)
# Thresholds of their own: no alert watches these quantities.
QUEUE_TIME = warn_at(0.05, 0.25)
WAIT = warn_at(5, 60)
GC_PAUSE = warn_at(0.05, 0.1)
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


def ref_id(index: int) -> str:
    """The refId of a panel's query by its position: A, B, C...; a table names the values
    of each query's rows "Value #" and its refId."""
    return chr(ord("A") + index)


def with_refs(targets: list[Json]) -> list[Json]:
    return [{**t, "refId": ref_id(i)} for i, t in enumerate(targets)]


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
    return {
        **panel("timeseries", title, description, datasource, targets=targets),
        "fieldConfig": {
            "defaults": {
                "color": {"mode": "palette-classic"},
                "custom": custom,
                "thresholds": thresholds(steps or NEUTRAL),
                "unit": unit,
            },
            "overrides": overrides or [],
        },
        "options": {
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
    }


def utilisation(
    title: str, description: str, targets: list[Json], unit: str, *, steps: Steps = UTILISATION
) -> Json:
    """A graph of a share of a limit in use (request slots, workers, CPU, memory, queue
    room), its axis at least up to the limit, dashed where the alerts warn and fire."""
    return timeseries(title, description, targets, unit, steps=steps, soft_max=1)


def stat(title: str, description: str, targets: list[Json], unit: str, steps: Steps) -> Json:
    """The latest value of each series, coloured by ``steps``, with a sparkline."""
    return {
        **panel("stat", title, description, PROMETHEUS, targets=targets),
        "fieldConfig": {
            "defaults": {
                "color": {"mode": "thresholds"},
                "decimals": 2,
                "thresholds": thresholds(steps),
                "unit": unit,
            },
            "overrides": [],
        },
        "options": {
            "colorMode": "background",
            "graphMode": "area",
            "justifyMode": "auto",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showPercentChange": False,
            "textMode": "auto",
            "wideLayout": True,
        },
    }


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
    return {
        **panel("table", title, description, datasource, targets=targets),
        "fieldConfig": {
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
        "options": {
            "cellHeight": "sm",
            "footer": {"countRows": False, "fields": "", "reducer": ["sum"], "show": False},
            "showHeader": True,
            "sortBy": [{"desc": descending, "displayName": dict(columns)[sort_by]}],
        },
        "transformations": [
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
    }


def colour_cells(steps: Steps, unit: str) -> dict[str, Any]:
    """Field properties of a table column coloured by ``steps``."""
    return {
        "unit": unit,
        "thresholds": thresholds(steps),
        "custom.cellOptions": {"type": "color-background", "mode": "basic"},
    }


def logs(title: str, description: str, expr: str) -> Json:
    return {
        **panel("logs", title, description, LOKI, targets=[logql(expr)]),
        "options": {
            "dedupStrategy": "none",
            "enableLogDetails": True,
            "prettifyLogMessage": False,
            "showCommonLabels": False,
            "showLabels": False,
            "showTime": True,
            "sortOrder": "Descending",
            "wrapLogMessage": True,
        },
    }


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
