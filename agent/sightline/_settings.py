"""Settings: one frozen object, read once from the environment, overridden by ``init()``.

Every knob has one ``SIGHTLINE_*`` variable (and a standard ``OTEL_*`` one where such a
name exists). Casting is strict: a bad value raises :class:`ConfigError` naming the
setting and the value, and that is the only exception ``init()`` lets out.

    >>> Settings.load({"SIGHTLINE_MAX_SERIES": "500"}, {"service": "checkout"}).max_series
    500
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

INTEGRATION_NAMES = (
    "flask",
    "django",
    "starlette",
    "gunicorn",
    "uvicorn",
    "celery",
    "rq",
    "requests",
    "httpx",
    "urllib3",
)

SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
LOKI_LABELS = ("service_name", "deployment_environment", "level", "logger", "service_version")


class ConfigError(ValueError):
    """An invalid setting; the message names the setting and the bad value."""


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise ValueError("expected one of true, false, 1, 0")


def _positive_int(raw: str) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError("expected a positive whole number") from None
    if value < 1:
        raise ValueError("expected a positive whole number")
    return value


def _optional_positive_int(raw: str) -> int | None:
    return None if raw.strip().lower() in ("", "auto") else _positive_int(raw)


def _positive_float(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError("expected a positive number") from None
    if not 0 < value < float("inf"):
        raise ValueError("expected a positive number")
    return value


def _milliseconds(raw: str) -> float:
    """OpenTelemetry durations are whole milliseconds; kept here in seconds. Zero would
    mean an export thread spinning or a request that cannot succeed, so it is refused."""
    try:
        value = int(raw.strip())
    except ValueError:
        raise ValueError("expected a positive whole number of milliseconds") from None
    if value < 1:
        raise ValueError("expected a positive whole number of milliseconds")
    return value / 1000.0


def _ratio(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError("expected a number from 0 to 1") from None
    if not 0.0 <= value <= 1.0:
        raise ValueError("expected a number from 0 to 1")
    return value


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return parse


def _url(raw: str) -> str:
    value = raw.strip()
    if not value:
        return ""
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("expected a URL without spaces or control characters")
    parsed = urllib.parse.urlsplit(value)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ValueError("expected an http:// or https:// URL")
    if parsed.query or parsed.fragment:
        raise ValueError("expected a URL without a query string or fragment")
    try:
        parsed.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        raise ValueError("expected an http:// or https:// URL with a valid port") from None
    return value


_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def _header_value(value: str) -> str:
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        raise ValueError("header values must be Latin-1 text") from None
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise ValueError("header values cannot contain control characters")
    return value


def _header_text(raw: str) -> str:
    return _header_value(raw.strip())


def _headers(raw: str) -> tuple[tuple[str, str], ...]:
    """``key=value,key=value`` (%-encoded values) as in OTEL_EXPORTER_OTLP_HEADERS."""
    pairs = []
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        key = urllib.parse.unquote(key.strip())
        if not sep or not _TOKEN.fullmatch(key):
            raise ValueError(f"expected name=value pairs with valid header names, got {item!r}")
        pairs.append((key, _header_value(urllib.parse.unquote(value.strip()))))
    return tuple(pairs)


def _words(raw: str) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in raw.split(",") if part.strip())


def _loki_labels(raw: str) -> tuple[str, ...]:
    names = _words(raw)
    unknown = [n for n in names if n not in LOKI_LABELS]
    if unknown:
        raise ValueError(f"unknown label {unknown[0]!r}; allowed: {', '.join(LOKI_LABELS)}")
    return names


def _log_level(raw: str) -> str:
    value = raw.strip().upper()
    if value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


def _text(raw: str) -> str:
    return raw.strip()


def _name(raw: str) -> str:
    value = raw.strip()
    if not value or any(ch in value for ch in "\r\n\t"):
        raise ValueError("expected a non-empty single-line name")
    return value


def _address(raw: str) -> tuple[str, int] | None:
    value = raw.strip()
    if value.lower() in ("off", "none", "false", "0"):
        return None
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(
            "expected HOST:PORT (e.g. 127.0.0.1:9464, 0.0.0.0:9464, [::1]:9464) or off"
        )
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host:
        raise ValueError("expected HOST:PORT with a host")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not all(part.isalnum() or part.replace("-", "").isalnum() for part in host.split(".")):
            raise ValueError("expected HOST:PORT with a valid host name or IP address") from None
    return host, int(port_text)


def _url_path(raw: str) -> str:
    value = raw.strip()
    if value and (not value.startswith("/") or any(ch in value for ch in "?# \t\r\n")):
        raise ValueError("expected an absolute URL path such as /metrics, or empty")
    return value


def _integration_names(raw: str) -> tuple[str, ...]:
    names = tuple(part.strip().lower() for part in raw.split(",") if part.strip())
    unknown = [n for n in names if n not in INTEGRATION_NAMES]
    if unknown:
        raise ValueError(
            f"unknown integration {unknown[0]!r}; known: {', '.join(INTEGRATION_NAMES)}"
        )
    return names


def _resource_attributes(raw: str) -> tuple[tuple[str, str], ...]:
    """Parse OTEL_RESOURCE_ATTRIBUTES: ``key=value,key=value`` with percent-encoded values."""
    pairs = []
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"expected key=value pairs separated by commas, got {item!r}")
        pairs.append((key.strip(), urllib.parse.unquote(value.strip())))
    return tuple(pairs)


@dataclasses.dataclass(frozen=True)
class _Spec:
    env: tuple[str, ...]
    parse: Callable[[str], Any]
    default: str
    doc: str


# One row per setting: the variables that set it (first wins), its parser, default and meaning.
# docs/configuration.md lists every variable named here; a test keeps the two in step.
SPECS: dict[str, _Spec] = {
    "disabled": _Spec(
        ("SIGHTLINE_DISABLED",), _bool, "false", "Turn the whole agent into a no-op."
    ),
    "service": _Spec(
        ("SIGHTLINE_SERVICE", "OTEL_SERVICE_NAME"),
        _name,
        "unknown_service",
        "Service name (`service.name`); also read from OTEL_RESOURCE_ATTRIBUTES.",
    ),
    "service_version": _Spec(
        ("SIGHTLINE_SERVICE_VERSION",), _text, "", "Service version (`service.version`)."
    ),
    "environment": _Spec(
        ("SIGHTLINE_ENVIRONMENT",),
        _text,
        "",
        "Deployment environment (`deployment.environment.name`).",
    ),
    "resource_attributes": _Spec(
        ("OTEL_RESOURCE_ATTRIBUTES",),
        _resource_attributes,
        "",
        "Extra resource attributes, `key=value,...` (values %-encoded).",
    ),
    "metrics_addr": _Spec(
        ("SIGHTLINE_METRICS_ADDR",),
        _address,
        "127.0.0.1:9464",
        "Where the background /metrics server listens, or `off`.",
    ),
    "metrics_path": _Spec(
        ("SIGHTLINE_METRICS_PATH",),
        _url_path,
        "",
        "Serve metrics from the app itself on this path (e.g. /metrics).",
    ),
    "max_series": _Spec(
        ("SIGHTLINE_MAX_SERIES",),
        _positive_int,
        "2000",
        "Label sets each metric may hold before folding into the overflow series.",
    ),
    "worker_capacity": _Spec(
        ("SIGHTLINE_WORKER_CAPACITY",),
        _optional_positive_int,
        "auto",
        "Requests this process can serve at once; `auto` detects it.",
    ),
    "multiprocess": _Spec(
        ("SIGHTLINE_MULTIPROCESS",),
        _choice("auto", "off"),
        "auto",
        "Merge the metrics of a multi-process server's workers; `off` serves each alone.",
    ),
    "queue_sample_interval": _Spec(
        ("SIGHTLINE_QUEUE_SAMPLE_INTERVAL",),
        _positive_float,
        "5",
        "Seconds between two readings of the background-task queues' depth.",
    ),
    "exemplars": _Spec(
        ("SIGHTLINE_EXEMPLARS",),
        _bool,
        "true",
        "Attach the current trace to duration observations as an exemplar.",
    ),
    "integrations": _Spec(
        ("SIGHTLINE_INTEGRATIONS",),
        _integration_names,
        "",
        "Integrations to require (comma-separated); empty enables every one "
        "whose library is installed.",
    ),
    "disabled_integrations": _Spec(
        ("SIGHTLINE_DISABLED_INTEGRATIONS",),
        _integration_names,
        "",
        "Integrations never to enable (comma-separated).",
    ),
    "shutdown_timeout": _Spec(
        ("SIGHTLINE_SHUTDOWN_TIMEOUT",),
        _positive_float,
        "5",
        "Seconds shutdown() may take, flushing included.",
    ),
    # Traces
    "traces": _Spec(("SIGHTLINE_TRACES",), _bool, "true", "Record and export server spans."),
    "traces_sampler": _Spec(
        ("OTEL_TRACES_SAMPLER",), _choice(*SAMPLERS), "parentbased_always_on", "Sampler."
    ),
    "traces_sampler_arg": _Spec(
        ("OTEL_TRACES_SAMPLER_ARG",), _ratio, "1.0", "Ratio for the traceidratio samplers."
    ),
    "otlp_endpoint": _Spec(
        ("OTEL_EXPORTER_OTLP_ENDPOINT",),
        _url,
        "http://localhost:4318",
        "OTLP/HTTP base URL; traces go to /v1/traces under it.",
    ),
    "otlp_traces_endpoint": _Spec(
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",),
        _url,
        "",
        "Full OTLP/HTTP traces URL (wins over the base URL).",
    ),
    "otlp_protocol": _Spec(
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
        _choice("http/protobuf"),
        "http/protobuf",
        "OTLP protocol.",
    ),
    "otlp_headers": _Spec(
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"),
        _headers,
        "",
        "Headers sent with every OTLP request.",
    ),
    "otlp_timeout": _Spec(
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"),
        _milliseconds,
        "10000",
        "Timeout of one OTLP request (ms).",
    ),
    "otlp_compression": _Spec(
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"),
        _choice("gzip", "none"),
        "gzip",
        "OTLP request compression.",
    ),
    "bsp_max_queue_size": _Spec(
        ("OTEL_BSP_MAX_QUEUE_SIZE",),
        _positive_int,
        "2048",
        "Spans queued for export before new ones are dropped.",
    ),
    "bsp_schedule_delay": _Spec(
        ("OTEL_BSP_SCHEDULE_DELAY",),
        _milliseconds,
        "5000",
        "Longest wait between span exports (ms).",
    ),
    "bsp_max_export_batch_size": _Spec(
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE",), _positive_int, "512", "Spans per export request."
    ),
    "bsp_export_timeout": _Spec(
        ("OTEL_BSP_EXPORT_TIMEOUT",),
        _milliseconds,
        "30000",
        "Longest backoff between two retries of a batch (ms).",
    ),
    "redact_query_keys": _Spec(
        ("SIGHTLINE_REDACT_QUERY_KEYS",),
        _words,
        "",
        "More query-string keys whose values are redacted in spans.",
    ),
    # Logs
    "logs": _Spec(
        ("SIGHTLINE_LOGS",),
        _bool,
        "true",
        "Put trace ids on log records and add a stdout handler if none exists.",
    ),
    "log_format": _Spec(
        ("SIGHTLINE_LOG_FORMAT",),
        _choice("json", "text"),
        "json",
        "Format of the stdout handler Sightline adds.",
    ),
    "log_level": _Spec(
        ("SIGHTLINE_LOG_LEVEL",),
        _log_level,
        "INFO",
        "Root level set when Sightline adds the stdout handler.",
    ),
    "access_log": _Spec(
        ("SIGHTLINE_ACCESS_LOG",),
        _bool,
        "false",
        "One log line per request on the sightline.access logger.",
    ),
    "loki_url": _Spec(
        ("SIGHTLINE_LOKI_URL",), _url, "", "Loki push URL; logs are shipped there when set."
    ),
    "loki_labels": _Spec(
        ("SIGHTLINE_LOKI_LABELS",),
        _loki_labels,
        "service_name,deployment_environment,level",
        "Loki stream labels.",
    ),
    "loki_username": _Spec(("SIGHTLINE_LOKI_USERNAME",), _header_text, "", "Basic-auth user."),
    "loki_password": _Spec(("SIGHTLINE_LOKI_PASSWORD",), _header_text, "", "Basic-auth password."),
    "loki_token": _Spec(("SIGHTLINE_LOKI_TOKEN",), _header_text, "", "Bearer token."),
    "loki_tenant": _Spec(("SIGHTLINE_LOKI_TENANT",), _header_text, "", "X-Scope-OrgID tenant."),
    "loki_buffer": _Spec(
        ("SIGHTLINE_LOKI_BUFFER",),
        _positive_int,
        "10000",
        "Log records queued for Loki before new ones are dropped.",
    ),
    "loki_batch_size": _Spec(
        ("SIGHTLINE_LOKI_BATCH_SIZE",), _positive_int, "1000", "Records per push."
    ),
    "loki_batch_bytes": _Spec(
        ("SIGHTLINE_LOKI_BATCH_BYTES",),
        _positive_int,
        "1048576",
        "Uncompressed line bytes per push.",
    ),
    "loki_timeout": _Spec(
        ("SIGHTLINE_LOKI_TIMEOUT",), _positive_float, "5", "Timeout of one push (s)."
    ),
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the agent is configured with, fixed for the life of one ``init()``.

    Build it with :meth:`Settings.load`; ``sightline.init(**overrides)`` does so for you::

        settings = Settings.load(os.environ, {"service": "checkout", "max_series": 500})
    """

    disabled: bool
    service: str
    service_version: str
    environment: str
    resource_attributes: tuple[tuple[str, str], ...]
    metrics_addr: tuple[str, int] | None
    metrics_path: str
    max_series: int
    worker_capacity: int | None
    multiprocess: str
    queue_sample_interval: float
    exemplars: bool
    integrations: tuple[str, ...]
    disabled_integrations: tuple[str, ...]
    shutdown_timeout: float
    traces: bool
    traces_sampler: str
    traces_sampler_arg: float
    otlp_endpoint: str
    otlp_traces_endpoint: str
    otlp_protocol: str
    otlp_headers: tuple[tuple[str, str], ...]
    otlp_timeout: float
    otlp_compression: str
    bsp_max_queue_size: int
    bsp_schedule_delay: float
    bsp_max_export_batch_size: int
    bsp_export_timeout: float
    redact_query_keys: tuple[str, ...]
    logs: bool
    log_format: str
    log_level: str
    access_log: bool
    loki_url: str
    loki_labels: tuple[str, ...]
    loki_username: str
    loki_password: str
    loki_token: str
    loki_tenant: str
    loki_buffer: int
    loki_batch_size: int
    loki_batch_bytes: int
    loki_timeout: float

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Read settings from ``environ`` (default ``os.environ``), then apply ``overrides``."""
        environ = os.environ if environ is None else environ
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(SPECS))
        if unknown:
            raise ConfigError(f"unknown setting {unknown[0]!r}; known: {', '.join(SPECS)}")
        values: dict[str, Any] = {}
        explicit: set[str] = set()
        for name, spec in SPECS.items():
            if name in overrides and overrides[name] is not None:
                values[name] = _cast_override(name, spec, overrides[name])
                explicit.add(name)
                continue
            for var in spec.env:
                raw = environ.get(var)
                if raw is not None and raw.strip() != "":
                    values[name] = _cast(var, spec, raw)
                    explicit.add(name)
                    break
            else:
                values[name] = spec.parse(spec.default)

        resource = dict(values["resource_attributes"])
        # OTEL_RESOURCE_ATTRIBUTES fills what no dedicated setting gave.
        for name, key in (("service", "service.name"), ("service_version", "service.version")):
            if name not in explicit and resource.get(key):
                values[name] = _cast("OTEL_RESOURCE_ATTRIBUTES", SPECS[name], resource[key])
        if "environment" not in explicit:
            values["environment"] = resource.get(
                "deployment.environment.name", resource.get("deployment.environment", "")
            )
        # Serving metrics from the app replaces the background server unless both are asked for.
        if values["metrics_path"] and "metrics_addr" not in explicit:
            values["metrics_addr"] = None
        # A batch can never be bigger than the queue it is taken from (as the SDK insists).
        for batch, queue in (
            ("bsp_max_export_batch_size", "bsp_max_queue_size"),
            ("loki_batch_size", "loki_buffer"),
        ):
            if values[batch] > values[queue]:
                raise ConfigError(
                    f"invalid {SPECS[batch].env[0]}={values[batch]}: larger than "
                    f"{SPECS[queue].env[0]}={values[queue]}"
                )
        return cls(**values)


def _cast(var: str, spec: _Spec, raw: str) -> Any:
    try:
        return spec.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"invalid {var}={raw!r}: {exc}") from None


def _cast_override(name: str, spec: _Spec, value: Any) -> Any:
    if isinstance(value, bool):
        raw = "true" if value else "false"
    elif isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        raw = ",".join(str(v) for v in value)
    elif isinstance(value, (str, int, float)):
        raw = str(value)
    else:
        raise ConfigError(f"invalid {name}={value!r}: expected a string or number")
    if isinstance(value, bool) and spec.parse is not _bool:
        raise ConfigError(f"invalid {name}={value!r}: not a yes/no setting")
    try:
        return spec.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"invalid {name}={value!r}: {exc}") from None
