"""Every app a server loads is measured: Litestar, Quart, FastAPI's own routes, apps with
a router of their own, under real uvicorn, hypercorn and gunicorn started by
`sightline run`, compared with the same servers without Sightline; and the generic
middleware's contract in process (once per request, framework templates, one warning)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sightline
from prometheus_client import CollectorRegistry

from .helpers import call_wsgi, count, free_port, scrape, series
from .servers import ROOT, launcher, serve

WARNING = "exposes no route templates"


def command(server: str, app: str, port: int, args: list[str]) -> list[str]:
    bind = ["--host", "127.0.0.1", "--port", str(port), "--no-access-log"]
    if server == "uvicorn":
        return [sys.executable, "-m", "uvicorn", *bind, *args, app]
    if server == "hypercorn":
        return [sys.executable, "-m", "hypercorn", "-b", f"127.0.0.1:{port}", *args, app]
    if server == "waitress":
        bind = ["--host=127.0.0.1", f"--port={port}"]
        return [sys.executable, "-m", "waitress", *bind, *args, app]
    bind = ["--chdir", str(ROOT), "-b", f"127.0.0.1:{port}"]
    return [sys.executable, "-m", "gunicorn", *bind, *args, app]


@contextlib.contextmanager
def served(
    server: str, app: str, tmp_path: Path, agent: bool, args: list[str] | None = None
) -> Iterator[tuple[str, str, Path]]:
    """``app`` in a real ``server`` (started by `sightline run` if ``agent``); yields its
    URL, its metrics URL and its log file."""
    pytest.importorskip(server)
    port, metrics_port = free_port(), free_port()
    env = {
        "SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "SIGHTLINE_TRACES": "false",
        "TMPDIR": str(tmp_path),
    }
    prefix = [*launcher(), "run", "--"] if agent else []
    log = tmp_path / f"{server}-{'agent' if agent else 'plain'}.log"
    with serve([*prefix, *command(server, app, port, args or [])], port, env, log) as url:
        yield url, f"http://127.0.0.1:{metrics_port}/metrics", log


def fetch(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()


def by_route(metrics_url: str) -> dict[tuple[str, str], float]:
    """Requests counted per (route, status) on a /metrics page."""
    counts: dict[tuple[str, str], float] = {}
    for (name, labels), value in scrape(metrics_url).items():
        if name == "http_server_request_duration_seconds_count":
            found = dict(labels)
            key = (found["http_route"], found["http_response_status_code"])
            counts[key] = counts.get(key, 0.0) + value
    return counts


def compare(
    server: str,
    app: str,
    tmp_path: Path,
    paths: list[str],
    expected: dict[tuple[str, str], float],
    args: list[str] | None = None,
) -> tuple[dict[tuple[str, str], float], str]:
    """Serve ``app`` without and with Sightline: the same responses both ways, and the
    counts Sightline serves (the readiness probe's ``/health`` route left out, since a
    probe that timed out may be retried); returns the counts and the server's log."""
    with served(server, app, tmp_path, agent=False, args=args) as (url, _, _):
        plain = [fetch(url + path) for path in paths]
    with served(server, app, tmp_path, agent=True, args=args) as (url, metrics, log):
        measured = [fetch(url + path) for path in paths]
        deadline = time.monotonic() + 15
        while True:  # merged snapshots arrive within a second
            counts = by_route(metrics)
            got = {key: n for key, n in counts.items() if key[0] != "/health"}
            if got == expected or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    assert measured == plain
    assert got == expected
    return counts, log.read_text()


def warnings_in(log: str) -> list[str]:
    return [line for line in log.splitlines() if WARNING in line]


def test_litestar_under_uvicorn_has_its_templates(tmp_path: Path) -> None:
    """A Litestar app under `sightline run -- uvicorn` is counted per Litestar template:
    router prefixes joined, mounts as <mount>/{path:path}, 404s unmatched, errors 500."""
    pytest.importorskip("litestar")
    paths = ["/users/1", "/users/2", "/api/v1/items/a", "/api/v2/items/b", "/files/x/y"]
    paths += ["/boom", "/nope", "/users/abc"]
    expected = {
        ("/users/{uid}", "200"): 2.0,
        ("/api/{version}/items/{name}", "200"): 2.0,
        ("/files/{path:path}", "200"): 1.0,
        ("/boom", "500"): 1.0,
        ("_unmatched", "404"): 2.0,
    }
    counts, log = compare("uvicorn", "tests.apps.litestar_app:app", tmp_path, paths, expected)
    assert counts[("/health", "200")] >= 1
    assert warnings_in(log) == []


def test_quart_under_hypercorn_has_its_templates(tmp_path: Path) -> None:
    """A Quart app under `sightline run -- hypercorn` is counted per Quart rule, blueprint
    prefixes joined, with no warning."""
    pytest.importorskip("quart")
    paths = ["/users/1", "/users/2", "/api/items/a", "/boom", "/nope"]
    expected = {
        ("/users/<int:uid>", "200"): 2.0,
        ("/api/items/<name>", "200"): 1.0,
        ("/boom", "500"): 1.0,
        ("_unmatched", "404"): 1.0,
    }
    counts, log = compare("hypercorn", "tests.apps.quart_app:app", tmp_path, paths, expected)
    assert counts[("/health", "200")] >= 1
    assert warnings_in(log) == []


def test_hypercorn_workers_are_merged(tmp_path: Path) -> None:
    """`sightline run -- hypercorn --workers 2`: the agent runs in both workers, not in
    hypercorn's own process, and one endpoint serves their merged counts."""
    pytest.importorskip("quart")
    args = ["--workers", "2"]
    with served("hypercorn", "tests.apps.quart_app:app", tmp_path, True, args) as served_at:
        url, metrics, _ = served_at
        assert all(fetch(f"{url}/users/{uid}")[0] == 200 for uid in range(12))
        deadline = time.monotonic() + 15
        while True:  # each worker's snapshot arrives within a second of its start
            found = scrape(metrics)
            pids = {
                dict(labels)["process_pid"] for name, labels in found if name == "process_max_fds"
            }
            counts = by_route(metrics).get(("/users/<int:uid>", "200"))
            if (counts == 12 and len(pids) == 2) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    assert counts == 12
    assert len(pids) == 2
    assert found[("server_workers_configured", ())] == 2


def test_fastapi_own_routes_add_route_and_mounts(tmp_path: Path) -> None:
    """Under `sightline run -- uvicorn`, FastAPI's /docs, /openapi.json, /redoc, an
    add_route() route, an included router's prefix and mounted apps have templates."""
    pytest.importorskip("fastapi")
    paths = ["/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/plain/a"]
    paths += ["/plain/b", "/api/v1/items/x", "/sub/acme/things/1", "/sub/globex/things/2"]
    paths += ["/sub/acme/docs", "/legacy/pages/p1", "/nope"]
    expected = {
        ("/docs", "200"): 1.0,
        ("/docs/oauth2-redirect", "200"): 1.0,
        ("/redoc", "200"): 1.0,
        ("/openapi.json", "200"): 1.0,
        ("/plain/{name}", "200"): 2.0,
        ("/api/v1/items/{item_id}", "200"): 1.0,
        ("/sub/{tenant}/things/{tid}", "200"): 2.0,
        ("/sub/{tenant}/docs", "200"): 1.0,
        ("/legacy/pages/{page}", "200"): 1.0,
        ("_unmatched", "404"): 1.0,
    }
    _, log = compare("uvicorn", "tests.apps.fastapi_full:app", tmp_path, paths, expected)
    assert warnings_in(log) == []


@pytest.mark.parametrize(
    ("server", "app", "args"),
    [
        ("uvicorn", "tests.apps.router_app:app", []),
        ("uvicorn", "tests.apps.router_app:wsgi_app", ["--interface", "wsgi"]),
        ("hypercorn", "tests.apps.router_app:app", []),
        ("gunicorn", "tests.apps.router_app:wsgi_app", []),
        ("gunicorn", "tests.apps.router_app:app", ["-k", "asgi"]),
        ("gunicorn", "tests.apps.router_app:app", ["-k", "uvicorn.workers.UvicornWorker"]),
        ("waitress", "tests.apps.router_app:wsgi_app", []),
    ],
    ids=[
        "uvicorn", "uvicorn-wsgi", "hypercorn", "gunicorn", "gunicorn-asgi", "gunicorn-uvicorn",
        "waitress",
    ],
)  # fmt: skip
def test_app_with_its_own_router_is_unmatched_with_one_warning(
    tmp_path: Path, server: str, app: str, args: list[str]
) -> None:
    """An app with a router of its own, served by `sightline run`, has every request
    counted as _unmatched, and one warning naming route_of and the docs page."""
    if "asgi" in args:
        pytest.importorskip("gunicorn.workers.gasgi")  # gunicorn's own ASGI worker (24+)
    if any(arg.startswith("uvicorn.") for arg in args):
        pytest.importorskip("uvicorn.workers")
    paths = ["/items/1", "/items/2", "/items/3", "/nope", "/nope/at/all"]
    expected = {("_unmatched", "200"): 3.0, ("_unmatched", "404"): 2.0}
    with served(server, app, tmp_path, agent=False, args=args) as (url, _, _):
        plain = [fetch(url + path) for path in paths]
    with served(server, app, tmp_path, agent=True, args=args) as (url, metrics, log):
        measured = [fetch(url + path) for path in paths]
        deadline = time.monotonic() + 15
        while True:
            counts = by_route(metrics)
            probes = counts.pop(("_unmatched", "204"), 0.0)  # the readiness probe
            if counts == expected or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    assert measured == plain
    assert counts == expected
    assert probes >= 1
    [warning] = warnings_in(log.read_text())
    assert "sightline.instrument_app(app, route_of=...)" in warning
    assert "docs/frameworks.md#naming-routes-route_of" in warning
    assert (ROOT / "docs" / "frameworks.md").read_text().count("## Naming routes: `route_of`") == 1


def test_route_of_names_the_routes_under_the_launcher(tmp_path: Path) -> None:
    """An app wrapped by hand with a route_of is not wrapped again by the server's hook:
    its templates are used, counted once, with no warning."""
    paths = ["/items/1", "/items/2", "/nope"]
    expected = {("/items/{id}", "200"): 2.0, ("_unmatched", "404"): 1.0}
    counts, log = compare("uvicorn", "tests.apps.router_app:named", tmp_path, paths, expected)
    assert counts[("/health", "204")] >= 1
    assert warnings_in(log) == []


# In process: the generic middleware's contract.


def asgi_get(app: Any, path: str) -> tuple[int, bytes]:
    """One GET through an ASGI app, as a server sends it."""

    async def call() -> tuple[int, bytes]:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"test")],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 80),
        }
        sent: list[dict[str, Any]] = []
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        with contextlib.suppress(RuntimeError):  # a view's error, re-raised after its 500
            await app(scope, receive, send)
        status = next(m["status"] for m in sent if m["type"] == "http.response.start")
        return status, b"".join(m.get("body", b"") for m in sent if "body" in m)

    return asyncio.run(call())


@pytest.fixture
def metrics_only(registry: CollectorRegistry) -> CollectorRegistry:
    sightline.init(service="t", registry=registry, metrics_addr="off", traces=False, logs=False)
    return registry


def total(registry: CollectorRegistry) -> float:
    return sum(
        registry.get_sample_value("http_server_request_duration_seconds_count", labels) or 0.0
        for labels in series(registry, "http_server_request_duration_seconds")
    )


def test_wrapping_a_framework_app_keeps_its_templates(metrics_only: CollectorRegistry) -> None:
    """instrument_app around FastAPI and Flask apps (twice, even) counts each request
    once, under the framework's template, 404s unmatched, with no warning."""
    pytest.importorskip("flask")
    pytest.importorskip("fastapi")
    from flask import Flask

    from .apps.fastapi_full import app as fastapi_app

    flask_app = Flask(__name__)
    flask_app.route("/users/<int:uid>")(lambda uid: "ok")
    asgi = sightline.instrument_app(sightline.instrument_app(fastapi_app))
    wsgi = sightline.instrument_app(sightline.instrument_app(flask_app))
    assert asgi_get(asgi, "/plain/a")[0] == 200
    assert asgi_get(asgi, "/api/v1/items/b")[0] == 200
    assert asgi_get(asgi, "/nope")[0] == 404
    assert call_wsgi(wsgi, "/users/1")[0] == "200 OK"
    assert call_wsgi(wsgi, "/nope")[0].startswith("404")
    assert count(metrics_only, "/plain/{name}", "200") == 1
    assert count(metrics_only, "/api/v1/items/{item_id}", "200") == 1
    assert count(metrics_only, "/users/<int:uid>", "200") == 1
    assert count(metrics_only, "_unmatched", "404") == 2
    assert total(metrics_only) == 5


def test_one_warning_per_app(
    metrics_only: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """Each app without templates warns once, however many requests; an app with a
    route_of, and a framework app answering 404s, never warn."""
    from .apps.router_app import app, route_of, wsgi_app

    caplog.set_level(logging.WARNING, logger="sightline")
    raw = sightline.instrument_app(app)
    raw_wsgi = sightline.instrument_app(wsgi_app)
    named = sightline.instrument_app(app, route_of=route_of)
    for _ in range(3):
        assert asgi_get(raw, "/items/1")[0] == 200
        assert call_wsgi(raw_wsgi, "/nope")[0].startswith("404")
        assert asgi_get(named, "/nope")[0] == 404
    assert asgi_get(named, "/items/9") == (200, b"item 9")
    framework_404s = 0
    if importlib.util.find_spec("fastapi") is not None:
        from .apps.fastapi_full import app as fastapi_app

        assert asgi_get(sightline.instrument_app(fastapi_app), "/nope")[0] == 404
        framework_404s = 1
    warnings = [r.getMessage() for r in caplog.records if WARNING in r.getMessage()]
    assert warnings == [
        f"sightline: tests.apps.router_app.app {WARNING} Sightline can read, so its requests are"
        ' counted as http_route="_unmatched"; name them with sightline.instrument_app(app,'
        " route_of=...), see docs/frameworks.md#naming-routes-route_of",
        f"sightline: tests.apps.router_app.wsgi_app {WARNING} Sightline can read, so its"
        ' requests are counted as http_route="_unmatched"; name them with'
        " sightline.instrument_app(app, route_of=...), see"
        " docs/frameworks.md#naming-routes-route_of",
    ]
    assert count(metrics_only, "_unmatched", "200") == 3
    assert count(metrics_only, "_unmatched", "404") == 3 + 3 + framework_404s
    assert count(metrics_only, "/items/{id}", "200") == 1


def test_fastapi_templates_across_nested_mounts(metrics_only: CollectorRegistry) -> None:
    """FastAPI and Starlette apps mounted in each other, and a mount inside an included
    router with a prefix, give the full template; a 404 inside a mount is unmatched."""
    pytest.importorskip("fastapi")
    from fastapi import APIRouter, FastAPI
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    async def page(request: Any) -> PlainTextResponse:
        return PlainTextResponse("page")

    inner = FastAPI()
    inner.get("/leaf/{leaf}")(lambda leaf: leaf)
    inner.mount("/old/{era}", Starlette(routes=[Route("/p/{n}", page)]))
    outer = Starlette(routes=[Mount("/o/{org}", app=inner)])
    top = FastAPI()
    top.mount("/t", outer)
    router = APIRouter()
    router.mount("/static", Starlette(routes=[Route("/f/{name}", page)]))
    top.include_router(router, prefix="/r")
    paths = ["/t/o/acme/leaf/1", "/t/o/acme/old/x/p/2", "/t/o/acme/missing", "/r/static/f/a"]
    assert [asgi_get(top, path)[0] for path in paths] == [200, 200, 404, 200]
    assert count(metrics_only, "/t/o/{org}/leaf/{leaf}", "200") == 1
    assert count(metrics_only, "/t/o/{org}/old/{era}/p/{n}", "200") == 1
    assert count(metrics_only, "_unmatched", "404") == 1
    assert count(metrics_only, "/r/static/f/{name}", "200") == 1
    assert total(metrics_only) == 4


def test_uvicorn_wsgi_adapter_measures_inside_it(metrics_only: CollectorRegistry) -> None:
    """What uvicorn loads with --interface wsgi is measured inside uvicorn's adapter: a
    Flask app counted once under its rule, a plain WSGI app under _unmatched."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("flask")
    from flask import Flask
    from sightline.integrations import _served
    from uvicorn.config import Config

    from .apps.router_app import wsgi_app

    flask_app = Flask(__name__)
    flask_app.route("/users/<int:uid>")(lambda uid: "ok")
    for app, path in ((flask_app, "/users/1"), (wsgi_app, "/items/1")):
        config = Config(app, interface="wsgi", log_config=None)
        with pytest.warns(DeprecationWarning, match="WSGI"):  # uvicorn 0.3x and later
            config.load()
        _served.uvicorn_loaded(config)
        assert asgi_get(config.loaded_app, path)[0] == 200
    assert count(metrics_only, "/users/<int:uid>", "200") == 1
    assert count(metrics_only, "_unmatched", "200") == 1
    assert total(metrics_only) == 2


def test_shutdown_restores_litestar_quart_and_hypercorn(registry: CollectorRegistry) -> None:
    """shutdown() puts back every method the Litestar, Quart and hypercorn integrations
    patched."""
    litestar = pytest.importorskip("litestar")
    pytest.importorskip("quart")
    pytest.importorskip("hypercorn")
    from hypercorn.app_wrappers import ASGIWrapper, WSGIWrapper
    from quart import Quart
    from quart.ctx import RequestContext

    def methods() -> list[Any]:
        return [
            litestar.Litestar.__call__,
            Quart.__call__,
            RequestContext.match_request,
            ASGIWrapper.__init__,
            WSGIWrapper.__init__,
        ]

    before = methods()
    sightline.init(service="t", registry=registry, metrics_addr="off", traces=False, logs=False)
    during = methods()
    assert all(a is not b for a, b in zip(before, during, strict=True))
    sightline.shutdown()
    assert methods() == before


def test_hypercorn_wrapper_measures_the_app(metrics_only: CollectorRegistry) -> None:
    """The app hypercorn wraps (hypercorn.asyncio.serve or its workers) is measured: a raw
    ASGI app under _unmatched, a Litestar app under its templates, each request once."""
    pytest.importorskip("hypercorn")
    pytest.importorskip("litestar")
    from hypercorn.app_wrappers import ASGIWrapper

    from .apps.litestar_app import app as litestar_app
    from .apps.router_app import app

    def through(wrapper: ASGIWrapper) -> Any:
        return lambda scope, receive, send: wrapper(scope, receive, send, None, None)

    assert asgi_get(through(ASGIWrapper(app)), "/items/1")[0] == 200
    assert asgi_get(through(ASGIWrapper(litestar_app)), "/users/3")[0] == 200
    assert count(metrics_only, "_unmatched", "200") == 1
    assert count(metrics_only, "/users/{uid}", "200") == 1
    assert total(metrics_only) == 2


def test_access_log_line_of_a_claimed_request(
    registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """A request the generic middleware records and a framework names is logged once,
    under the framework's template."""
    pytest.importorskip("litestar")
    from .apps.litestar_app import app

    sightline.init(
        service="t",
        registry=registry,
        metrics_addr="off",
        traces=False,
        logs=False,
        access_log=True,
    )
    caplog.set_level(logging.INFO, logger="sightline.access")
    assert asgi_get(sightline.instrument_app(app), "/api/v3/items/z")[0] == 200
    routes = [r.__dict__["http_route"] for r in caplog.records if r.name == "sightline.access"]
    assert routes == ["/api/{version}/items/{name}"]


def test_waitress_counts_a_flask_app_once_and_its_threads_are_its_capacity(
    tmp_path: Path,
) -> None:
    """A Flask app under waitress, started by `sightline run`, is counted once per
    request by its route templates (not wrapped a second time by the server's hook), with
    the same responses as without Sightline, and waitress's --threads is the capacity."""
    paths = ["/users/1", "/users/2", "/nope"]
    expected = {("/users/<int:uid>", "200"): 2.0, ("_unmatched", "404"): 1.0}
    args = ["--threads=3"]
    _, log = compare("waitress", "tests.apps.plain_app:app", tmp_path, paths, expected, args)
    assert warnings_in(log) == []
    with served("waitress", "tests.apps.plain_app:app", tmp_path, True, args) as (url, metrics, _):
        fetch(url + "/users/3")
        assert scrape(metrics).get(("http_server_worker_capacity", ())) == 3
