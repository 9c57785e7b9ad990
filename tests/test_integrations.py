"""The integrations registry: isolation, explicit requests, and life without optional libraries."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import types
from typing import Any

import pytest
import sightline
from prometheus_client import CollectorRegistry
from sightline import ConfigError, _agent, _settings, integrations


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
    assert _agent.current is not None
    assert [i.name for i in _agent.current.integrations] == ["flask"]
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
        from sightline import _agent
        print("integrations:", [i.name for i in _agent.current.integrations])
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
    assert _agent.current is not None
    assert [i.name for i in _agent.current.integrations] == ["flask"]


def test_config_error_from_init_leaves_nothing_behind(registry: CollectorRegistry) -> None:
    """A ConfigError raised by init() leaves no agent, hook or metric behind."""
    with pytest.raises(ConfigError):
        sightline.init(service="t", registry=registry, max_series=0)
    assert _agent.current is None
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
    assert _agent.current is None
    assert len(internal_errors) == 1
    theirs.set(3)
    assert registry.get_sample_value("http_server_active_requests") == 3
    assert registry.get_sample_value("target_info", {"service_name": "t"}) is None
