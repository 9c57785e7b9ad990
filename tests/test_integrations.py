"""The integrations registry: isolation, explicit requests, and life without optional libraries."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
import types
from typing import Any

import pytest
import sightline
from prometheus_client import CollectorRegistry
from sightline import ConfigError, _settings, _state, integrations


class Broken(integrations.Integration):
    name = "broken"

    def install(self, agent: Any) -> None:
        raise RuntimeError("cannot hook")

    def uninstall(self) -> None:
        pass


@pytest.mark.internal_errors_expected
def test_failing_integration_is_skipped_others_install(
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    internal_errors: list[BaseException],
) -> None:
    """An integration whose install() raises is logged and skipped; the others still install."""
    flask = pytest.importorskip("flask")
    module = types.ModuleType("sightline.integrations.broken")
    module.INTEGRATION = Broken  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sightline.integrations.broken", module)
    monkeypatch.setattr(_settings, "INTEGRATION_NAMES", ("broken", "flask"))
    monkeypatch.setattr(integrations, "INTEGRATION_NAMES", ("broken", "flask"))
    original = flask.Flask.__call__
    sightline.init(service="t", registry=registry, metrics_addr="off")
    assert _state.current is not None
    assert [i.name for i in _state.current.integrations] == ["flask"]
    assert flask.Flask.__call__ is not original
    assert [str(e) for e in internal_errors] == ["cannot hook"]
    assert (
        registry.get_sample_value(
            "sightline_internal_errors_total", {"component": "integrations.broken.install"}
        )
        == 1
    )


def test_disabled_integration_is_not_installed(registry: CollectorRegistry) -> None:
    """SIGHTLINE_DISABLED_INTEGRATIONS keeps an available integration out."""
    flask = pytest.importorskip("flask")
    original = flask.Flask.__call__
    sightline.init(
        service="t", registry=registry, metrics_addr="off", disabled_integrations="flask"
    )
    assert flask.Flask.__call__ is original


def run_without_flask(
    code: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter in which ``import flask`` fails."""
    prelude = "import sys\nsys.modules['flask'] = None  # makes `import flask` raise ImportError\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def test_works_without_flask() -> None:
    """With Flask missing, init() works and the plain WSGI wrapper still records requests."""
    result = run_without_flask("""
        import sightline
        from prometheus_client import CollectorRegistry
        registry = CollectorRegistry()
        sightline.init(registry=registry, metrics_addr="off")
        def app(environ, start_response):
            start_response("204 No Content", [])
            return []
        wrapped = sightline.instrument_app(app)
        body = wrapped({"REQUEST_METHOD": "GET", "PATH_INFO": "/x"}, lambda *a: None)
        list(body)
        body.close()
        from sightline import _state
        print("integrations:", [i.name for i in _state.current.integrations])
        print("count:", registry.get_sample_value("http_server_request_duration_seconds_count",
              {"http_request_method": "GET", "http_route": "_unmatched",
               "http_response_status_code": "204"}))
    """)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
    assert "flask" not in lines["integrations"]
    assert float(lines["count"]) == 1


def test_requested_missing_integration_fails_loudly() -> None:
    """Naming an integration whose library is missing makes init() raise a ConfigError."""
    result = run_without_flask("""
        import sightline
        try:
            sightline.init(integrations="flask", metrics_addr="off")
        except sightline.ConfigError as exc:
            print("ConfigError:", exc)
    """)
    assert result.returncode == 0, result.stderr
    assert "ConfigError: invalid SIGHTLINE_INTEGRATIONS: flask is not installed" in result.stdout


def test_requested_integration_installs(registry: CollectorRegistry) -> None:
    """Naming only flask installs flask and nothing else."""
    pytest.importorskip("flask")
    sightline.init(service="t", registry=registry, metrics_addr="off", integrations=["flask"])
    assert _state.current is not None
    assert [i.name for i in _state.current.integrations] == ["flask"]


def test_config_error_from_init_leaves_nothing_behind(registry: CollectorRegistry) -> None:
    """A ConfigError raised by init() leaves no agent, hook or metric behind."""
    with pytest.raises(ConfigError):
        sightline.init(service="t", registry=registry, max_series=0)
    assert _state.current is None
    assert list(registry.collect()) == []


def test_client_instrumentation_is_removed_on_shutdown(registry: CollectorRegistry) -> None:
    """init() instruments requests for outgoing traces; shutdown() restores it exactly."""
    requests = pytest.importorskip("requests")
    pytest.importorskip("opentelemetry.instrumentation.requests")
    original = requests.Session.send
    sightline.init(service="t", registry=registry, metrics_addr="off", logs=False)
    assert requests.Session.send is not original
    sightline.shutdown()
    assert requests.Session.send is original


def test_client_instrumentation_left_off_without_tracing(registry: CollectorRegistry) -> None:
    """With traces off, outgoing HTTP libraries are not touched."""
    requests = pytest.importorskip("requests")
    original = requests.Session.send
    sightline.init(service="t", registry=registry, metrics_addr="off", traces=False)
    assert requests.Session.send is original


@pytest.mark.internal_errors_expected
def test_metric_name_clash_leaves_the_app_alone(
    registry: CollectorRegistry, internal_errors: list[BaseException]
) -> None:
    """If the app already registered a metric of the same name, init() reports it, starts
    nothing, raises nothing, and leaves the app's metric in place."""
    from prometheus_client import Gauge

    theirs = Gauge("http_server_active_requests", "the app's own", registry=registry)
    sightline.init(service="t", registry=registry, metrics_addr="off")
    assert _state.current is None
    assert len(internal_errors) == 1
    theirs.set(3)
    assert registry.get_sample_value("http_server_active_requests") == 3
    assert registry.get_sample_value("target_info", {"service_name": "t"}) is None


def run_fresh(code: str) -> dict[str, str]:
    """Run ``code`` in a fresh interpreter; returns its ``key: value`` output lines."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)


def test_init_imports_no_framework_the_app_did_not_import() -> None:
    """init() leaves installed but unimported frameworks unimported; each is instrumented
    as soon as the app imports it (Flask, then FastAPI with its own telemetry kept off)."""
    pytest.importorskip("flask")
    pytest.importorskip("fastapi")
    pytest.importorskip("django")
    out = run_fresh("""
        import sys
        import sightline
        from prometheus_client import CollectorRegistry
        registry = CollectorRegistry()
        sightline.init(registry=registry, metrics_addr="off", traces=False, logs=False)
        frameworks = ("flask", "django", "fastapi", "starlette", "httpx")
        print("loaded after init:", [m for m in frameworks if m in sys.modules])

        import flask
        app = flask.Flask("t")
        app.add_url_rule("/users/<int:uid>", "u", lambda uid: "ok")
        body = app({"REQUEST_METHOD": "GET", "PATH_INFO": "/users/7", "SERVER_NAME": "t",
                    "SERVER_PORT": "80", "wsgi.url_scheme": "http"}, lambda *a: None)
        list(body)
        body.close()
        print("flask count:", registry.get_sample_value(
            "http_server_request_duration_seconds_count",
            {"http_request_method": "GET", "http_route": "/users/<int:uid>",
             "http_response_status_code": "200"}))
        loaders = (flask.__loader__, flask.__spec__.loader)
        print("flask loader:", " ".join(type(loader).__name__ for loader in loaders))

        import fastapi
        print("fastapi patched by:", fastapi.FastAPI.__call__.__module__)
        from sightline import _state
        print("integrations:", sorted(i.name for i in _state.current.integrations))
        print("django loaded:", "django" in sys.modules)
        sightline.shutdown()
        from sightline import integrations
        print("watching after shutdown:", integrations.watcher in sys.meta_path)
        print("flask restored:", flask.Flask.__call__.__module__)
    """)
    assert out["loaded after init"] == "[]"
    assert float(out["flask count"]) == 1
    assert out["flask loader"] == "SourceFileLoader SourceFileLoader"
    assert out["fastapi patched by"] == "sightline.integrations.starlette"
    assert out["integrations"] == "['flask', 'starlette']"
    assert out["django loaded"] == "False"
    assert out["watching after shutdown"] == "False"
    assert out["flask restored"] == "flask.app"


def test_import_watcher_runs_callbacks_after_the_import(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watched module's callback runs after its code ran, and again after a reload (which
    re-creates classes an integration patched); a failing import is the app's own error,
    unchanged, and runs no callback."""
    (tmp_path / "sl_watched.py").write_text("VALUE = 42\n")
    (tmp_path / "sl_broken.py").write_text("raise ImportError('the app is broken')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[Any] = []
    watcher = integrations.ImportWatcher()
    watcher.watch("sl_watched", lambda: seen.append(sys.modules["sl_watched"].VALUE))
    watcher.watch("sl_broken", lambda: seen.append("broken"))
    try:
        import sl_watched  # type: ignore[import-not-found]

        assert seen == [42]
        import sl_watched  # type: ignore[import-not-found]  # noqa: F811 (cached: no callback)

        sys.modules["sl_watched"].VALUE = 0
        importlib.reload(sl_watched)
        with pytest.raises(ImportError, match="the app is broken"):
            import sl_broken  # type: ignore[import-not-found]  # noqa: F401
    finally:
        watcher.unwatch_all()
        for name in ("sl_watched", "sl_broken"):
            sys.modules.pop(name, None)
    assert seen == [42, 42]
    assert watcher not in sys.meta_path


@pytest.mark.internal_errors_expected
def test_a_failing_callback_never_fails_the_apps_import(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, internal_errors: list[BaseException]
) -> None:
    """A callback that raises is reported by the safety net; the app's import succeeds."""
    (tmp_path / "sl_fine.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    watcher = integrations.ImportWatcher()

    def explode() -> None:
        raise RuntimeError("hook bug")

    watcher.watch("sl_fine", explode)
    try:
        import sl_fine  # type: ignore[import-not-found]
    finally:
        watcher.unwatch_all()
        sys.modules.pop("sl_fine", None)
    assert sl_fine.VALUE == 1
    assert [str(e) for e in internal_errors] == ["hook bug"]
