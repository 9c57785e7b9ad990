"""Settings: strict casting from the environment, overrides, and one clear error."""

from __future__ import annotations

import pytest
import sightline
from sightline import ConfigError, Settings, _agent


def test_defaults_without_environment() -> None:
    """With nothing set, the documented defaults apply."""
    s = Settings.load({})
    assert s.service == "unknown_service"
    assert s.metrics_addr == ("127.0.0.1", 9464)
    assert s.max_series == 2000
    assert s.worker_capacity is None
    assert s.disabled is False
    assert s.exemplars is True


def test_environment_then_overrides() -> None:
    """init() keywords win over SIGHTLINE_* variables, which win over OTEL_* ones."""
    env = {
        "OTEL_SERVICE_NAME": "from-otel",
        "SIGHTLINE_MAX_SERIES": "10",
        "SIGHTLINE_METRICS_ADDR": "0.0.0.0:9000",
    }
    assert Settings.load(env).service == "from-otel"
    assert Settings.load({**env, "SIGHTLINE_SERVICE": "mine"}).service == "mine"
    s = Settings.load(env, {"service": "kw", "max_series": 5})
    assert (s.service, s.max_series, s.metrics_addr) == ("kw", 5, ("0.0.0.0", 9000))


def test_resource_attributes_fill_identity() -> None:
    """OTEL_RESOURCE_ATTRIBUTES supplies service name, version and environment (%-decoded)."""
    s = Settings.load(
        {
            "OTEL_RESOURCE_ATTRIBUTES": (
                "service.name=shop,service.version=1.2,deployment.environment.name=prod,team=a%2Cb"
            ),
        }
    )
    assert (s.service, s.service_version, s.environment) == ("shop", "1.2", "prod")
    assert ("team", "a,b") in s.resource_attributes


@pytest.mark.parametrize(
    ("env", "name", "value"),
    [
        ({"SIGHTLINE_METRICS_ADDR": "nonsense"}, "SIGHTLINE_METRICS_ADDR", "nonsense"),
        ({"SIGHTLINE_METRICS_ADDR": "host:99999"}, "SIGHTLINE_METRICS_ADDR", "host:99999"),
        ({"SIGHTLINE_MAX_SERIES": "-3"}, "SIGHTLINE_MAX_SERIES", "-3"),
        ({"SIGHTLINE_MAX_SERIES": "lots"}, "SIGHTLINE_MAX_SERIES", "lots"),
        ({"SIGHTLINE_DISABLED": "yes"}, "SIGHTLINE_DISABLED", "yes"),
        ({"SIGHTLINE_WORKER_CAPACITY": "0"}, "SIGHTLINE_WORKER_CAPACITY", "0"),
        ({"SIGHTLINE_METRICS_PATH": "metrics"}, "SIGHTLINE_METRICS_PATH", "metrics"),
        ({"SIGHTLINE_INTEGRATIONS": "flask,nope"}, "SIGHTLINE_INTEGRATIONS", "flask,nope"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "novalue"}, "OTEL_RESOURCE_ATTRIBUTES", "novalue"),
    ],
)
def test_invalid_environment_names_setting_and_value(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], name: str, value: str
) -> None:
    """init() raises one ConfigError naming the variable and the bad value, and starts nothing."""
    for key, val in env.items():
        monkeypatch.setenv(key, val)
    with pytest.raises(ConfigError) as info:
        sightline.init()
    assert name in str(info.value)
    assert repr(value) in str(info.value)
    assert _agent.current is None


@pytest.mark.parametrize(
    ("overrides", "text"),
    [
        ({"max_series": -3}, "max_series=-3"),
        ({"max_series": "3.5"}, "max_series='3.5'"),
        ({"metrics_addr": "nonsense"}, "metrics_addr='nonsense'"),
        ({"exemplars": "maybe"}, "exemplars='maybe'"),
        ({"max_series": True}, "max_series=True"),
        ({"no_such_setting": 1}, "no_such_setting"),
    ],
)
def test_invalid_keyword_names_setting(overrides: dict[str, object], text: str) -> None:
    """A bad init() keyword raises ConfigError naming the keyword and its value."""
    with pytest.raises(ConfigError, match=None) as info:
        sightline.init(**overrides)
    assert text in str(info.value)


def test_booleans_are_strict() -> None:
    """Only true/false/1/0 (any case) are booleans."""
    assert Settings.load({"SIGHTLINE_DISABLED": "TRUE"}).disabled is True
    assert Settings.load({"SIGHTLINE_DISABLED": "0"}).disabled is False
    with pytest.raises(ConfigError):
        Settings.load({"SIGHTLINE_DISABLED": "on"})


def test_metrics_path_replaces_background_server_unless_both_asked() -> None:
    """Serving metrics from the app turns the background server off unless its address is set."""
    assert Settings.load({"SIGHTLINE_METRICS_PATH": "/metrics"}).metrics_addr is None
    both = Settings.load(
        {"SIGHTLINE_METRICS_PATH": "/metrics", "SIGHTLINE_METRICS_ADDR": "127.0.0.1:9"}
    )
    assert both.metrics_addr == ("127.0.0.1", 9)


def test_addresses_accept_ipv6_and_off() -> None:
    """Bracketed IPv6 addresses and `off` are understood."""
    assert Settings.load({"SIGHTLINE_METRICS_ADDR": "[::1]:9464"}).metrics_addr == ("::1", 9464)
    assert Settings.load({"SIGHTLINE_METRICS_ADDR": "off"}).metrics_addr is None


def test_settings_are_frozen() -> None:
    """The settings object cannot be changed after it is built."""
    s = Settings.load({})
    with pytest.raises(AttributeError):
        s.max_series = 1  # type: ignore[misc]


def test_disabled_agent_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGHTLINE_DISABLED=true makes init() start nothing and patch nothing."""
    flask = pytest.importorskip("flask")
    original = flask.Flask.__call__
    monkeypatch.setenv("SIGHTLINE_DISABLED", "true")
    sightline.init(service="x")
    assert _agent.current is None
    assert flask.Flask.__call__ is original


@pytest.mark.parametrize(
    ("env", "name"),
    [
        ({"OTEL_BSP_SCHEDULE_DELAY": "0"}, "OTEL_BSP_SCHEDULE_DELAY"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "0"}, "OTEL_EXPORTER_OTLP_TIMEOUT"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://exa mple.com:4318"},
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318?a=1"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://c"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        (
            {"OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer%20%E2%82%AC"},
            "OTEL_EXPORTER_OTLP_HEADERS",
        ),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "bad name=x"}, "OTEL_EXPORTER_OTLP_HEADERS"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "x=a%0Db"}, "OTEL_EXPORTER_OTLP_HEADERS"),
        ({"SIGHTLINE_LOKI_TOKEN": "tok\u20ac"}, "SIGHTLINE_LOKI_TOKEN"),
        ({"OTEL_RESOURCE_ATTRIBUTES": "service.name=a%0Ab"}, "OTEL_RESOURCE_ATTRIBUTES"),
        ({"OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "4096"}, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"),
        ({"SIGHTLINE_LOKI_BUFFER": "10"}, "SIGHTLINE_LOKI_BATCH_SIZE"),
        ({"OTEL_TRACES_SAMPLER": "sometimes"}, "OTEL_TRACES_SAMPLER"),
        ({"OTEL_TRACES_SAMPLER_ARG": "1.5"}, "OTEL_TRACES_SAMPLER_ARG"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        ({"SIGHTLINE_LOKI_LABELS": "service_name,trace_id"}, "SIGHTLINE_LOKI_LABELS"),
    ],
)
def test_export_settings_that_could_never_work_are_refused(env: dict[str, str], name: str) -> None:
    """Export settings that would fail every request (or spin) are configuration errors."""
    with pytest.raises(ConfigError, match=name):
        Settings.load(env)
