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
    "litestar",
    "quart",
    "gunicorn",
    "uvicorn",
    "hypercorn",
    "waitress",
    "celery",
    "rq",
    "requests",
    "httpx",
    "aiohttp",
    "urllib3",
    "redis",
    "sqlalchemy",
    "psycopg",
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


class _Number:
    """A whole number or a decimal within documented bounds; ``scale`` converts the unit
    the variable is written in (OpenTelemetry's milliseconds) to the one kept (seconds).

    Every numeric setting has a range: a value past it could only stall a thread (a
    wait of 10^11 seconds overflows), exhaust memory or spin, so it is refused."""

    def __init__(
        self, low: float, high: float, whole: bool = True, unit: str = "", scale: float = 1.0
    ) -> None:
        self.low, self.high, self.whole, self.unit, self.scale = low, high, whole, unit, scale

    @property
    def range(self) -> str:
        """The bounds as docs/configuration.md writes them, e.g. ``1 to 100,000``."""
        return f"{_format_number(self.low)} to {_format_number(self.high)}"

    def __call__(self, raw: str) -> Any:
        text = raw.strip()
        kind = "whole number" if self.whole else "number"
        unit = f" {self.unit}" if self.unit else ""
        expected = f"expected a {kind}{unit} from {self.range}"
        try:
            value: float = int(text) if self.whole else float(text)
        except ValueError:
            raise ValueError(expected) from None
        if not self.low <= value <= self.high:  # NaN fails too
            raise ValueError(expected)
        return value * self.scale if self.scale != 1.0 else value

    def keyword(self, value: Any) -> Any:
        """An ``init()`` keyword: a Python number in the unit kept (seconds), not the
        variable's (milliseconds), so ``otlp_timeout=10`` is ten seconds."""
        if isinstance(value, str):
            if self.scale != 1.0:
                raise ValueError(
                    f"expected a number of seconds (the variable takes {self.unit.split()[-1]})"
                )
            return self(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError("expected a number")
        low, high = self.low * self.scale, self.high * self.scale
        whole = self.whole and self.scale == 1.0
        kind = "whole number" if whole else "number"
        unit = " of seconds" if self.scale != 1.0 else (f" {self.unit}" if self.unit else "")
        if (whole and not float(value).is_integer()) or not low <= value <= high:
            raise ValueError(
                f"expected a {kind}{unit} from {_format_number(low)} to {_format_number(high)}"
            )
        return int(value) if whole else float(value)


def _format_number(value: float) -> str:
    return f"{value:,}" if float(value).is_integer() else f"{value:g}"


def _optional(parse: _Number) -> Callable[[str], Any]:
    def optional(raw: str) -> Any:
        return None if raw.strip().lower() in ("", "auto") else parse(raw)

    def keyword(value: Any) -> Any:
        if isinstance(value, str) and value.strip().lower() in ("", "auto"):
            return None
        return parse.keyword(value)

    optional.range, optional.low, optional.high = parse.range, parse.low, parse.high  # type: ignore[attr-defined]
    optional.keyword = keyword  # type: ignore[attr-defined]
    return optional


_COUNT = _Number(1, 1_000_000)
# OpenTelemetry durations are whole milliseconds, kept here in seconds. Zero would mean an
# export thread spinning or a request that cannot succeed, so it is refused.
_MILLISECONDS = _Number(1, 3_600_000, unit="of milliseconds", scale=0.001)
_TIMEOUT_MILLISECONDS = _Number(1, 600_000, unit="of milliseconds", scale=0.001)
_BYTES = _Number(65536, 1 << 32, unit="of bytes")


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


def _url_or_word(*words: str) -> Callable[[str], str]:
    """A URL, or one of ``words`` (``auto``, ``off``) meaning something else."""

    def parse(raw: str) -> str:
        value = raw.strip()
        if value.lower() in words:
            return value.lower()
        try:
            return _url(value)
        except ValueError as exc:
            raise ValueError(f"{exc}, or one of {', '.join(words)}") from None

    parse.is_url = True  # type: ignore[attr-defined]
    return parse


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
            shown = f"header name {key!r}" if sep else "an item without '='"
            raise ValueError(f"expected name=value pairs with valid header names, got {shown}")
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
    if value and value not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ValueError("expected DEBUG, INFO, WARNING, ERROR or CRITICAL")
    return value


def _text(raw: str) -> str:
    return raw.strip()


def _otel_true(raw: str) -> bool:
    """An OpenTelemetry boolean: only ``true`` (any case) is true; ``false`` and empty are
    false. Anything else, which the specification reads as false with a warning, is
    refused here, so a ``1`` or ``yes`` meant as true is not silently ignored."""
    value = raw.strip().lower()
    if value not in ("true", "false", ""):
        raise ValueError("expected true or false (OpenTelemetry reads anything else as false)")
    return value == "true"


def _exporters(*known: str) -> Callable[[str], str]:
    """OTEL_*_EXPORTER: a comma-separated list of exporter names, of which Sightline has
    the ones in ``known``; ``none`` alone turns the signal's export off."""

    def parse(raw: str) -> str:
        names = _words(raw) or ("otlp",)
        for name in names:
            if name not in known:
                raise ValueError(
                    f"exporter {name!r} is not available in Sightline; "
                    f"use one of {', '.join(known)}"
                )
        if "none" in names and len(names) > 1:
            raise ValueError("'none' cannot be combined with another exporter")
        return ",".join(dict.fromkeys(names))

    return parse


def _pem_file(raw: str) -> str:
    """A readable PEM file (its contents are checked with the setting it goes with)."""
    path = raw.strip()
    if path and not os.path.isfile(path):
        raise ValueError("expected the path of an existing PEM file")
    if path and not os.access(path, os.R_OK):
        raise ValueError("expected a PEM file this process may read")
    return path


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
        # What the resolver accepts: ASCII labels of 1 to 63 letters, digits or hyphens,
        # 253 characters in all (anything else fails later, inside getaddrinfo).
        labels = host.split(".")
        if len(host) > 253 or not all(
            0 < len(label) <= 63 and label.isascii() and label.replace("-", "").isalnum()
            for label in labels
        ):
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
    secret: bool = False  # never shown in an error message


# One row per setting: the variables that set it (first wins), its parser, default and meaning.
# docs/configuration.md lists every variable named here; a test keeps the two in step.
SPECS: dict[str, _Spec] = {
    "disabled": _Spec(
        ("SIGHTLINE_DISABLED",), _bool, "false", "Turn the whole agent into a no-op."
    ),
    "sdk_disabled": _Spec(
        ("OTEL_SDK_DISABLED",),
        _otel_true,
        "false",
        "OpenTelemetry's switch: no spans recorded or exported, no logs shipped; metrics stay.",
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
        _Number(1, 100_000),
        "2000",
        "Label sets each metric may hold before folding into the overflow series.",
    ),
    "worker_capacity": _Spec(
        ("SIGHTLINE_WORKER_CAPACITY",),
        _optional(_Number(1, 1_000_000)),
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
        _Number(0.1, 3600, whole=False, unit="of seconds"),
        "5",
        "Seconds between two readings of the background-task queues' depth.",
    ),
    "rabbitmq_api": _Spec(
        ("SIGHTLINE_RABBITMQ_API",),
        _url_or_word("auto", "off"),
        "auto",
        "RabbitMQ management API read for the age of a Celery queue's oldest message: "
        "`auto` is port 15672 of the broker's host with the broker's credentials; a URL "
        "(credentials in it, or the broker's); `off` reads the depth only.",
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
        _Number(0.1, 600, whole=False, unit="of seconds"),
        "5",
        "Seconds shutdown() may take, flushing included.",
    ),
    # Traces
    "traces": _Spec(("SIGHTLINE_TRACES",), _bool, "true", "Record and export server spans."),
    "traces_exporter": _Spec(
        ("OTEL_TRACES_EXPORTER",),
        _exporters("otlp", "none"),
        "otlp",
        "`otlp` exports spans; `none` records and exports none.",
    ),
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
        secret=True,
    ),
    "otlp_timeout": _Spec(
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"),
        _TIMEOUT_MILLISECONDS,
        "10000",
        "Timeout of one OTLP request (ms).",
    ),
    "otlp_certificate": _Spec(
        ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"),
        _pem_file,
        "",
        "CA certificates (PEM) trusted for an https:// OTLP endpoint, instead of the system's.",
    ),
    "otlp_client_certificate": _Spec(
        (
            "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE",
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
        ),
        _pem_file,
        "",
        "Client certificate (PEM) presented to the OTLP endpoint (mutual TLS).",
    ),
    "otlp_client_key": _Spec(
        ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY"),
        _pem_file,
        "",
        "Private key (PEM) of the client certificate.",
    ),
    "otlp_compression": _Spec(
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"),
        _choice("gzip", "none"),
        "gzip",
        "OTLP request compression.",
    ),
    "bsp_max_queue_size": _Spec(
        ("OTEL_BSP_MAX_QUEUE_SIZE",),
        _COUNT,
        "2048",
        "Spans queued for export before new ones are dropped.",
    ),
    "bsp_schedule_delay": _Spec(
        ("OTEL_BSP_SCHEDULE_DELAY",),
        _MILLISECONDS,
        "5000",
        "Longest wait between span exports (ms).",
    ),
    "bsp_max_export_batch_size": _Spec(
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE",), _COUNT, "512", "Spans per export request."
    ),
    "traces_buffer_bytes": _Spec(
        ("SIGHTLINE_TRACES_BUFFER_BYTES",),
        _BYTES,
        "16777216",
        "Estimated bytes of spans queued for export before new ones are dropped.",
    ),
    "bsp_export_timeout": _Spec(
        ("OTEL_BSP_EXPORT_TIMEOUT",),
        _TIMEOUT_MILLISECONDS,
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
        "",
        "Root level set when Sightline adds the stdout handler; empty leaves it as it is.",
    ),
    "access_log": _Spec(
        ("SIGHTLINE_ACCESS_LOG",),
        _bool,
        "false",
        "One log line per request on the sightline.access logger.",
    ),
    "logs_exporter": _Spec(
        ("OTEL_LOGS_EXPORTER",),
        _exporters("otlp", "console", "none"),
        "otlp",
        "`none` or `console` ships no logs (stdout only); `otlp` ships to SIGHTLINE_LOKI_URL.",
    ),
    "loki_url": _Spec(
        ("SIGHTLINE_LOKI_URL",), _url, "", "Loki push URL; logs are shipped there when set."
    ),
    "loki_certificate": _Spec(
        ("SIGHTLINE_LOKI_CERTIFICATE",),
        _pem_file,
        "",
        "CA certificates (PEM) trusted for an https:// Loki, instead of the system's.",
    ),
    "loki_client_certificate": _Spec(
        ("SIGHTLINE_LOKI_CLIENT_CERTIFICATE",),
        _pem_file,
        "",
        "Client certificate (PEM) presented to Loki (mutual TLS).",
    ),
    "loki_client_key": _Spec(
        ("SIGHTLINE_LOKI_CLIENT_KEY",),
        _pem_file,
        "",
        "Private key (PEM) of the client certificate.",
    ),
    "loki_labels": _Spec(
        ("SIGHTLINE_LOKI_LABELS",),
        _loki_labels,
        "service_name,deployment_environment,level",
        "Loki stream labels.",
    ),
    "loki_username": _Spec(("SIGHTLINE_LOKI_USERNAME",), _header_text, "", "Basic-auth user."),
    "loki_password": _Spec(
        ("SIGHTLINE_LOKI_PASSWORD",), _header_text, "", "Basic-auth password.", secret=True
    ),
    "loki_token": _Spec(("SIGHTLINE_LOKI_TOKEN",), _header_text, "", "Bearer token.", secret=True),
    "loki_tenant": _Spec(("SIGHTLINE_LOKI_TENANT",), _header_text, "", "X-Scope-OrgID tenant."),
    "loki_buffer": _Spec(
        ("SIGHTLINE_LOKI_BUFFER",),
        _COUNT,
        "10000",
        "Log records queued for Loki before new ones are dropped.",
    ),
    "loki_buffer_bytes": _Spec(
        ("SIGHTLINE_LOKI_BUFFER_BYTES",),
        _BYTES,
        "16777216",
        "Bytes of log lines queued for Loki before new ones are dropped.",
    ),
    "loki_batch_size": _Spec(("SIGHTLINE_LOKI_BATCH_SIZE",), _COUNT, "1000", "Records per push."),
    "loki_batch_bytes": _Spec(
        ("SIGHTLINE_LOKI_BATCH_BYTES",),
        _Number(1024, 64 << 20),
        "1048576",
        "Uncompressed line bytes per push.",
    ),
    "loki_timeout": _Spec(
        ("SIGHTLINE_LOKI_TIMEOUT",),
        _Number(0.001, 600, whole=False, unit="of seconds"),
        "5",
        "Timeout of one push (s).",
    ),
}


def _entry_point_names(group: str) -> list[str]:
    from importlib.metadata import entry_points

    return sorted({point.name for point in entry_points(group=group)})


def _entry_point(group: str, what: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        name = raw.strip()
        installed = _entry_point_names(group)
        if name not in installed:
            raise ValueError(f"no {what} of that name is installed ({', '.join(installed)})")
        return name

    return parse


def _propagators(raw: str) -> tuple[str, ...]:
    names = tuple(part.strip() for part in raw.split(","))
    installed = _entry_point_names("opentelemetry_propagator")
    for name in names:
        if name.lower() != "none" and name not in installed:
            raise ValueError(
                f"no propagator named {name!r} is installed ({', '.join([*installed, 'none'])})"
            )
    return names


def _limit(raw: str) -> int | None:
    value = raw.strip().lower()
    if value == "unset":
        return None
    try:
        number = int(value)
    except ValueError:
        raise ValueError("expected a whole number from 0, or unset") from None
    if number < 0:
        raise ValueError("expected a whole number from 0, or unset")
    return number


def _patterns(raw: str) -> tuple[str, ...]:
    """Comma-separated regular expressions, which the instrumentations join with ``|``."""
    parts = tuple(part.strip() for part in raw.split(","))
    try:
        re.compile("|".join(parts))
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return parts


def _writable_directory(raw: str) -> str:
    path = raw.strip()
    if not os.path.isdir(path):
        raise ValueError(
            "expected an existing directory (prometheus-client writes its files there)"
        )
    if not os.access(path, os.W_OK | os.X_OK):
        raise ValueError("expected a directory this process may write to")
    return path


#: Variables that the OpenTelemetry API, SDK and client instrumentations (or
#: prometheus-client) read rather than Sightline. A bad value there fails deep inside a
#: library (an import that raises, a traceback, an instrumentation that breaks the app's
#: own HTTP calls), so ``init()`` checks them first and raises ConfigError naming the
#: variable instead.
#: docs/configuration.md lists each one; a test keeps the two in step.
CHECKED: dict[str, Callable[[str], Any]] = {
    "OTEL_PROPAGATORS": _propagators,
    "OTEL_PYTHON_CONTEXT": _entry_point("opentelemetry_context", "runtime context"),
    "OTEL_PYTHON_TRACER_PROVIDER": _entry_point("opentelemetry_tracer_provider", "provider"),
    **dict.fromkeys(
        (
            "OTEL_ATTRIBUTE_COUNT_LIMIT",
            "OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT",
            "OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT",
            "OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT",
            "OTEL_SPAN_EVENT_COUNT_LIMIT",
            "OTEL_SPAN_LINK_COUNT_LIMIT",
            "OTEL_EVENT_ATTRIBUTE_COUNT_LIMIT",
            "OTEL_LINK_ATTRIBUTE_COUNT_LIMIT",
        ),
        _limit,
    ),
    **dict.fromkeys(
        (
            "OTEL_PYTHON_EXCLUDED_URLS",
            "OTEL_PYTHON_REQUESTS_EXCLUDED_URLS",
            "OTEL_PYTHON_HTTPX_EXCLUDED_URLS",
            "OTEL_PYTHON_URLLIB3_EXCLUDED_URLS",
            "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST",
            "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE",
            "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS",
        ),
        _patterns,
    ),
    # prometheus-client's multi-process mode, which every metric created in the process uses.
    "PROMETHEUS_MULTIPROC_DIR": _writable_directory,
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything the agent is configured with, fixed for the life of one ``init()``.

    Build it with :meth:`Settings.load`; ``sightline.init(**overrides)`` does so for you::

        settings = Settings.load(os.environ, {"service": "checkout", "max_series": 500})
    """

    disabled: bool
    sdk_disabled: bool
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
    rabbitmq_api: str
    exemplars: bool
    integrations: tuple[str, ...]
    disabled_integrations: tuple[str, ...]
    shutdown_timeout: float
    traces: bool
    traces_exporter: str
    traces_sampler: str
    traces_sampler_arg: float
    otlp_endpoint: str
    otlp_traces_endpoint: str
    otlp_protocol: str
    otlp_headers: tuple[tuple[str, str], ...]
    otlp_timeout: float
    otlp_certificate: str
    otlp_client_certificate: str
    otlp_client_key: str
    otlp_compression: str
    bsp_max_queue_size: int
    bsp_schedule_delay: float
    bsp_max_export_batch_size: int
    traces_buffer_bytes: int
    bsp_export_timeout: float
    redact_query_keys: tuple[str, ...]
    logs: bool
    log_format: str
    log_level: str
    access_log: bool
    logs_exporter: str
    loki_url: str
    loki_certificate: str
    loki_client_certificate: str
    loki_client_key: str
    loki_labels: tuple[str, ...]
    loki_username: str
    loki_password: str
    loki_token: str
    loki_tenant: str
    loki_buffer: int
    loki_buffer_bytes: int
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
        for var, check in CHECKED.items():
            raw = environ.get(var)
            if raw is not None and raw.strip() != "":
                _cast(var, _Spec((var,), check, "", ""), raw)
        unknown = sorted(set(overrides) - set(SPECS))
        if unknown:
            raise ConfigError(f"unknown setting {unknown[0]!r}; known: {', '.join(SPECS)}")
        values: dict[str, Any] = {}
        explicit: dict[str, str] = {}  # setting -> the keyword or variable that gave it
        for name, spec in SPECS.items():
            if name in overrides and overrides[name] is not None:
                values[name] = _cast_override(name, spec, overrides[name])
                explicit[name] = name
                continue
            for var in spec.env:
                raw = environ.get(var)
                if raw is not None and raw.strip() != "":
                    values[name] = _cast(var, spec, raw)
                    explicit[name] = var
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
        # Credentials in a URL are sent as basic auth; given twice, neither would be sure.
        if _has_userinfo(values["loki_url"]) and (values["loki_username"] or values["loki_token"]):
            raise ConfigError(
                "invalid SIGHTLINE_LOKI_URL: it carries credentials, and SIGHTLINE_LOKI_USERNAME "
                "or SIGHTLINE_LOKI_TOKEN gives others; set them in one place"
            )
        for name in ("otlp_endpoint", "otlp_traces_endpoint"):
            if _has_userinfo(values[name]) and any(
                key.lower() == "authorization" for key, _ in values["otlp_headers"]
            ):
                raise ConfigError(
                    f"invalid {SPECS[name].env[0]}: it carries credentials, and "
                    "OTEL_EXPORTER_OTLP_HEADERS has an Authorization header; set them in one place"
                )
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
        for prefix in ("otlp", "loki"):
            _check_tls(values, explicit, prefix)
        return cls(**values)

    @property
    def exports_traces(self) -> bool:
        """Spans are recorded and exported: SIGHTLINE_TRACES, OTEL_SDK_DISABLED and
        OTEL_TRACES_EXPORTER all allow it."""
        return self.traces and not self.sdk_disabled and self.traces_exporter != "none"

    @property
    def ships_logs(self) -> bool:
        """Log records are shipped to Loki: a URL is set, and neither OTEL_SDK_DISABLED nor
        OTEL_LOGS_EXPORTER (``none``, ``console``) turns shipping off."""
        return (
            bool(self.loki_url)
            and not self.sdk_disabled
            and self.logs_exporter not in ("none", "console")
        )


def tls_context(ca: str, certificate: str, key: str) -> Any:
    """The ``ssl.SSLContext`` an https:// export uses: the system's trust store unless
    ``ca`` names the certificates to trust instead, plus a client certificate for mutual
    TLS. Raises ``ssl.SSLError`` or ``OSError`` for files that are not what they claim.

    None when neither is given: http.client then builds the default context itself, on
    the export thread when it first connects over https, and ``init()`` does not spend
    some 50 ms loading the system's trust store for an endpoint that may be plain http."""
    if not (ca or certificate):
        return None
    import ssl

    context = ssl.create_default_context(cafile=ca or None)
    if certificate:
        context.load_cert_chain(certificate, key or None)
    return context


def _check_tls(values: dict[str, Any], given: dict[str, str], prefix: str) -> None:
    names = (f"{prefix}_certificate", f"{prefix}_client_certificate", f"{prefix}_client_key")
    ca, certificate, key = (values[name] for name in names)
    if key and not certificate:
        raise ConfigError(
            f"invalid {given[names[2]]}: a client key needs {SPECS[names[1]].env[-1]} too"
        )
    if not (ca or certificate):
        return
    import ssl

    for name, check in ((names[0], (ca, "", "")), (names[1], ("", certificate, key))):
        if not values[name]:
            continue
        try:
            tls_context(*check)
        except (ssl.SSLError, OSError) as exc:
            what = "the key does not match the certificate, or " if key and name == names[1] else ""
            raise ConfigError(
                f"invalid {given[name]}={values[name]!r}: {what}not usable PEM "
                f"({exc.__class__.__name__}: {getattr(exc, 'reason', None) or exc})"
            ) from None


def _cast(var: str, spec: _Spec, raw: str) -> Any:
    try:
        return spec.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"invalid {var}={_shown(spec, raw)}: {exc}") from None


def _has_userinfo(url: str) -> bool:
    return "@" in urllib.parse.urlsplit(url).netloc


def _shown(spec: _Spec, value: Any) -> str:
    """The bad value as an error message may show it: secrets hidden, and a URL without
    the password it may carry (the message goes to logs and terminals)."""
    if spec.secret:
        return "<hidden>"
    is_url = spec.parse is _url or getattr(spec.parse, "is_url", False)
    if is_url and isinstance(value, str) and "@" in value:
        # Everything up to the last "@" may be credentials (a password may hold "/").
        scheme, sep, rest = value.partition("://")
        value = f"{scheme}{sep}<hidden>@{rest.rpartition('@')[2]}"
    return repr(value)


def _cast_override(name: str, spec: _Spec, value: Any) -> Any:
    """An ``init()`` keyword as a typed Python value: numbers in seconds whatever unit the
    variable takes, ``(host, port)`` tuples, mappings or pairs for headers and attributes,
    sequences of names; a string means what the variable's text would."""
    try:
        keyword = getattr(spec.parse, "keyword", None)
        if keyword is not None:
            return keyword(value)
        if isinstance(value, bool):
            if spec.parse not in (_bool, _otel_true):
                raise ValueError("not a yes/no setting")
            return value
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return spec.parse(",".join(value))
        if isinstance(value, (str, int, float)):
            return spec.parse(str(value))
        raise ValueError("expected a string or number")
    except ValueError as exc:
        raise ConfigError(f"invalid {name}={_shown(spec, value)}: {exc}") from None


def _address_keyword(value: Any) -> tuple[str, int] | None:
    if isinstance(value, str):
        return _address(value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    ):
        host = value[0]
        return _address(f"[{host}]:{value[1]}" if ":" in host else f"{host}:{value[1]}")
    raise ValueError("expected a (host, port) tuple, a HOST:PORT string or 'off'")


def _pairs_keyword(
    parse: Callable[[str], tuple[tuple[str, str], ...]],
    check_key: Callable[[str], bool],
    check_value: Callable[[str], str],
) -> Any:
    """Mappings or ``(key, value)`` pairs, for headers and resource attributes."""

    def keyword(value: Any) -> tuple[tuple[str, str], ...]:
        if isinstance(value, str):
            return parse(value)
        items = list(value.items()) if isinstance(value, Mapping) else value
        if not isinstance(items, (list, tuple)) or not all(
            isinstance(item, (list, tuple))
            and len(item) == 2
            and all(isinstance(part, str) for part in item)
            for item in items
        ):
            raise ValueError("expected a mapping or (name, value) pairs of strings")
        for key, text in items:
            if not check_key(key):
                raise ValueError(f"invalid name {key!r}")
            check_value(text)
        return tuple((key, text) for key, text in items)

    return keyword


_address.keyword = _address_keyword  # type: ignore[attr-defined]
_headers.keyword = _pairs_keyword(  # type: ignore[attr-defined]
    _headers, lambda key: bool(_TOKEN.fullmatch(key)), _header_value
)
_resource_attributes.keyword = _pairs_keyword(  # type: ignore[attr-defined]
    _resource_attributes, lambda key: bool(key.strip()), str
)
