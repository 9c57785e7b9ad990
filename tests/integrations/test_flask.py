"""Flask: every app instrumented, route templates as labels, and a clean uninstall."""

from __future__ import annotations

from typing import Any

import pytest
import sightline
from prometheus_client import CollectorRegistry

from ..helpers import call_wsgi, count, series

flask = pytest.importorskip("flask")


def make_app() -> Any:
    app = flask.Flask("shop")

    @app.route("/users/<int:uid>")
    def user(uid: int) -> str:
        return f"user {uid}"

    @app.route("/boom")
    def boom() -> str:
        raise RuntimeError("view failed")

    @app.route("/gone/<name>")
    def gone(name: str) -> Any:
        flask.abort(410)

    @app.route("/stream")
    def stream() -> Any:
        return flask.Response(iter([b"a", b"b"]))

    bp = flask.Blueprint("admin", "admin", url_prefix="/admin")

    @bp.route("/items/<path:key>", methods=["GET", "DELETE"])
    def item(key: str) -> str:
        return key

    app.register_blueprint(bp)
    return app


def test_app_created_before_init_is_instrumented(registry: CollectorRegistry) -> None:
    """An app built before init() is recorded too (the class is patched, not the name)."""
    app = make_app()
    sightline.init(service="shop", registry=registry, metrics_addr="off")
    call_wsgi(app, "/users/1")
    assert count(registry, "/users/<int:uid>", "200") == 1


def test_routes_are_templates_never_raw_paths(agent: CollectorRegistry) -> None:
    """Requests are labelled with the route template; unmatched paths share one value."""
    app = make_app()
    for uid in range(5):
        call_wsgi(app, f"/users/{uid}")
    call_wsgi(app, "/admin/items/a/b/c", method="DELETE")
    call_wsgi(app, "/no/such/page")
    call_wsgi(app, "/gone/x")
    call_wsgi(app, "/stream")
    assert count(agent, "/users/<int:uid>", "200") == 5
    assert count(agent, "/admin/items/<path:key>", "200", method="DELETE") == 1
    assert count(agent, "_unmatched", "404") == 1
    assert count(agent, "/gone/<name>", "410") == 1
    assert count(agent, "/stream", "200") == 1
    routes = {s["http_route"] for s in series(agent, "http_server_request_duration_seconds")}
    assert routes == {
        "/users/<int:uid>",
        "/admin/items/<path:key>",
        "_unmatched",
        "/gone/<name>",
        "/stream",
    }


def test_view_exception_is_a_500(agent: CollectorRegistry) -> None:
    """A view that raises is recorded as 500 under its route, as Flask answers it."""
    app = make_app()
    status, _ = call_wsgi(app, "/boom")
    assert status.startswith("500")
    assert count(agent, "/boom", "500") == 1


def test_propagated_exception_passes_through_untouched(agent: CollectorRegistry) -> None:
    """With PROPAGATE_EXCEPTIONS the view's own exception reaches the caller, recorded as 500."""
    app = make_app()
    app.config["PROPAGATE_EXCEPTIONS"] = True
    with pytest.raises(RuntimeError, match="view failed"):
        call_wsgi(app, "/boom")
    assert count(agent, "/boom", "500") == 1
    assert agent.get_sample_value("http_server_active_requests") == 0


def test_wrapped_wsgi_app_records_once(agent: CollectorRegistry) -> None:
    """Middleware around app.wsgi_app plus a manual instrument_app still records once."""
    app = make_app()
    inner = app.wsgi_app
    app.wsgi_app = lambda environ, start_response: inner(environ, start_response)  # type: ignore[method-assign]
    call_wsgi(sightline.instrument_app(app), "/users/3")
    assert count(agent, "/users/<int:uid>", "200") == 1


def test_shutdown_restores_flask_exactly(registry: CollectorRegistry) -> None:
    """After shutdown() Flask's methods are the originals and requests leave no trace."""
    from flask.ctx import RequestContext

    original_call = flask.Flask.__call__
    original_match = RequestContext.match_request
    sightline.init(service="shop", registry=registry, metrics_addr="off")
    assert flask.Flask.__call__ is not original_call
    sightline.shutdown()
    assert flask.Flask.__call__ is original_call
    assert RequestContext.match_request is original_match

    app = make_app()
    seen: dict[str, Any] = {}

    @app.route("/env")
    def env() -> str:
        seen.update(flask.request.environ)
        return "ok"

    assert call_wsgi(app, "/env") == ("200 OK", b"ok")
    assert not [key for key in seen if key.startswith("sightline")]
    assert registry.get_sample_value("http_server_active_requests") is None


def test_init_twice_is_harmless(registry: CollectorRegistry) -> None:
    """A second init() with the same settings patches nothing twice and records once."""
    sightline.init(service="shop", registry=registry, metrics_addr="off")
    patched = flask.Flask.__call__
    sightline.init(service="shop", registry=registry, metrics_addr="off")
    assert flask.Flask.__call__ is patched
    call_wsgi(make_app(), "/users/1")
    assert count(registry, "/users/<int:uid>", "200") == 1


def test_init_again_with_new_settings_restarts_cleanly() -> None:
    """init() with different settings replaces the running agent without duplicate metrics."""
    first, second = CollectorRegistry(), CollectorRegistry()
    sightline.init(service="a", registry=first, metrics_addr="off")
    sightline.init(service="b", registry=second, metrics_addr="off")
    call_wsgi(make_app(), "/users/1")
    assert count(first, "/users/<int:uid>", "200") == 0
    assert first.get_sample_value("http_server_active_requests") is None
    assert count(second, "/users/<int:uid>", "200") == 1
    names = [
        sample.labels["service_name"]
        for family in second.collect()
        if family.name == "target"
        for sample in family.samples
    ]
    assert names == ["b"]
