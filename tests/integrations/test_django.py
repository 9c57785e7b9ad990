"""Django under real gunicorn (WSGI) and uvicorn (ASGI), scraped by a real Prometheus."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sightline

from ..helpers import free_port
from ..receivers import Backend
from ..servers import counts_by_route, gunicorn, prometheus, status_of, uvicorn

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


def test_django_under_asgi_counted_exactly(tmp_path: Path, backend: Backend) -> None:
    """Django's ASGI handler under uvicorn: the same URL patterns, 404s and 500s, counted
    exactly in PromQL; the view's exception is on its span."""
    pytest.importorskip("uvicorn")
    metrics_port = free_port()
    env = {
        "SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "DJANGO_SETTINGS_MODULE": "tests.apps.django_site.settings",
        "OTEL_EXPORTER_OTLP_ENDPOINT": backend.url,
    }
    with (
        uvicorn("tests.apps.django_site.asgi:application", env, [], tmp_path) as base,
        prometheus(tmp_path, {"app": f"127.0.0.1:{metrics_port}"}) as prom,
    ):
        for pk in (1, 2, 3, 4):
            assert status_of(f"{base}/api/users/{pk}/") == 200
        assert status_of(f"{base}/api/boom/") == 500
        assert status_of(f"{base}/nope") == 404
        expected = {
            ("api/users/<int:pk>/", "200"): 4.0,
            ("api/boom/", "500"): 1.0,
            ("_unmatched", "404"): 1.0,
            ("health", "200"): 1.0,  # the fixture's readiness probe
        }
        assert counts_by_route(prom, expected) == expected
    assert backend.wait_for(lambda: any(s.name == "GET api/boom/" for _, s in backend.spans()))
    [boom] = [span for _, span in backend.spans() if span.name == "GET api/boom/"]
    assert boom.status.code == boom.status.STATUS_CODE_ERROR
    assert [event.name for event in boom.events] == ["exception"]


def test_uninstall_restores_django(registry: Any) -> None:
    """shutdown() puts Django's handler methods back exactly."""
    from django.core.handlers.asgi import ASGIHandler
    from django.core.handlers.base import BaseHandler
    from django.core.handlers.wsgi import WSGIHandler

    call, acall, resolve = WSGIHandler.__call__, ASGIHandler.__call__, BaseHandler.resolve_request
    sightline.init(service="d", registry=registry, metrics_addr="off", traces=False, logs=False)
    assert WSGIHandler.__call__ is not call
    assert ASGIHandler.__call__ is not acall
    assert BaseHandler.resolve_request is not resolve
    sightline.shutdown()
    assert WSGIHandler.__call__ is call
    assert ASGIHandler.__call__ is acall
    assert BaseHandler.resolve_request is resolve
