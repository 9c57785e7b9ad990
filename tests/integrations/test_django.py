"""Django under a real gunicorn, scraped by a real Prometheus: routes are URL patterns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sightline

from ..helpers import free_port
from ..servers import counts_by_route, gunicorn, prometheus, status_of

django = pytest.importorskip("django")


def test_django_routes_counted_exactly(tmp_path: Path) -> None:
    """Patterns from include() are joined into the route; 404s share the unmatched value;
    a view's exception is a 500; PromQL counts each exactly."""
    pytest.importorskip("gunicorn")
    metrics_port = free_port()
    env = {
        "SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "DJANGO_SETTINGS_MODULE": "tests.apps.django_site.settings",
        "SIGHTLINE_TRACES": "false",
    }
    with (
        gunicorn(
            "tests.apps.django_site.wsgi:application", env, ["--workers", "1"], tmp_path
        ) as base,
        prometheus(tmp_path, {"app": f"127.0.0.1:{metrics_port}"}) as prom,
    ):
        for pk in (1, 2, 3):
            assert status_of(f"{base}/api/users/{pk}/") == 200
        assert status_of(f"{base}/api/boom/") == 500
        assert status_of(f"{base}/nope/at/all") == 404
        assert status_of(f"{base}/api/users/x/") == 404
        expected = {
            ("api/users/<int:pk>/", "200"): 3.0,
            ("api/boom/", "500"): 1.0,
            ("_unmatched", "404"): 2.0,
            ("health", "200"): 1.0,  # the fixture's readiness probe
        }
        got = counts_by_route(prom, expected)
        assert got == expected
        [capacity] = prom.query('http_server_worker_capacity{job="app"}')
        assert capacity["value"][1] == "1", "a sync worker serves one request at a time"


def test_uninstall_restores_django(registry: Any) -> None:
    """shutdown() puts Django's handler methods back exactly."""
    from django.core.handlers.base import BaseHandler
    from django.core.handlers.wsgi import WSGIHandler

    call, resolve = WSGIHandler.__call__, BaseHandler.resolve_request
    sightline.init(service="d", registry=registry, metrics_addr="off", traces=False, logs=False)
    assert WSGIHandler.__call__ is not call
    assert BaseHandler.resolve_request is not resolve
    sightline.shutdown()
    assert WSGIHandler.__call__ is call
    assert BaseHandler.resolve_request is resolve
