"""HTTPS export to a private CA, mutual TLS, and OpenTelemetry's standard switches
(OTEL_SDK_DISABLED, OTEL_TRACES_EXPORTER, OTEL_LOGS_EXPORTER)."""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sightline
import trustme
from prometheus_client import CollectorRegistry
from sightline import ConfigError, _state

from .helpers import call_wsgi, count
from .receivers import Backend
from .test_traces import make_app


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pem(ca: trustme.CA, tmp_path: Path) -> dict[str, str]:
    """The private CA's certificate, and a client certificate and key it signed, as files."""
    client = ca.issue_cert("shop@example.com")
    files = {
        "ca": tmp_path / "ca.pem",
        "cert": tmp_path / "client.pem",
        "key": tmp_path / "client.key",
        "other_ca": tmp_path / "other-ca.pem",
    }
    ca.cert_pem.write_to_path(str(files["ca"]))
    client.cert_chain_pems[0].write_to_path(str(files["cert"]))
    client.private_key_pem.write_to_path(str(files["key"]))
    trustme.CA().cert_pem.write_to_path(str(files["other_ca"]))
    return {name: str(path) for name, path in files.items()}


def server_context(ca: trustme.CA, require_client: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    if require_client:
        ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


@pytest.fixture
def tls_backend(ca: trustme.CA) -> Iterator[Backend]:
    backend = Backend(tls=server_context(ca, require_client=True)).start()
    yield backend
    backend.stop()


def one_request_and_line(registry: CollectorRegistry, **settings: Any) -> float:
    """Serve one request and log one line under the agent, then shut it down; returns how
    many requests the agent counted."""
    sightline.init(
        service="shop",
        registry=registry,
        metrics_addr="off",
        bsp_schedule_delay=0.05,
        otlp_timeout=2,
        loki_timeout=2,
        **settings,
    )
    call_wsgi(make_app(), "/users/7")
    logging.getLogger("shop").warning("paid")
    counted = count(registry, "/users/<int:uid>", "200")
    sightline.shutdown()
    return counted


def test_private_ca_and_client_certificate_reach_an_https_backend(
    tls_backend: Backend, pem: dict[str, str], registry: CollectorRegistry
) -> None:
    """With the CA and client certificate variables, spans and logs reach an HTTPS backend
    that requires a client certificate, which it sees."""
    counted = one_request_and_line(
        registry,
        otlp_endpoint=tls_backend.url,
        otlp_certificate=pem["ca"],
        otlp_client_certificate=pem["cert"],
        otlp_client_key=pem["key"],
        loki_url=tls_backend.url,
        loki_certificate=pem["ca"],
        loki_client_certificate=pem["cert"],
        loki_client_key=pem["key"],
    )
    assert counted == 1
    assert [s.name for _, s in tls_backend.spans()] == ["GET /users/<int:uid>"]
    assert [line for _, _, line, _ in tls_backend.log_entries() if '"paid"' in line]
    # One certificate per request (spans, logs), each the client certificate the CA signed.
    presented = [str(cert["subjectAltName"]) for cert in tls_backend.client_certificates]
    assert len(presented) == 2
    assert all("shop@example.com" in subject for subject in presented)
    assert tls_backend.handshake_failures == []


def test_environment_variables_name_the_files(
    tls_backend: Backend,
    pem: dict[str, str],
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_EXPORTER_OTLP_CERTIFICATE, _CLIENT_CERTIFICATE and _CLIENT_KEY are honoured."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", pem["ca"])
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", pem["cert"])
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_KEY", pem["key"])
    one_request_and_line(registry, otlp_endpoint=tls_backend.url, logs=False)
    assert len(tls_backend.spans()) == 1


def test_without_certificate_settings_the_system_trust_store_decides(
    ca: trustme.CA,
    pem: dict[str, str],
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With no certificate setting, an HTTPS backend is trusted by the system's trust
    store, as the export thread finds it when it connects (here SSL_CERT_FILE names the
    private CA): spans and logs arrive."""
    monkeypatch.setenv("SSL_CERT_FILE", pem["ca"])
    backend = Backend(tls=server_context(ca, require_client=False)).start()
    try:
        assert one_request_and_line(registry, otlp_endpoint=backend.url, loki_url=backend.url)
    finally:
        backend.stop()
    assert [s.name for _, s in backend.spans()] == ["GET /users/<int:uid>"]
    assert [line for _, _, line, _ in backend.log_entries() if '"paid"' in line]
    assert backend.handshake_failures == []


def test_an_untrusted_certificate_fails_loudly_naming_the_setting(
    ca: trustme.CA,
    pem: dict[str, str],
    registry: CollectorRegistry,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Against a CA nobody configured, nothing is sent, each failure is counted as `tls`
    (not retried), and the warning names the variable that fixes it."""
    backend = Backend(tls=server_context(ca, require_client=False)).start()
    sightline.init(
        service="shop",
        registry=registry,
        metrics_addr="off",
        bsp_schedule_delay=0.05,
        otlp_endpoint=backend.url,
        otlp_certificate=pem["other_ca"],
        logs=False,
    )

    def failures(metric: str) -> float:
        labels = {"signal": "traces", "reason": "tls"}
        return registry.get_sample_value(f"sightline_export_{metric}_total", labels) or 0.0

    try:
        call_wsgi(make_app(), "/users/7")
        assert backend.wait_for(lambda: failures("failures") == 1)
        assert backend.handshake_failures
        assert failures("retried") == 0
        dropped = {"signal": "traces", "reason": "tls"}
        assert registry.get_sample_value("sightline_dropped_total", dropped) == 1
    finally:
        sightline.shutdown()
        backend.stop()
    assert backend.spans() == []
    assert any(
        "certificate verify failed" in r.getMessage() or "cannot trust" in r.getMessage()
        for r in caplog.records
    )
    assert any("OTEL_EXPORTER_OTLP_CERTIFICATE" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("var", "value", "text"),
    [
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "missing.pem", "existing PEM file"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "key", "not usable PEM"),
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "ca_only", "not usable PEM"),
        ("SIGHTLINE_LOKI_CLIENT_KEY", "key", "needs SIGHTLINE_LOKI_CLIENT_CERTIFICATE"),
        ("SIGHTLINE_LOKI_CERTIFICATE", "empty", "not usable PEM"),
    ],
)
def test_unusable_certificate_files_are_config_errors_naming_the_variable(
    var: str,
    value: str,
    text: str,
    pem: dict[str, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A missing file, a key given as CA, a certificate without its key, a key without a
    certificate or an empty file makes init() raise ConfigError naming the variable."""
    (tmp_path / "empty.pem").write_text("")
    paths = {
        "missing.pem": str(tmp_path / "missing.pem"),
        "key": pem["key"],
        "ca_only": pem["ca"],
        "empty": str(tmp_path / "empty.pem"),
    }
    monkeypatch.setenv(var, paths[value])
    with pytest.raises(ConfigError, match=var) as info:
        sightline.init(service="x", metrics_addr="off")
    assert text in str(info.value)
    assert _state.current is None


@pytest.mark.parametrize(
    "env",
    [{"OTEL_SDK_DISABLED": "true"}, {"OTEL_TRACES_EXPORTER": "none"}],
)
def test_standard_switches_turn_spans_off(
    env: dict[str, str],
    backend: Backend,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_SDK_DISABLED=true and OTEL_TRACES_EXPORTER=none: no span is recorded or
    exported (nothing reaches the endpoint), while requests are still counted."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    counted = one_request_and_line(registry, otlp_endpoint=backend.url, logs=False)
    assert counted == 1
    assert backend.targets == []
    assert _state.current is None


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"OTEL_SDK_DISABLED": "TRUE"}, "OTEL_SDK_DISABLED is true"),
        ({"OTEL_LOGS_EXPORTER": "none"}, "OTEL_LOGS_EXPORTER=none"),
        ({"OTEL_LOGS_EXPORTER": "console"}, "OTEL_LOGS_EXPORTER=console"),
    ],
)
def test_standard_switches_turn_log_shipping_off_with_one_warning(
    env: dict[str, str],
    reason: str,
    backend: Backend,
    registry: CollectorRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """OTEL_SDK_DISABLED=true or OTEL_LOGS_EXPORTER=none/console ships no logs to the Loki
    URL, and one warning says which variable stopped it."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    one_request_and_line(registry, loki_url=backend.url, traces=False)
    assert backend.loki_pushes == []
    warnings = [r.getMessage() for r in caplog.records if "are not shipped" in r.getMessage()]
    assert len(warnings) == 1
    assert reason in warnings[0]


def test_otlp_logs_exporter_without_loki_warns_once(
    registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """OTEL_LOGS_EXPORTER=otlp with no Loki URL is not silently ignored: one warning names
    SIGHTLINE_LOKI_URL."""
    monkeypatch.setenv("OTEL_LOGS_EXPORTER", "otlp")
    one_request_and_line(registry, traces=False)
    warnings = [r.getMessage() for r in caplog.records if "OTEL_LOGS_EXPORTER" in r.getMessage()]
    assert len(warnings) == 1
    assert "SIGHTLINE_LOKI_URL" in warnings[0]


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("OTEL_SDK_DISABLED", "yes"),
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_TRACES_EXPORTER", "otlp,none"),
        ("OTEL_LOGS_EXPORTER", "otpl"),
    ],
)
def test_unsupported_switch_values_are_config_errors(
    var: str, value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value the specification does not define, or Sightline cannot honour, is a
    ConfigError naming the variable, not ignored."""
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=f"invalid {var}={value!r}"):
        sightline.init(service="x", metrics_addr="off")
