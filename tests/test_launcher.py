"""`sightline run -- COMMAND`: unmodified programs instrumented from the environment alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from .helpers import free_port
from .receivers import Backend
from .servers import ROOT, gunicorn, launcher, status_of, uvicorn


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def count_line(text: str, needle: str) -> float:
    """The value of the first exposition line containing every part of ``needle``."""
    parts = needle.split("*")
    for line in text.splitlines():
        if all(part in line for part in parts) and not line.startswith("#"):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_gunicorn_app_that_never_imports_sightline(tmp_path: Path, backend: Backend) -> None:
    """`sightline run -- gunicorn` on an app file with no Sightline in it: every worker has
    merged route metrics, spans reach the collector and logs are JSON with trace ids, in
    Loki too."""
    pytest.importorskip("gunicorn")
    pytest.importorskip("flask")
    metrics_port = free_port()
    prefix = [*launcher(), "run", "--service", "plain", "--"]
    env = {
        "SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "OTEL_EXPORTER_OTLP_ENDPOINT": backend.url,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "SIGHTLINE_LOKI_URL": backend.url,
        "TMPDIR": str(tmp_path),
    }
    log = tmp_path / "gunicorn.log"
    app, args = "tests.apps.plain_app:app", ["--workers", "2"]
    with gunicorn(app, env, args, tmp_path, prefix) as base:
        for uid in range(20):
            assert status_of(f"{base}/users/{uid}") == 200
        time.sleep(1.5)  # one snapshot interval: every worker's numbers are in
        text = scrape(metrics_port)
        assert (
            count_line(text, 'http_server_request_duration_seconds_count{*"/users/<int:uid>"') == 20
        )
        assert count_line(text, "server_workers_live") == 2
        assert backend.wait_for(lambda: len(backend.spans()) >= 21)
        assert backend.wait_for(lambda: len(backend.log_entries()) >= 20)
    names = {span.name for _, span in backend.spans()}
    assert "GET /users/<int:uid>" in names
    assert {resource["service.name"] for resource, _ in backend.spans()} == {"plain"}
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    looked_up = [line for line in lines if line.get("message") == "looked up user"]
    assert len(looked_up) == 20
    assert all(len(line["trace_id"]) == 32 and line["service"] == "plain" for line in looked_up)
    span_traces = {span.trace_id.hex() for _, span in backend.spans()}
    assert {line["trace_id"] for line in looked_up} <= span_traces
    loki = [entry for entry in backend.log_entries() if "looked up user" in entry[2]]
    assert len(loki) == 20
    assert all(entry[3]["trace_id"] in span_traces for entry in loki)


def test_uvicorn_workers_under_the_launcher(tmp_path: Path) -> None:
    """`sightline run -- uvicorn --workers 2`: init() runs in each worker, not the supervisor,
    and the workers' metrics are merged."""
    pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    metrics_port = free_port()
    env = {
        "SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "SIGHTLINE_TRACES": "false",
        "TMPDIR": str(tmp_path),
    }
    args = ["--workers", "2", "--factory"]
    prefix = [*launcher(), "run", "--"]
    with uvicorn("tests.apps.fastapi_routes:build", env, args, tmp_path, prefix) as base:
        for uid in range(10):
            assert status_of(f"{base}/users/{uid}") == 200
        time.sleep(1.5)
        text = scrape(metrics_port)
    assert count_line(text, 'http_server_request_duration_seconds_count{*"/users/{uid}"') == 10
    assert count_line(text, "server_workers_live") == 2
    assert count_line(text, "server_workers_configured") == 2


def run_python(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*launcher(), "run", "--", sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "SIGHTLINE_METRICS_ADDR": "off", **env},
    )


def test_plain_python_program(backend: Backend) -> None:
    """`sightline run -- python ...` instruments a script at start-up; its spans are
    flushed at exit."""
    pytest.importorskip("flask")
    result = run_python(
        """
        from werkzeug.test import Client
        from tests.apps.plain_app import app
        response = Client(app).get("/users/3")
        assert response.status_code == 200
        response.close()  # the request ends, as a server ends it
        """,
        {"OTEL_EXPORTER_OTLP_ENDPOINT": backend.url, "SIGHTLINE_SERVICE": "script"},
    )
    assert result.returncode == 0, result.stderr
    assert [span.name for _, span in backend.spans()] == ["GET /users/<int:uid>"]


def test_an_existing_sitecustomize_still_runs(tmp_path: Path) -> None:
    """A sitecustomize the environment had before is run after Sightline's."""
    (tmp_path / "sitecustomize.py").write_text("import builtins\nbuiltins.CUSTOMIZED = True\n")
    result = run_python(
        "import builtins, sys; print(getattr(builtins, 'CUSTOMIZED', False),"
        " 'sightline' in sys.modules)",
        {"PYTHONPATH": str(tmp_path), "SIGHTLINE_TRACES": "false", "SIGHTLINE_LOGS": "false"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["True", "True"]


def test_bad_settings_stop_the_launch() -> None:
    """Invalid settings are refused before the command runs, naming variable and value."""
    result = run_python("print('ran')", {"SIGHTLINE_MAX_SERIES": "lots"})
    assert result.returncode == 2
    assert "ran" not in result.stdout
    assert "SIGHTLINE_MAX_SERIES" in result.stderr
    assert "lots" in result.stderr


def test_a_missing_command_is_reported() -> None:
    """A command that does not exist ends the launcher with 127 and says why."""
    result = subprocess.run(
        [*launcher(), "run", "--", "no-such-program-here"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 127
    assert "cannot run no-such-program-here" in result.stderr


def script(
    code: str, env: dict[str, str], signum: int, disposition: signal.Handlers
) -> subprocess.Popen[str]:
    """The launcher running ``python -c code``, its stdout piped, started with ``signum``'s
    disposition set to ``disposition`` (signals ignored by the tests' own process, as under
    nohup, would otherwise be inherited)."""
    return subprocess.Popen(
        [*launcher(), "run", "--", sys.executable, "-c", textwrap.dedent(code)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env=env,
        preexec_fn=lambda: signal.signal(signum, disposition),
    )


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_signal_flushes_spans_and_logs_then_ends_the_program_by_it(
    backend: Backend, signum: int
) -> None:
    """A script under the launcher that is sent SIGTERM or SIGHUP while idle delivers its
    200 spans and 200 log lines first, then dies of that signal (exit status -signum)."""
    code = """
        import logging, sys, time
        from opentelemetry import trace
        tracer = trace.get_tracer("script")
        log = logging.getLogger("script")
        for i in range(200):
            with tracer.start_as_current_span(f"step {i}"):
                log.warning("step %d", i)
        print("ready", flush=True)
        time.sleep(60)
    """
    env = {
        **os.environ,
        "SIGHTLINE_METRICS_ADDR": "off",
        "SIGHTLINE_SERVICE": "script",
        "OTEL_EXPORTER_OTLP_ENDPOINT": backend.url,
        "OTEL_BSP_SCHEDULE_DELAY": "60000",  # nothing leaves before the signal
        "SIGHTLINE_LOKI_URL": backend.url,
    }
    with script(code, env, signum, signal.SIG_DFL) as proc:
        try:
            assert proc.stdout is not None
            while proc.stdout.readline().strip() != "ready":  # the JSON lines come first
                pass
            assert backend.spans() == []
            proc.send_signal(signum)
            assert proc.wait(timeout=15) == -signum
        finally:
            if proc.poll() is None:
                proc.kill()
    assert len([s for _, s in backend.spans() if s.name.startswith("step ")]) == 200
    lines = [json.loads(line) for _, _, line, _ in backend.log_entries()]
    assert len([d for d in lines if d["message"].startswith("step ")]) == 200


def test_a_program_started_with_sighup_ignored_keeps_ignoring_it() -> None:
    """A program started with SIGHUP ignored (under nohup) keeps ignoring it under the
    launcher: Sightline's flushing handler replaces only the default disposition."""
    code = """
        import signal, time
        print("ready", signal.getsignal(signal.SIGHUP) is signal.SIG_IGN, flush=True)
        time.sleep(60)
    """
    env = {**os.environ, "SIGHTLINE_METRICS_ADDR": "off", "SIGHTLINE_SERVICE": "script"}
    with script(code, env, signal.SIGHUP, signal.SIG_IGN) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready True"
            proc.send_signal(signal.SIGHUP)
            with pytest.raises(subprocess.TimeoutExpired):
                proc.wait(timeout=1)
        finally:
            proc.kill()
            proc.wait()


def test_a_program_with_its_own_signal_handler_keeps_it() -> None:
    """A handler the program installs for SIGTERM replaces Sightline's: the program decides."""
    code = """
        import signal, sys, time
        signal.signal(signal.SIGTERM, lambda *a: (print("own handler", flush=True), sys.exit(3)))
        print("ready", flush=True)
        time.sleep(60)
    """
    env = {**os.environ, "SIGHTLINE_METRICS_ADDR": "off", "SIGHTLINE_TRACES": "false"}
    with script(code, env, signal.SIGTERM, signal.SIG_DFL) as proc:
        try:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=15) == 3
            assert proc.stdout.read().strip() == "own handler"
        finally:
            if proc.poll() is None:
                proc.kill()
