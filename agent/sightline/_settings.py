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
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Any

INTEGRATION_NAMES = ("flask", "gunicorn")


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
    exemplars: bool
    integrations: tuple[str, ...]
    disabled_integrations: tuple[str, ...]

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
                values[name] = resource[key]
        if "environment" not in explicit:
            values["environment"] = resource.get(
                "deployment.environment.name", resource.get("deployment.environment", "")
            )
        # Serving metrics from the app replaces the background server unless both are asked for.
        if values["metrics_path"] and "metrics_addr" not in explicit:
            values["metrics_addr"] = None
        return cls(**values)


def _cast(var: str, spec: _Spec, raw: str) -> Any:
    try:
        return spec.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"invalid {var}={raw!r}: {exc}") from None


def _cast_override(name: str, spec: _Spec, value: Any) -> Any:
    if isinstance(value, bool):
        raw = "true" if value else "false"
    elif isinstance(value, (list, tuple)) and name in ("integrations", "disabled_integrations"):
        raw = ",".join(str(v) for v in value)
    elif isinstance(value, (str, int)):
        raw = str(value)
    else:
        raise ConfigError(f"invalid {name}={value!r}: expected a string or number")
    if isinstance(value, bool) and spec.parse is not _bool:
        raise ConfigError(f"invalid {name}={value!r}: not a yes/no setting")
    try:
        return spec.parse(raw)
    except ValueError as exc:
        raise ConfigError(f"invalid {name}={value!r}: {exc}") from None
