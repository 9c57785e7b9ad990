"""The source of Sightline's Grafana dashboards: one module per dashboard, each built from
the blocks :mod:`.panels` shares, so a dashboard's module holds only what it shows.

``DASHBOARDS`` names the JSON file of each dashboard and the function returning its model;
``build.py`` beside this package renders them. A new dashboard is a module here and a line
in ``DASHBOARDS``.
"""

from __future__ import annotations

from collections.abc import Callable

from .capacity import capacity
from .dependencies import dependencies
from .health import health
from .overview import overview
from .panels import Json
from .saturation import saturation
from .workers import workers

DASHBOARDS: dict[str, Callable[[], Json]] = {
    "overview.json": overview,
    "saturation.json": saturation,
    "workers.json": workers,
    "capacity.json": capacity,
    "health.json": health,
    "dependencies.json": dependencies,
}
