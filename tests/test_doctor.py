"""`sightline doctor` against real failures: a closed port, a server that never answers,
a wrong token, a Prometheus without the target, a metrics port another service holds, a
shared directory others may write, a backend whose clock is off; and all ok when all is."""

from __future__ import annotations

import email.utils
import json
import os
import re
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from sightline_appliance import doctor as _doctor

from .helpers import free_port, wait_until
from .receivers import Backend
from .servers import ROOT, Prometheus, gunicorn, launcher, prometheus

RULE_FILES = sorted((ROOT / "alerts").glob("*.rules.yml"))


def doctor(env: dict[str, str], *args: str) -> tuple[int, dict[str, dict[str, str]], str]:
    """Run `sightline doctor --json` with ``env`` over a clean SIGHTLINE_*/OTEL_* slate;
    the exit code, the findings by check, and the text report of a second run."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SIGHTLINE_", "OTEL_"))}
    base.pop("PROMETHEUS_MULTIPROC_DIR", None)
    full = {**base, **env}
    command = [*launcher(), "doctor", *args]
    result = subprocess.run(
        [*command, "--json"], env=full, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    report = json.loads(result.stdout)
    text = subprocess.run(command, env=full, capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert text.returncode == result.returncode
    findings = {f["check"]: f for f in report["checks"]}
    assert report["status"] == ["ok", "warning", "error"][result.returncode]
    return result.returncode, findings, text.stdout


@pytest.fixture
def backends() -> Iterator[tuple[Backend, Backend]]:
    """An OTLP endpoint and a Loki, both wanting a token."""
    otlp, loki = Backend().start(), Backend().start()
    otlp.authorization = "Bearer otlp-secret"
    loki.authorization = "Bearer loki-secret"
    yield otlp, loki
    otlp.stop()
    loki.stop()


def settings(otlp: Backend, loki: Backend, metrics: int, **extra: str) -> dict[str, str]:
    return {
        "SIGHTLINE_SERVICE": "shop",
        "SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{metrics}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer otlp-secret",
        "SIGHTLINE_LOKI_URL": loki.url,
        "SIGHTLINE_LOKI_TOKEN": "loki-secret",
        **extra,
    }


def test_all_ok_when_the_app_is_served_scraped_and_every_backend_accepts(
    backends: tuple[Backend, Backend], tmp_path: Path
) -> None:
    """With the app running on its metrics port, Prometheus scraping it and both backends
    taking the app's credentials, every check is ok and the exit code is 0; the test
    writes are an OTLP request with no spans and one labelled Loki line."""
    otlp, loki = backends
    port = free_port()
    env = {"SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{port}"}
    with (
        gunicorn("tests.apps.flask_app:app", env, ["--workers", "2"], tmp_path),
        prometheus(tmp_path, {"shop": f"127.0.0.1:{port}"}, RULE_FILES) as prom,
    ):
        assert wait_until(lambda: _up(prom, "shop") and _ruled(prom), timeout=20)
        code, found, text = doctor(settings(otlp, loki, port), "--prometheus", prom.url)
    assert code == 0, text
    assert {f["status"] for f in found.values()} == {"ok"}, text
    assert set(found) == {
        "settings", "metrics port", "traces", "logs", "prometheus", "rules", "multiprocess",
        "clock", "packages",
    }  # fmt: skip
    groups = len({g for path in RULE_FILES for g in re.findall(r"- name: (\S+)", path.read_text())})
    assert f"evaluates all {groups} rule groups" in found["rules"]["message"]
    assert "serves this service's metrics" in found["metrics port"]["message"]
    assert f"scrapes http://127.0.0.1:{port}/metrics (up" in found["prometheus"]["message"]
    assert found["clock"]["message"].startswith("within 5 s of 3 backend(s)")
    assert [len(r.resource_spans) for r in otlp.trace_requests] == [0, 0]  # two runs
    lines = [line for labels, _ts, line, _meta in loki.log_entries()]
    assert len(lines) == 2
    assert lines[0].startswith("sightline doctor: test write from ")
    assert {labels["source"] for labels, *_ in loki.log_entries()} == {"sightline-doctor"}


def test_each_real_failure_is_an_error_with_its_fix(
    backends: tuple[Backend, Backend], tmp_path: Path
) -> None:
    """A wrong OTLP token, a Loki that never answers, a Prometheus with no target for the
    service, another service on the metrics port and a shared directory others may write
    are each an error whose fix names the setting to change; exit code 2, in bounded
    time."""
    otlp, loki = backends
    loki.hang.set()
    port = free_port()
    shared = tmp_path / "shared"
    (shared / "sightline").mkdir(parents=True)
    os.chmod(shared / "sightline", 0o777)
    env = settings(
        otlp,
        loki,
        port,
        SIGHTLINE_SERVICE="checkout",
        OTEL_EXPORTER_OTLP_HEADERS="authorization=Bearer wrong",
        SIGHTLINE_LOKI_TIMEOUT="1",
        PROMETHEUS_MULTIPROC_DIR=str(shared),
    )
    app_env = {"SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{port}"}
    with (
        gunicorn("tests.apps.flask_app:app", app_env, [], tmp_path),
        prometheus(tmp_path, {"shop": f"127.0.0.1:{port}"}) as prom,
    ):
        assert wait_until(lambda: _up(prom, "shop"), timeout=20)
        started = time.monotonic()
        code, found, text = doctor(env, "--prometheus", prom.url)
        took = time.monotonic() - started
    assert code == 2, text
    assert took < 30
    expect = {
        "traces": ("HTTP 401 from", "OTEL_EXPORTER_OTLP_HEADERS"),
        "logs": ("no answer from", "SIGHTLINE_LOKI_TIMEOUT"),
        "prometheus": ("has no target with job='checkout' (its jobs: shop)", "job: checkout"),
        "metrics port": ("held by the service 'shop'", "SIGHTLINE_METRICS_ADDR=127.0.0.1:"),
        "multiprocess": ("is refused", "PROMETHEUS_MULTIPROC_DIR"),
    }
    for check, (message, fix) in expect.items():
        assert found[check]["status"] == "error", (check, text)
        assert message in found[check]["message"], (check, text)
        assert fix in found[check]["fix"], (check, text)
    assert "fix: the endpoint wants credentials" in text


def test_closed_port_is_an_error_and_a_skewed_clock_a_warning(
    backends: tuple[Backend, Backend], tmp_path: Path
) -> None:
    """An OTLP endpoint nobody listens on is an error naming the address; a backend whose
    Date is two minutes ahead makes the clock check a warning that says by how much."""
    otlp, loki = backends
    loki.clock_offset = 120
    closed = free_port()
    env = settings(
        otlp, loki, free_port(), OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{closed}"
    )
    code, found, text = doctor(env, "--prometheus", f"http://127.0.0.1:{free_port()}")
    assert code == 2, text
    assert found["traces"]["status"] == "error"
    assert f"cannot reach http://127.0.0.1:{closed}/v1/traces" in found["traces"]["message"]
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in found["traces"]["fix"]
    assert found["clock"]["status"] == "warning", text
    assert "clock is 120 s behind" in found["clock"]["message"] or (
        "clock is 119 s behind" in found["clock"]["message"]
    ), text
    assert found["prometheus"]["status"] == "warning"  # no Prometheus there: named, not fatal
    assert "--prometheus URL" in found["prometheus"]["fix"]


def test_a_service_scraped_without_the_service_label_is_a_warning_naming_the_relabelling(
    backends: tuple[Backend, Backend], tmp_path: Path
) -> None:
    """A Prometheus that scrapes the service with a scrape config lacking the
    sightline="service" relabelling (its targets up and scraped) makes the prometheus
    check a warning that names the label, the alerts the service misses and the
    relabelling to add; exit code 1."""
    otlp, loki = backends
    port = free_port()
    env = {"SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{port}"}
    with (
        gunicorn("tests.apps.flask_app:app", env, [], tmp_path),
        prometheus(tmp_path, {"shop": f"127.0.0.1:{port}"}, RULE_FILES, services=False) as prom,
    ):
        assert wait_until(lambda: _up(prom, "shop") and _ruled(prom), timeout=20)
        code, found, text = doctor(settings(otlp, loki, port), "--prometheus", prom.url)
    assert code == 1, text
    assert found["prometheus"]["status"] == "warning", text
    message, fix = found["prometheus"]["message"], found["prometheus"]["fix"]
    assert f'scrapes http://127.0.0.1:{port}/metrics without the label sightline="service"' in (
        message
    )
    assert "no SightlineServiceDown, no replica count" in message
    assert "target_label: sightline, replacement: service" in fix
    others = {name: f["status"] for name, f in found.items() if name != "prometheus"}
    assert set(others.values()) == {"ok"}, text


def test_an_invalid_setting_is_an_error_naming_it() -> None:
    """A setting that does not parse is the one error reported, naming the variable and
    the bad value; exit code 2."""
    code, found, _text = doctor({"SIGHTLINE_MAX_SERIES": "lots"})
    assert code == 2
    assert found["settings"]["status"] == "error"
    assert "SIGHTLINE_MAX_SERIES" in found["settings"]["message"]
    assert "'lots'" in found["settings"]["message"]
    assert set(found) == {"settings", "packages"}


def _ruled(prom: Prometheus) -> bool:
    """Prometheus has loaded the rule files it was given."""
    return bool(prom.get("/api/v1/rules")["groups"])


def test_rules_missing_where_they_should_run_are_a_warning_and_rules_names_the_ruler(
    tmp_path: Path,
) -> None:
    """The rules check, against real Prometheus servers: one that loads none of
    Sightline's rules is a warning saying what stays empty and how to load them or name
    the ruler; one that remote-writes and runs no rules (long-term storage) is a warning
    naming --rules and the stack's vmalert; with --rules naming one that runs them (as
    vmalert would) it is ok; one lacking some groups is a warning counting them; one whose
    rule fails at evaluation is a warning naming the rule and the error."""
    port = free_port()
    env = {
        "SIGHTLINE_SERVICE": "shop",
        "SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{port}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "SIGHTLINE_LOKI_URL": f"http://127.0.0.1:{free_port()}",
    }
    # One shipped group replaced by one of the same name whose rule cannot be evaluated:
    # the right side matches two series for the one on the left.
    broken = tmp_path / "broken.rules.yml"
    broken.write_text(
        "groups:\n  - name: sightline.agent.alerts\n    rules:\n"
        "      - record: broken:rule:sum\n"
        "        expr: vector(1) * on ()\n"
        '          (vector(1) or label_replace(vector(1), "a", "b", "", ""))\n'
    )
    others = [path for path in RULE_FILES if path.name != "agent.rules.yml"]
    for name in ("bare", "writer", "ruler", "partial", "failing"):
        (tmp_path / name).mkdir()
    dead = f"http://127.0.0.1:{free_port()}/api/v1/write"
    with (
        prometheus(tmp_path / "bare", {}) as bare,
        prometheus(tmp_path / "writer", {}, remote_write=dead) as writer,
        prometheus(tmp_path / "ruler", {}, RULE_FILES) as ruler,
        prometheus(tmp_path / "partial", {}, RULE_FILES[:1]) as partial,
        prometheus(tmp_path / "failing", {}, [*others, broken]) as failing,
    ):
        evaluated = lambda: any(  # noqa: E731
            r.get("lastError") for g in failing.get("/api/v1/rules")["groups"] for r in g["rules"]
        )
        assert wait_until(lambda: _ruled(ruler) and _ruled(partial) and evaluated(), timeout=20)
        _, found, _ = doctor(env, "--prometheus", bare.url)
        rules = found["rules"]
        assert rules["status"] == "warning", rules
        assert f"the rules' evaluator at {bare.url} evaluates none of" in rules["message"]
        assert "recorded panels, the alerts and the hints stay empty" in rules["message"]
        assert "rule_files" in rules["fix"]
        assert "--rules URL" in rules["fix"]
        _, found, _ = doctor(env, "--prometheus", writer.url)
        assert found["rules"]["status"] == "warning", found["rules"]
        assert "runs no rules and remote-writes its series" in found["rules"]["message"]
        assert "--rules URL (the stack's vmalert: http://127.0.0.1:8880)" in found["rules"]["fix"]
        _, found, _ = doctor(env, "--prometheus", bare.url, "--rules", ruler.url)
        assert found["rules"]["status"] == "ok", found["rules"]
        _, found, _ = doctor(env, "--prometheus", bare.url, "--rules", partial.url)
        assert found["rules"]["status"] == "warning", found["rules"]
        groups = len(re.findall(r"- name: ", "".join(p.read_text() for p in RULE_FILES)))
        first = len(re.findall(r"- name: ", RULE_FILES[0].read_text()))
        assert (
            f"lacks {groups - first} of Sightline's {groups} rule groups"
            in (found["rules"]["message"])
        )
        _, found, _ = doctor(env, "--prometheus", bare.url, "--rules", failing.url)
        assert found["rules"]["status"] == "warning", found["rules"]
        assert "1 of Sightline's rules fail" in found["rules"]["message"]
        assert "first broken:rule:sum: " in found["rules"]["message"]


def _up(prom: Prometheus, job: str) -> bool:
    targets: list[dict[str, Any]] = prom.get("/api/v1/targets")["activeTargets"]
    return any(t["labels"].get("job") == job and t["health"] == "up" for t in targets)


def test_traces_check_uses_the_apps_tls_settings(tmp_path: Path) -> None:
    """Against an HTTPS endpoint signed by a private CA, the traces check fails naming
    OTEL_EXPORTER_OTLP_CERTIFICATE until that setting names the CA, and then (with the
    client certificate the endpoint requires) succeeds."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost", "127.0.0.1").configure_cert(context)
    ca.configure_trust(context)
    context.verify_mode = ssl.CERT_REQUIRED
    client = ca.issue_cert("shop@example.com")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    client.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    client.private_key_pem.write_to_path(str(tmp_path / "client.key"))
    backend = Backend(tls=context).start()
    try:
        env = {"SIGHTLINE_SERVICE": "shop", "OTEL_EXPORTER_OTLP_ENDPOINT": backend.url}
        _code, found, _text = doctor(env)
        assert found["traces"]["status"] == "error"
        assert "cannot trust" in found["traces"]["message"]
        assert "OTEL_EXPORTER_OTLP_CERTIFICATE" in found["traces"]["message"]
        env |= {
            "OTEL_EXPORTER_OTLP_CERTIFICATE": str(tmp_path / "ca.pem"),
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(tmp_path / "client.pem"),
            "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(tmp_path / "client.key"),
        }
        _code, found, _text = doctor(env)
        assert found["traces"]["status"] == "ok", found["traces"]
        assert backend.client_certificates
    finally:
        backend.stop()


def test_prometheus_times_and_durations_parse_as_prometheus_writes_them() -> None:
    """Last-scrape times with or without a fraction of a second and Go's zero time, and
    scrape intervals written as Prometheus durations, are read right."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now - 30))
    for written in (f"{stamp}Z", f"{stamp}.123456789Z", f"{stamp}.5+00:00"):
        age = _doctor._age(written)
        assert age is not None
        assert 29 <= age <= 32, written
    assert _doctor._age("0001-01-01T00:00:00Z") is None
    assert _doctor._age("yesterday") is None
    durations = {"15s": 15, "1m30s": 90, "500ms": 0.5, "1d": 86400, "2h": 7200}
    for written, seconds in durations.items():
        assert _doctor._seconds(written) == seconds
    assert _doctor._seconds("15 s") is None


def test_clock_compares_each_date_with_the_time_it_arrived() -> None:
    """A backend's Date is compared with this machine's time when the answer came, not
    when the report is written: a slow check later does not read as skew."""
    arrived = float(int(time.time()) - 20)  # an answer 20 s before the report (whole s)
    same = email.utils.formatdate(arrived, usegmt=True)
    assert _doctor.clock([("http://a", same, arrived)]).status == "ok"
    ahead = email.utils.formatdate(arrived + 120, usegmt=True)
    finding = _doctor.clock([("http://a", same, arrived), ("http://b", ahead, arrived)])
    assert finding.status == "warning"
    assert "120 s behind http://b's" in finding.message


def test_logs_switched_off_by_opentelemetry_are_not_tested_against_loki() -> None:
    """With OTEL_LOGS_EXPORTER=console (or OTEL_SDK_DISABLED) the agent ships no logs, so
    an unreachable Loki is no error; the finding says what switched shipping off."""
    env = {
        "SIGHTLINE_SERVICE": "shop",
        "SIGHTLINE_LOKI_URL": f"http://127.0.0.1:{free_port()}",
        "SIGHTLINE_TRACES": "false",
    }
    for switch, value in (("OTEL_LOGS_EXPORTER", "console"), ("OTEL_SDK_DISABLED", "true")):
        _code, found, _text = doctor({**env, switch: value})
        assert found["logs"]["status"] == "ok"
        assert f"not shipped ({switch}={value})" in found["logs"]["message"]


def test_a_damaged_native_stack_state_is_said_once_and_the_defaults_named(
    tmp_path: Path,
) -> None:
    """When the native stack's state file cannot be read, `sightline doctor` and `sightline
    hints` say so once on standard error, naming the file and the option that names the
    server, and then use the compose stack's address instead of failing."""
    state = tmp_path / "sightline" / "stack" / "stack.json"
    state.parent.mkdir(parents=True)
    base = {k: v for k, v in os.environ.items() if not k.startswith(("SIGHTLINE_", "OTEL_"))}
    env = {
        **base,
        "XDG_STATE_HOME": str(tmp_path),
        "SIGHTLINE_SERVICE": "shop",
        "SIGHTLINE_METRICS_ADDR": "off",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
        "SIGHTLINE_LOKI_URL": f"http://127.0.0.1:{free_port()}",
    }
    # Not JSON, and JSON of the wrong shape.
    for damage, command in (("{not json", ["doctor", "--json"]), ('{"ports": [1]}', ["hints"])):
        state.write_text(damage)
        result = subprocess.run(
            [*launcher(), *command], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
        )
        assert "Traceback" not in result.stderr, result.stderr
        said = [line for line in result.stderr.splitlines() if "stack.json" in line]
        assert len(said) == 1, result.stderr
        assert f"{state} is damaged" in said[0], said
        assert "--prometheus" in said[0]
        assert "http://127.0.0.1:9090" in result.stdout + result.stderr, result
