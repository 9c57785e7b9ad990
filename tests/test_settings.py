"""Settings: strict casting from the environment, overrides, and one clear error."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

import pytest
import sightline
from prometheus_client import CollectorRegistry
from sightline import ConfigError, Settings, _state
from sightline._settings import SPECS

from .helpers import free_port


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
    assert _state.current is None


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
    assert _state.current is None
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


# Variables with values that broke the agent or the app before they were checked.
BAD_VARIABLES = [
    ("OTEL_PROPAGATORS", "tracecontex"),
    ("OTEL_PYTHON_CONTEXT", "contextvars"),
    ("OTEL_PYTHON_TRACER_PROVIDER", "no_such_provider"),
    ("OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT", "lots"),
    ("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "-1"),
    ("OTEL_PYTHON_REQUESTS_EXCLUDED_URLS", "health,(unclosed"),
    ("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST", "x-[a"),
    ("PROMETHEUS_MULTIPROC_DIR", "/nonexistent/sightline-test"),
    ("SIGHTLINE_METRICS_ADDR", "a" * 64 + ".example:9464"),
    ("OTEL_BSP_SCHEDULE_DELAY", "99999999999999"),
    ("SIGHTLINE_SHUTDOWN_TIMEOUT", "1e10"),
    ("SIGHTLINE_QUEUE_SAMPLE_INTERVAL", "1e12"),
    ("SIGHTLINE_QUEUE_SAMPLE_INTERVAL", "nan"),
    ("OTEL_EXPORTER_OTLP_TIMEOUT", "1e3"),
]


@pytest.mark.parametrize(("var", "value"), BAD_VARIABLES)
def test_bad_variables_never_break_import_and_are_named_by_init(var: str, value: str) -> None:
    """`import sightline` succeeds silently whatever the variables hold; init() then raises
    one ConfigError naming the variable and its value, and nothing else is printed."""
    code = (
        "import sightline\n"
        "try:\n"
        "    sightline.init(service='x')\n"
        "except sightline.ConfigError as exc:\n"
        "    print('ConfigError:', exc)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "SIGHTLINE_"))}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env["SIGHTLINE_METRICS_ADDR"] = "off"
    imported = subprocess.run(
        [sys.executable, "-c", "import sightline"],
        env={**env, var: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (imported.returncode, imported.stderr) == (0, "")
    started = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, var: value},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert started.returncode == 0, started.stderr
    assert started.stderr == ""
    assert started.stdout.startswith(f"ConfigError: invalid {var}={value!r}"), started.stdout


@pytest.mark.parametrize("name", [n for n, s in SPECS.items() if hasattr(s.parse, "range")])
def test_numeric_settings_refuse_values_outside_their_range(name: str) -> None:
    """Each numeric setting accepts both ends of its documented range and refuses what lies
    beyond either end, naming the variable."""
    spec = SPECS[name]
    low, high = spec.parse.low, spec.parse.high  # type: ignore[attr-defined]
    var = spec.env[0]
    for good in (low, high):
        Settings.load({var: str(good), **_room_for(name, good)})
    for bad in (low - (1 if isinstance(low, int) else low / 2), high * 10):
        with pytest.raises(ConfigError, match=var):
            Settings.load({var: str(bad), **_room_for(name, bad)})


def _room_for(name: str, value: float) -> dict[str, str]:
    """The companion setting a batch size must not exceed (or a queue must not be below),
    set so that only ``value`` decides."""
    pairs = {
        "bsp_max_export_batch_size": ("OTEL_BSP_MAX_QUEUE_SIZE", "1000000"),
        "loki_batch_size": ("SIGHTLINE_LOKI_BUFFER", "1000000"),
        "bsp_max_queue_size": ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "1"),
        "loki_buffer": ("SIGHTLINE_LOKI_BATCH_SIZE", "1"),
    }
    return dict([pairs[name]]) if name in pairs else {}


def test_longest_waits_leave_every_thread_running(registry: CollectorRegistry) -> None:
    """The largest accepted delays and intervals start threads that keep running (no wait
    overflows), and shutdown still returns promptly."""
    before = set(threading.enumerate())
    sightline.init(
        service="x",
        registry=registry,
        metrics_addr="off",
        bsp_schedule_delay=3600,
        queue_sample_interval=3600,
        shutdown_timeout=600,
        loki_url=f"http://127.0.0.1:{free_port()}/",  # nothing listens: a refused push
        loki_timeout=600,
    )
    sightline.track_queue("q", lambda: 1.0)
    agent = _state.current
    assert agent is not None
    assert agent.tracing is not None
    assert agent.tracing.queue is not None
    with agent.tracing.tracer.start_as_current_span("s"):
        logging.getLogger("longest").warning("one line")
    time.sleep(0.5)
    threads = set(threading.enumerate()) - before
    names = {t.name for t in threads}
    assert {"sightline-traces", "sightline-logs"} <= names, names
    assert all(t.is_alive() for t in threads)
    started = time.monotonic()
    sightline.shutdown()
    assert time.monotonic() - started < 5


#: A value other than the default for every setting, as its first variable takes it.
SAMPLES = {
    "disabled": "true",
    "sdk_disabled": "true",
    "traces_exporter": "none",
    "logs_exporter": "console",
    "otlp_certificate": "{ca}",
    "otlp_client_certificate": "{chain}",
    "otlp_client_key": "{key}",
    "loki_certificate": "{ca}",
    "loki_client_certificate": "{chain}",
    "loki_client_key": "{key}",
    "service": "checkout",
    "service_version": "1.2.3",
    "environment": "prod",
    "resource_attributes": "team=a%2Cb,region=eu",
    "metrics_addr": "[::1]:9000",
    "metrics_path": "/metrics",
    "max_series": "500",
    "worker_capacity": "8",
    "multiprocess": "off",
    "queue_sample_interval": "2.5",
    "rabbitmq_api": "http://monitor:s3cret@rabbit:15672",
    "exemplars": "false",
    "integrations": "flask,celery",
    "disabled_integrations": "rq",
    "shutdown_timeout": "1.5",
    "traces": "false",
    "traces_sampler": "traceidratio",
    "traces_sampler_arg": "0.25",
    "otlp_endpoint": "https://collector:4318",
    "otlp_traces_endpoint": "https://collector:4318/v1/traces",
    "otlp_protocol": "http/protobuf",
    "otlp_headers": "api-key=a%2Cb,x-tenant=t",
    "otlp_timeout": "2500",
    "otlp_compression": "none",
    "bsp_max_queue_size": "4096",
    "bsp_schedule_delay": "250",
    "bsp_max_export_batch_size": "10",
    "traces_buffer_bytes": "1048576",
    "bsp_export_timeout": "1500",
    "redact_query_keys": "sig,otp",
    "logs": "false",
    "log_format": "text",
    "log_level": "DEBUG",
    "access_log": "true",
    "loki_url": "https://loki:3100/loki/api/v1/push",
    "loki_labels": "service_name,level",
    "loki_username": "shop",
    "loki_password": "s3cret",
    "loki_token": "t0ken",
    "loki_tenant": "team-a",
    "loki_buffer": "20000",
    "loki_buffer_bytes": "1048576",
    "loki_batch_size": "10",
    "loki_batch_bytes": "4096",
    "loki_timeout": "2.5",
}


@pytest.fixture(scope="module")
def pem_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA certificate, a client certificate with its key in one file, and the key alone."""
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    client = ca.issue_cert("shop@example.com")
    folder = tmp_path_factory.mktemp("pem")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    client.private_key_and_cert_chain_pem.write_to_path(str(folder / "chain.pem"))
    client.private_key_pem.write_to_path(str(folder / "key.pem"))
    return {name: str(folder / f"{name}.pem") for name in ("ca", "chain", "key")}


@pytest.mark.parametrize("name", list(SPECS))
def test_every_setting_round_trips_through_variable_and_keyword(
    name: str, pem_files: dict[str, str]
) -> None:
    """Each setting read from its variable, given back to init() as the Python value it
    became, is the same value: keywords take the kept units and types, not the variable's text."""
    assert name in SAMPLES, f"add a sample value for {name}"
    var = SPECS[name].env[0]
    raw = SAMPLES[name].format(**pem_files)
    # A client key goes with its certificate.
    companion = name.replace("_key", "_certificate") if name.endswith("_client_key") else None
    env = {var: raw}
    overrides: dict[str, object] = {}
    if companion:
        env[SPECS[companion].env[0]] = overrides[companion] = pem_files["chain"]
    from_env = getattr(Settings.load(env), name)
    assert from_env != getattr(Settings.load({}), name) or name == "otlp_protocol"
    from_keyword = getattr(Settings.load({}, {**overrides, name: from_env}), name)
    assert from_keyword == from_env
    assert type(from_keyword) is type(from_env)


def test_keywords_are_seconds_and_tuples_whatever_the_variable_takes() -> None:
    """init(otlp_timeout=10) is ten seconds, as OTEL_EXPORTER_OTLP_TIMEOUT=10000 is; a
    (host, port) tuple is an address; a millisecond setting refuses a string keyword."""
    env = Settings.load({"OTEL_EXPORTER_OTLP_TIMEOUT": "10000", "SIGHTLINE_LOKI_TIMEOUT": "10"})
    kw = Settings.load({}, {"otlp_timeout": 10, "loki_timeout": 10})
    assert (env.otlp_timeout, env.loki_timeout) == (kw.otlp_timeout, kw.loki_timeout) == (10, 10)
    assert Settings.load({}, {"bsp_schedule_delay": 0.25}).bsp_schedule_delay == 0.25
    assert Settings.load({}, {"metrics_addr": ("0.0.0.0", 9464)}).metrics_addr == ("0.0.0.0", 9464)
    assert Settings.load({}, {"metrics_addr": ("::1", 9)}).metrics_addr == ("::1", 9)
    assert Settings.load({}, {"otlp_headers": {"api-key": "a,b"}}).otlp_headers == (
        ("api-key", "a,b"),
    )
    with pytest.raises(ConfigError, match=r"otlp_timeout='10000': expected a number of seconds"):
        Settings.load({}, {"otlp_timeout": "10000"})
    with pytest.raises(ConfigError, match=r"otlp_timeout=700: expected a number of seconds"):
        Settings.load({}, {"otlp_timeout": 700})
    with pytest.raises(ConfigError, match="metrics_addr"):
        Settings.load({}, {"metrics_addr": ("0.0.0.0", "9464")})
    with pytest.raises(ConfigError, match="otlp_headers"):
        Settings.load({}, {"otlp_headers": {"bad name": "x"}})


@pytest.mark.parametrize("raw", ["ftp://rabbit:15672", "sometimes", "http://rabbit:15672/?x=1"])
def test_rabbitmq_api_refuses_what_is_neither_a_url_nor_a_word(raw: str) -> None:
    """SIGHTLINE_RABBITMQ_API takes auto, off or an http(s) URL; anything else is an error
    naming the variable and the choices, with any password in the value hidden."""
    with pytest.raises(ConfigError) as caught:
        Settings.load({"SIGHTLINE_RABBITMQ_API": raw})
    assert "SIGHTLINE_RABBITMQ_API" in str(caught.value)
    assert "auto, off" in str(caught.value)


def test_rabbitmq_api_hides_the_password_of_a_bad_url() -> None:
    """A bad SIGHTLINE_RABBITMQ_API URL with credentials is reported without its password."""
    with pytest.raises(ConfigError) as caught:
        Settings.load({"SIGHTLINE_RABBITMQ_API": "http://monitor:s3cret@rabbit:99999"})
    assert "s3cret" not in str(caught.value)
    assert "rabbit:99999" in str(caught.value)
