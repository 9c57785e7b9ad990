"""``sightline doctor``: is this app's telemetry going where it should?

Run from the app's environment (its ``SIGHTLINE_*`` and ``OTEL_*`` variables), it checks
what the agent would do and what it would meet: the settings, the metrics port, the OTLP
and Loki endpoints (a real, harmless write, with the app's credentials and TLS), whether
Prometheus scrapes this service, the directory the workers of a server share, the clock
against the backends', and the packages installed. Each check ends ok, warning or error,
with the fix in one line. The exit code is 0, 1 or 2 for the worst of them.
"""

from __future__ import annotations

import email.utils
import errno
import http.client
import json
import os
import re
import socket
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from sightline import _port
from sightline._export import PushError
from sightline._settings import ConfigError, Settings
from sightline._store import Refused, Store

from .stack import Stack, StackError, default_dir

OK, WARNING, ERROR = "ok", "warning", "error"
_RANK = {OK: 0, WARNING: 1, ERROR: 2}
#: Clock differences below this are Date headers' one-second resolution and network time.
SKEW_WARNING = 5.0
#: The target label that makes a scrape job's targets an application service to the
#: rules (targets.rules.yml), set by the stack's `apps` job and the Kubernetes monitors.
MARKER, MARKER_VALUE = "sightline", "service"


@dataclass(frozen=True)
class Finding:
    check: str
    status: str  # ok, warning, error
    message: str
    fix: str = ""


@dataclass
class Doctor:
    environ: Mapping[str, str]
    overrides: Mapping[str, Any]
    prometheus: str
    dates: list[tuple[str, str, float]]  # (backend, its Date header, our time then)
    service: str = ""
    #: What evaluates Sightline's rules: Prometheus, or vmalert or another ruler.
    rules: str = ""
    #: Whether the user named it (--rules) rather than it being taken by default.
    rules_named: bool = False

    def run(self) -> list[Finding]:
        try:
            settings = Settings.load(self.environ, self.overrides)
            self.service = settings.service
        except ConfigError as exc:
            return [
                Finding("settings", ERROR, str(exc), "correct or unset that setting"),
                packages(),
            ]
        if settings.disabled:
            found = [
                Finding(
                    "settings",
                    WARNING,
                    "SIGHTLINE_DISABLED is set: the agent does nothing in this environment",
                    "unset SIGHTLINE_DISABLED to measure this app",
                )
            ]
        else:
            found = [Finding("settings", OK, summary(settings))]
        checks: tuple[tuple[str, Callable[[Settings], Finding]], ...] = (
            ("metrics port", metrics_port),
            ("traces", self.traces),
            ("logs", self.logs),
            ("prometheus", self.scraped),
            ("rules", self.rules_loaded),
            ("multiprocess", self.multiprocess_dir),
        )
        for name, check in checks:
            try:
                found.append(check(settings))
            except Exception as exc:  # a check that breaks is a finding, not a traceback
                found.append(Finding(name, ERROR, f"the check itself failed: {exc!r}"))
        found.append(clock(self.dates))
        found.append(packages())
        return found

    # -- the backends: a real write each, as the agent would make it

    def traces(self, settings: Settings) -> Finding:
        if not settings.exports_traces:
            off = (
                "SIGHTLINE_TRACES=false"
                if not settings.traces
                else "OTEL_SDK_DISABLED=true"
                if settings.sdk_disabled
                else f"OTEL_TRACES_EXPORTER={settings.traces_exporter}"
            )
            return Finding("traces", OK, f"off ({off})")
        from sightline.tracing import otlp_endpoint

        endpoint = otlp_endpoint(settings)
        # An export request with no spans: a valid OTLP write that stores nothing.
        return self._write("traces", endpoint, b"", "application/x-protobuf", _OTLP_FIXES)

    def logs(self, settings: Settings) -> Finding:
        if not settings.logs or not settings.ships_logs:
            why = (
                "SIGHTLINE_LOGS=false"
                if not settings.logs
                else "SIGHTLINE_LOKI_URL is not set"
                if not settings.loki_url
                else "OTEL_SDK_DISABLED=true"
                if settings.sdk_disabled
                else f"OTEL_LOGS_EXPORTER={settings.logs_exporter}"
            )
            return Finding("logs", OK, f"not shipped ({why})")
        from sightline.logs import loki_endpoint

        endpoint = loki_endpoint(settings)
        line = f"sightline doctor: test write from {socket.gethostname()}"
        body = {
            "streams": [
                {
                    "stream": {"service_name": settings.service, "source": "sightline-doctor"},
                    "values": [[str(time.time_ns()), line]],
                }
            ]
        }
        payload = json.dumps(body).encode()
        return self._write("logs", endpoint, payload, "application/json", _LOKI_FIXES)

    def _write(
        self,
        check: str,
        endpoint: Any,
        body: bytes,
        content_type: str,
        fixes: Mapping[str, str],
    ) -> Finding:
        try:
            endpoint.post(body, content_type, endpoint.timeout)
        except PushError as exc:
            if endpoint.date:
                self.dates.append((endpoint.url, endpoint.date, time.time()))
            key = str(exc.status) if str(exc.status) in fixes else exc.reason
            return Finding(check, ERROR, str(exc), fixes.get(key, fixes["other"]))
        finally:
            endpoint.close()
        if endpoint.date:
            self.dates.append((endpoint.url, endpoint.date, time.time()))
        return Finding(check, OK, f"{endpoint.url} accepted a test write")

    def multiprocess_dir(self, settings: Settings) -> Finding:
        if settings.multiprocess == "off":
            return Finding("multiprocess", OK, "off (SIGHTLINE_MULTIPROCESS=off)")
        explicit = self.environ.get("PROMETHEUS_MULTIPROC_DIR")
        parent, name = (
            (Path(explicit), "sightline")
            if explicit
            else (Path(tempfile.gettempdir()), f"sightline-{os.geteuid()}")
        )
        try:
            Store.open(parent, name).close()
        except Refused as exc:
            setting = "PROMETHEUS_MULTIPROC_DIR" if explicit else "TMPDIR"
            return Finding(
                "multiprocess",
                ERROR,
                f"the workers' shared directory {parent / name} is refused: {exc}",
                f"use a directory only you can write (chmod 0700), or set {setting} to one",
            )
        return Finding("multiprocess", OK, f"{parent / name} is private and usable")

    # -- Prometheus

    def scraped(self, settings: Settings) -> Finding:
        service = settings.service
        where = f"Prometheus at {self.prometheus}"
        try:
            data = _get_json(f"{self.prometheus}/api/v1/targets?state=active", self.dates)
            targets = data["data"]["activeTargets"]
        except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException) as exc:
            return Finding(
                "prometheus",
                WARNING,
                f"no answer from {where}: {exc}",
                "name the Prometheus that should scrape this app with --prometheus URL",
            )
        ours = [t for t in targets if t.get("labels", {}).get("job") == service]
        if not ours:
            jobs = ", ".join(sorted({t.get("labels", {}).get("job", "") for t in targets}))
            return Finding(
                "prometheus",
                ERROR,
                f"{where} has no target with job={service!r} (its jobs: {jobs or 'none'})",
                f"add a targets file naming the metrics port with `job: {service}`"
                + _targets_hint(self.prometheus),
            )
        if all(t.get("health") == "unknown" for t in ours):
            return Finding(
                "prometheus",
                WARNING,
                f"{where} has the target {ours[0].get('scrapeUrl')} but has not scraped it yet",
                "run the doctor again after one scrape interval",
            )
        down = [t for t in ours if t.get("health") == "down"]
        if down:
            target = down[0]
            return Finding(
                "prometheus",
                ERROR,
                f"{where} cannot scrape {target.get('scrapeUrl')}: "
                f"{target.get('lastError') or target.get('health')}",
                "start the app, or make the target's address its SIGHTLINE_METRICS_ADDR",
            )
        unmarked = [t for t in ours if t.get("labels", {}).get(MARKER) != MARKER_VALUE]
        if unmarked:
            return Finding(
                "prometheus",
                WARNING,
                f"{where} scrapes {unmarked[0].get('scrapeUrl')} without the label "
                f'{MARKER}="{MARKER_VALUE}": the target and scaling rules do not take '
                f"{service!r} for a service (no SightlineServiceDown, no replica count)",
                f"add to its scrape config `relabel_configs: [{{target_label: {MARKER}, "
                f"replacement: {MARKER_VALUE}}}]`, or to its PodMonitor or ServiceMonitor "
                f"endpoint `relabelings: [{{targetLabel: {MARKER}, replacement: "
                f"{MARKER_VALUE}}}]` (docs/alerts.md)",
            )
        ages = [_age(t.get("lastScrape", "")) for t in ours]
        known = [age for age in ages if age is not None]
        age = max(known) if known else None
        urls = ", ".join(str(t.get("scrapeUrl")) for t in ours)
        interval = _seconds(ours[0].get("scrapeInterval", "")) or 60.0
        if age is not None and age > 3 * interval:
            return Finding(
                "prometheus",
                WARNING,
                f"{where} last scraped {urls} {age:.0f} s ago (every {interval:.0f} s expected)",
                "check Prometheus's log: it may be overloaded or stopped",
            )
        ago = f", last {age:.0f} s ago" if age is not None else ""
        return Finding("prometheus", OK, f"{where} scrapes {urls} (up{ago})")

    def rules_loaded(self, settings: Settings) -> Finding:
        """Every rule group Sightline ships is loaded where the rules run, and none fails:
        without them the dashboards' recorded panels, the alerts and the hints are empty."""
        from .rules import RulesError, load_groups

        ruler = (self.rules or self.prometheus).rstrip("/")
        where = f"the rules' evaluator at {ruler}"
        fix = (
            "load Sightline's alerts/*.rules.yml there (rule_files; `sightline rules export` "
            "for the Prometheus Operator or Mimir), or name the ruler that runs them with "
            "--rules URL"
        )
        try:
            shipped = [str(g["name"]) for g in load_groups()]
        except RulesError as exc:
            return Finding("rules", WARNING, f"this installation's rule files: {exc}")
        try:
            data = _get_json(f"{ruler}/api/v1/rules", self.dates)
            groups = {g["name"]: g for g in data["data"]["groups"] if isinstance(g, dict)}
        except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException) as exc:
            return Finding(
                "rules",
                WARNING,
                f"no answer from {where}: {exc}",
                "start it, or name the one that runs Sightline's rules with --rules URL "
                "(a ruler that wants credentials, as Mimir's, cannot be checked here)",
            )
        if not groups and not self.rules_named and _remote_writes(ruler, self.dates):
            # Long-term storage: this Prometheus writes its series to a store whose ruler
            # (vmalert under longterm.yml) runs the rules; which one, it cannot tell.
            return Finding(
                "rules",
                WARNING,
                f"Prometheus at {ruler} runs no rules and remote-writes its series: the rules "
                "run elsewhere, on a ruler this check was not named",
                "name it with --rules URL (the stack's vmalert: http://127.0.0.1:8880)",
            )
        missing = [name for name in shipped if name not in groups]
        if len(missing) == len(shipped):
            return Finding(
                "rules",
                WARNING,
                f"{where} evaluates none of Sightline's {len(shipped)} rule groups: the "
                "dashboards' recorded panels, the alerts and the hints stay empty",
                fix,
            )
        if missing:
            return Finding(
                "rules",
                WARNING,
                f"{where} lacks {len(missing)} of Sightline's {len(shipped)} rule groups "
                f"({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}): a copy "
                "of the rule files from another version?",
                "load this version's alerts/*.rules.yml there",
            )
        failing = [
            (rule.get("name", ""), str(rule.get("lastError") or ""))
            for name in shipped
            for rule in groups[name].get("rules") or []
            if isinstance(rule, dict) and (rule.get("lastError") or rule.get("health") == "err")
        ]
        if failing:
            rule, error = failing[0]
            return Finding(
                "rules",
                WARNING,
                f"{len(failing)} of Sightline's rules fail at {where}, first {rule}: {error}",
                "see that rule on the evaluator's rules page; a store lacking a function "
                "or a series name clash is the usual cause",
            )
        return Finding("rules", OK, f"{where} evaluates all {len(shipped)} rule groups")


# -- checks that need no network


def summary(settings: Settings) -> str:
    metrics = (
        f"{settings.metrics_addr[0]}:{settings.metrics_addr[1]}"
        if settings.metrics_addr
        else "not served"
    )
    return f"valid: service {settings.service!r}, metrics {metrics}"


def metrics_port(settings: Settings) -> Finding:
    if settings.metrics_addr is None:
        return Finding(
            "metrics port",
            OK,
            "not served by the agent: the app serves its metrics (SIGHTLINE_METRICS_PATH) "
            "or none (SIGHTLINE_METRICS_ADDR=off)",
        )
    host, port = settings.metrics_addr
    problem = _bind_error(host, port)
    if problem is None:
        return Finding("metrics port", OK, f"{host}:{port} is free for this service")
    if problem != errno.EADDRINUSE:
        return Finding(
            "metrics port",
            ERROR,
            f"cannot listen on {host}:{port}: {os.strerror(problem)}",
            "set SIGHTLINE_METRICS_ADDR to an address of this machine and a port this user "
            "may bind (1024 or above unless root)",
        )
    served = _port.served_service(host, port)
    if served == settings.service:
        return Finding("metrics port", OK, f"{host}:{port} serves this service's metrics")
    free = next(
        (p for p in range(port + 1, min(port + 100, 65536)) if _bind_error(host, p) is None),
        None,
    )
    fix = (
        f"give this service its own port: SIGHTLINE_METRICS_ADDR={host}:{free}"
        if free
        else "give this service its own port with SIGHTLINE_METRICS_ADDR"
    )
    return Finding(
        "metrics port",
        ERROR,
        f"{host}:{port} is {_port.describe(host, port, settings.service)}",
        fix,
    )


def clock(dates: list[tuple[str, str, float]]) -> Finding:
    skews = []
    for backend, header, ours in dates:
        try:
            theirs = email.utils.parsedate_to_datetime(header).timestamp()
        except (TypeError, ValueError):
            continue
        skews.append((theirs - ours, backend))
    if not skews:
        return Finding("clock", OK, "no backend answered with its time (Date header)")
    skew, backend = max(skews, key=lambda item: abs(item[0]))
    if abs(skew) > SKEW_WARNING:
        ahead = "behind" if skew > 0 else "ahead of"
        return Finding(
            "clock",
            WARNING,
            f"this machine's clock is {abs(skew):.0f} s {ahead} {backend}'s: "
            "spans and log lines land at the wrong times",
            "synchronise the clocks (NTP: timedatectl set-ntp true)",
        )
    backends = len({backend for _, backend in skews})  # a backend asked twice counts once
    return Finding("clock", OK, f"within {SKEW_WARNING:.0f} s of {backends} backend(s)")


_PACKAGES = (
    "sightline",
    "opentelemetry-sdk",
    "opentelemetry-api",
    "prometheus-client",
    "flask",
    "django",
    "fastapi",
    "starlette",
    "litestar",
    "quart",
    "celery",
    "rq",
    "gunicorn",
    "uvicorn",
    "hypercorn",
)


def packages() -> Finding:
    """The versions that matter, and any requirement of Sightline they do not meet."""
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    unmet = []
    try:
        from packaging.requirements import Requirement

        for spec in metadata.requires("sightline") or ():
            requirement = Requirement(spec)
            if requirement.marker is not None:
                continue  # an extra's requirement
            try:
                have = metadata.version(requirement.name)
            except metadata.PackageNotFoundError:
                unmet.append(f"{requirement.name} missing")
                continue
            if not requirement.specifier.contains(have, prereleases=True):
                unmet.append(f"{requirement.name} {have} (needs {requirement.specifier})")
    except (ImportError, metadata.PackageNotFoundError):
        pass  # no `packaging` or no installed metadata: versions only
    listed = ", ".join(f"{name} {version}" for name, version in found.items())
    if unmet:
        return Finding(
            "packages",
            WARNING,
            f"{'; '.join(unmet)}; installed: {listed}",
            "pip install --upgrade sightline (it pulls in what it was tested with)",
        )
    return Finding("packages", OK, listed)


# -- helpers


_OTLP_FIXES = {
    "connection": "start the Collector or Tempo (sightline stack up), or point "
    "OTEL_EXPORTER_OTLP_ENDPOINT at yours",
    "timeout": "the endpoint accepts connections but does not answer in time: check it, "
    "or raise OTEL_EXPORTER_OTLP_TIMEOUT",
    "401": "the endpoint wants credentials: set them in OTEL_EXPORTER_OTLP_HEADERS "
    "(e.g. authorization=Bearer TOKEN)",
    "403": "the credentials in OTEL_EXPORTER_OTLP_HEADERS are refused: check them",
    "404": "nothing takes OTLP at that path: OTEL_EXPORTER_OTLP_ENDPOINT is the base URL "
    "(/v1/traces is added); OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is the full one",
    "tls": "see the message: OTEL_EXPORTER_OTLP_CERTIFICATE names the CA to trust",
    "other": "check the endpoint in OTEL_EXPORTER_OTLP_ENDPOINT and its logs",
}

_LOKI_FIXES = {
    "connection": "start Loki (sightline stack up), or point SIGHTLINE_LOKI_URL at yours",
    "timeout": "Loki accepts connections but does not answer in time: check it, or raise "
    "SIGHTLINE_LOKI_TIMEOUT",
    "401": "Loki wants credentials: set SIGHTLINE_LOKI_TOKEN, or SIGHTLINE_LOKI_USERNAME "
    "and SIGHTLINE_LOKI_PASSWORD",
    "403": "Loki refuses these credentials or this tenant: check SIGHTLINE_LOKI_TOKEN / "
    "SIGHTLINE_LOKI_USERNAME / SIGHTLINE_LOKI_TENANT",
    "404": "no Loki push API at that URL: SIGHTLINE_LOKI_URL is Loki's base URL",
    "tls": "see the message: SIGHTLINE_LOKI_CERTIFICATE names the CA to trust",
    "other": "check SIGHTLINE_LOKI_URL and Loki's log",
}


def _off(settings: Settings, *switches: tuple[str, str]) -> str:
    for attribute, setting in switches:
        value = getattr(settings, attribute)
        if (attribute == "traces" and not value) or (attribute != "traces" and value):
            return setting
    return ""


def _bind_error(host: str, port: int) -> int | None:
    """The errno binding ``host:port`` fails with, None when it can be had."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            return exc.errno or errno.EADDRINUSE
    return None


def _remote_writes(prometheus: str, dates: list[tuple[str, str, float]]) -> bool:
    """Whether the Prometheus at ``prometheus`` remote-writes (its loaded configuration)."""
    try:
        config = _get_json(f"{prometheus}/api/v1/status/config", dates)["data"]["yaml"]
    except (OSError, ValueError, KeyError, TypeError, http.client.HTTPException):
        return False
    return bool(re.search(r"^remote_write:", str(config), re.M))


def _get_json(url: str, dates: list[tuple[str, str, float]], timeout: float = 5.0) -> Any:
    # Prometheus on this machine is reached directly, never through a proxy.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=timeout) as response:
        date = response.headers.get("Date")
        if date:
            dates.append((url.split("/api/")[0], date, time.time()))
        return json.loads(response.read(16 << 20))


_RFC3339 = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)$")
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def _age(timestamp: str) -> float | None:
    """Seconds since an RFC 3339 time as Prometheus writes it (any fraction of a second;
    none when it is zero); None for Go's zero time (never scraped) or anything else."""
    match = _RFC3339.match(timestamp)
    if not match or timestamp.startswith("0001-"):
        return None
    zone = "+00:00" if match.group(2) == "Z" else match.group(2)
    when = datetime.fromisoformat(match.group(1) + zone)
    return max(0.0, time.time() - when.timestamp())


def _seconds(duration: str) -> float | None:
    """A Prometheus duration (``15s``, ``1m30s``, ``500ms``, ``1d``) in seconds."""
    parts = _DURATION.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        return None
    return sum(int(n) * _UNITS[u] for n, u in parts)


def _targets_hint(prometheus: str) -> str:
    """Where the native stack's targets directory is, when ``prometheus`` is its."""
    stack = _native_stack()
    if stack is None:
        return ""
    port = stack.ports.get("prometheus:9090")
    if port and urllib.parse.urlsplit(prometheus).port == port:
        return f" in {stack.directory / 'targets'} (its README.md shows how)"
    return ""


def default_prometheus() -> str:
    """The native stack's Prometheus if one was set up here, else the usual address."""
    return default_url("prometheus", 9090)


def default_query_url() -> str:
    """Where the series are queried, the rules' included: the native stack's Prometheus,
    or under ``--longterm`` its long-term store (that Prometheus evaluates no rules)."""
    if _longterm():
        return default_url("victoriametrics", 8428)
    return default_prometheus()


def default_ruler() -> tuple[str, str]:
    """What evaluates the rules by default (their pending alerts, ``/api/v1/alerts``), its
    URL and name: the native stack's Prometheus, or vmalert under ``--longterm``."""
    if _longterm():
        return default_url("vmalert", 8880), "vmalert"
    return default_prometheus(), "Prometheus"


def _longterm() -> bool:
    stack = _native_stack()
    return stack is not None and stack.longterm


def default_url(service: str, port: int) -> str:
    """The native stack's ``service`` (listening on ``port`` in compose) if one was set up
    here, else ``port`` on this machine."""
    stack = _native_stack()
    if stack is not None:
        port = stack.ports.get(f"{service}:{port}", port)
    return f"http://127.0.0.1:{port}"


_unreadable: set[str] = set()


def _native_stack() -> Stack | None:
    """The native stack's state in the default directory (empty when none was set up),
    or None when it cannot be read: said once on standard error, since the defaults then
    taken may not be where that stack listens."""
    try:
        return Stack(default_dir())
    except Exception as exc:  # a damaged state file, whatever its damage
        if str(exc) not in _unreadable:
            _unreadable.add(str(exc))
            state = default_dir() / "stack.json"
            cause = str(exc) if isinstance(exc, StackError) else f"{state} is damaged ({exc})"
            print(
                f"sightline: {cause}. The native stack's ports are unknown: using the compose "
                "stack's defaults on 127.0.0.1; name the server with --prometheus "
                "(or --alertmanager)",
                file=sys.stderr,
            )
        return None


def worst(findings: list[Finding]) -> int:
    return max((_RANK[f.status] for f in findings), default=0)


def render(findings: list[Finding], service: str) -> str:
    lines = [f"sightline doctor · service {service!r}" if service else "sightline doctor"]
    for finding in findings:
        lines.append(f"{finding.status:<9}{finding.check:<14}{finding.message}")
        if finding.fix:
            lines.append(f"{'':<23}fix: {finding.fix}")
    counts = {s: sum(f.status == s for f in findings) for s in (ERROR, WARNING)}
    lines.append(f"{counts[ERROR]} error(s), {counts[WARNING]} warning(s)")
    return "\n".join(lines)


def main(
    environ: Mapping[str, str],
    overrides: Mapping[str, Any],
    prometheus: str | None,
    as_json: bool,
    out: Callable[[str], None] = print,
    rules: str | None = None,
) -> int:
    # The rules run where the scraping Prometheus is named, unless said otherwise; by
    # default, the native stack's evaluator (vmalert under --longterm).
    ruler = rules or prometheus or default_ruler()[0]
    doctor = Doctor(
        environ,
        overrides,
        prometheus or default_prometheus(),
        [],
        rules=ruler,
        rules_named=bool(rules),
    )
    findings = doctor.run()
    code = worst(findings)
    service = doctor.service
    if as_json:
        out(
            json.dumps(
                {
                    "service": service,
                    "status": {0: OK, 1: WARNING, 2: ERROR}[code],
                    "checks": [asdict(f) for f in findings],
                },
                indent=2,
            )
        )
    else:
        out(render(findings, str(service)))
    return code
