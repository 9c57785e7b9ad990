"""The OpenTelemetry Collector compose ships, run by `sightline stack` at the release compose
pins (compose/build-binaries), with the configuration compose mounts: its tail sampling
between the agent and Tempo, its logs pipeline into Loki, and its own metrics in Prometheus.

Tempo and Loki are AGPL and not built here: a receiver that decodes OTLP/gRPC stands where
Tempo listens, one that decodes OTLP/HTTP logs where Loki's ``/otlp`` endpoint is."""

from __future__ import annotations

import os
import random
import re
import secrets
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Status
from sightline_appliance.stack import BY_NAME, Stack, processes

from .helpers import free_port, scrape, total, wait_until
from .receivers import Backend, GrpcTraces, attributes
from .servers import ROOT, Prometheus, binary, gunicorn, launcher
from .test_stack import NEEDED, only, port_args

# Checks the stack's files, binaries and processes: not run again by .ci/newest-sdk.
pytestmark = pytest.mark.stack

CONFIG = yaml.safe_load((ROOT / "collector" / "config.yml").read_text())
SAMPLING = CONFIG["processors"]["tail_sampling"]
POLICIES = {policy["name"]: policy for policy in SAMPLING["policies"]}
THRESHOLD_S = POLICIES["slow"]["latency"]["threshold_ms"] / 1000
SHARE = POLICIES["baseline"]["probabilistic"]["sampling_percentage"] / 100
DECISION_WAIT_S = float(SAMPLING["decision_wait"].removesuffix("s"))


@dataclass
class Running:
    directory: Path
    env: dict[str, str]  # with the pinned binaries first on PATH
    tempo: GrpcTraces
    loki: Backend

    def native_url(self, service: str, port: int, path: str = "") -> str:
        return Stack(self.directory).native().url(service, port, path)

    def sightline(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [*launcher(), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=ROOT,
            env=self.env,
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """`sightline stack up` with the pinned Prometheus, Alertmanager and Collector first on
    PATH (Redis from the machine), Tempo's and Loki's ports taken by the receivers."""
    collector = Path(binary("otelcol-sightline", flavour="pinned"))
    for name in NEEDED:
        binary(*BY_NAME[name].binaries)
    tempo = GrpcTraces().start()
    loki = Backend(keep_alive=True).start()
    directory = tmp_path_factory.mktemp("collector") / "stack"
    env = {
        **os.environ,
        "PATH": f"{collector.parent}{os.pathsep}{os.environ.get('PATH', '')}",
        # A fifth of the demo's checkouts fail (1 % by default): some of the failed traces
        # that must reach Tempo come from the demo, within its 60 s.
        "SHOP_CHECKOUT_FAILURES": "0.2",
    }
    running = Running(directory, env, tempo, loki)
    try:
        up = running.sightline(
            "stack", "up", "--dir", str(directory),
            "--port", f"tempo:4317={tempo.port}", "--port", f"loki:3100={loki.port}",
            *port_args((*NEEDED, "collector", "demo-app", "demo-worker")),
            *only(*NEEDED, "collector"),
        )  # fmt: skip
        output, _ = up.communicate(timeout=120)
        assert up.returncode == 0, output
        assert set(Stack(directory).running()) == {*NEEDED, "collector"}, output
        yield running
    finally:
        try:
            Stack(directory).down(out=lambda line: None)
        finally:
            for proc in processes.ours(directory.resolve()):
                proc.kill()
            tempo.stop()
            loki.stop()


def traceparent(trace_id: str) -> str:
    return f"00-{trace_id}-{secrets.token_hex(8)}-01"


@pytest.mark.timeout(360)
def test_tail_sampling_keeps_every_error_and_slow_trace_and_a_share_of_the_rest(
    stack: Running, tmp_path: Path
) -> None:
    """With the native stack and the demo running for 60 s, and beside the demo an
    instrumented app whose requests end in a known way (each one a trace of its own, its
    ID chosen by the test), the Collector between the agents and a Tempo-compatible OTLP
    receiver keeps every trace with an error span, every trace longer than the latency
    threshold and, of the others, the configured share: 10 % within ±3 points over at
    least 1000 traces (3.5 standard deviations of a binomial draw). The demo's traces from
    the shop and its worker arrive as well, nothing is dropped on the way from the agent,
    and Prometheus scrapes the Collector's own metrics, sampling decisions included."""
    demo = stack.sightline(
        "demo", "--dir", str(stack.directory), "--duration", "60", "--refresh", "30"
    )
    try:
        metrics = f"127.0.0.1:{free_port()}"
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": stack.native_url("collector", 4318),
            "SIGHTLINE_METRICS_ADDR": metrics,
        }
        args = ["--workers", "2", "--threads", "8"]
        kinds: dict[str, str] = {}  # trace ID -> fine, fail or slow
        statuses: dict[str, int] = {}
        quick: set[str] = set()  # answered within the threshold: only the baseline applies
        lock = threading.Lock()
        with gunicorn("tests.apps.sampling_app:app", env, args, tmp_path) as url:

            def call(kind: str) -> None:
                trace_id = secrets.token_hex(16)
                path = {"fine": "/fine", "fail": "/fail", "slow": f"/slow/{THRESHOLD_S * 1400:.0f}"}
                request = urllib.request.Request(
                    url + path[kind], headers={"traceparent": traceparent(trace_id)}
                )
                sent = time.monotonic()
                try:
                    with urllib.request.urlopen(request, timeout=10) as response:
                        status = response.status
                except urllib.error.HTTPError as exc:
                    status = exc.code
                with lock:
                    kinds[trace_id] = kind
                    statuses[trace_id] = status
                    if time.monotonic() - sent < THRESHOLD_S:
                        quick.add(trace_id)

            plan = ["fine"] * 1300 + ["fail"] * 60 + ["slow"] * 30
            random.Random(13).shuffle(plan)
            started = time.monotonic()
            with ThreadPoolExecutor(max_workers=12) as pool:
                calls = []
                for i, kind in enumerate(plan):
                    # Spread over 50 s, while the demo's load runs.
                    time.sleep(max(0.0, started + 50 * i / len(plan) - time.monotonic()))
                    calls.append(pool.submit(call, kind))
                for future in calls:
                    future.result()  # a request that failed outright fails the test
            output, _ = demo.communicate(timeout=120)
            assert demo.returncode == 0, output
            # The load arrived: no more than 0.5 % of its requests failed, as the view says.
            sent, failed = map(
                int, re.findall(r"^load +sent (\d+), failed (\d+)", output, re.M)[-1]
            )
            assert sent >= 500
            assert failed <= 0.005 * sent, output
            # The view said where traces went, and that they flowed.
            assert re.search(
                r"^traces +on +the Collector at http://127\.0\.0\.1:\d+ .*: \d+\.\d/s delivered$",
                output,
                re.M,
            ), output

            want = {kind: {t for t, k in kinds.items() if k == kind} for kind in ("fail", "slow")}
            assert {statuses[t] for t in want["fail"]} == {500}
            assert {s for t, s in statuses.items() if kinds[t] != "fail"} == {200}

            def kept() -> dict[str, list[tuple[str, Status]]]:
                found: dict[str, list[tuple[str, Status]]] = {}
                for resource, span in stack.tempo.spans():
                    if resource.get("service.name") == "sampling-probe":
                        found.setdefault(span.trace_id.hex(), []).append((span.name, span.status))
                return found

            # Decisions come decision_wait after a trace's first span.
            wait_until(
                lambda: want["fail"] | want["slow"] <= kept().keys(),
                timeout=DECISION_WAIT_S + 30,
            )
            agent = scrape(f"http://{metrics}/metrics")
        assert total(agent, "sightline_dropped_total", signal="traces") == 0
        assert total(agent, "sightline_exported_total", signal="traces") >= len(plan)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()

    got = kept()
    missing = {kind: len(ids - got.keys()) for kind, ids in want.items()}
    assert missing == {"fail": 0, "slow": 0}
    for trace_id in want["fail"]:
        assert any(status.code == Status.STATUS_CODE_ERROR for _, status in got[trace_id])
    # A fine request slower than the threshold on a loaded machine is rightly kept as slow;
    # the client's time bounds the server's, so these were judged by the baseline alone.
    fine = [t for t, k in kinds.items() if k == "fine" and t in quick]
    assert len(fine) >= 1000
    share = sum(t in got for t in fine) / len(fine)
    assert SHARE - 0.03 <= share <= SHARE + 0.03, f"{share:.3f} of the other traces kept"
    # Besides the test's, only the readiness probes of the server fixture.
    unknown = {t: spans for t, spans in got.items() if t not in kinds}
    assert {name for spans in unknown.values() for name, _ in spans} <= {"GET /health"}

    # The demo's traces went the same way: the shop's and its worker's, errors among them.
    services = {resource.get("service.name") for resource, _ in stack.tempo.spans()}
    assert {"shop", "shop-worker"} <= services
    assert any(
        resource.get("service.name") == "shop" and span.status.code == Status.STATUS_CODE_ERROR
        for resource, span in stack.tempo.spans()
    ), "none of the demo's failed checkouts reached Tempo"

    prom = Prometheus(stack.native_url("prometheus", 9090))
    assert [float(r["value"][1]) for r in prom.query('up{job="collector"}')] == [1.0]

    def collector_total(metric: str, matchers: str = "") -> float:
        # The Collector names its counters without `_total`; scraped as OpenMetrics they
        # gain it: either is the same series.
        promql = f'{{__name__=~"{metric}(_total)?",job="collector"{matchers}}}'
        return sum(float(r["value"][1]) for r in prom.query(promql))

    assert wait_until(
        lambda: collector_total("otelcol_receiver_accepted_spans") >= len(plan), timeout=30
    )
    assert collector_total("otelcol_exporter_sent_spans") > 0
    assert wait_until(
        lambda: (
            collector_total(
                "otelcol_processor_tail_sampling_count_traces_sampled",
                ',policy="errors",sampled="true"',
            )
            >= len(want["fail"])
        ),
        timeout=30,
    )


@pytest.mark.timeout(120)
def test_collector_ships_otlp_logs_to_lokis_otlp_endpoint(stack: Running) -> None:
    """OTLP/HTTP log records sent to the Collector reach Loki's native OTLP endpoint
    (``/otlp/v1/logs``, protobuf) all of them, each with its body, severity, attributes,
    trace context and resource unchanged."""
    records = []
    for i in range(40):
        record = LogRecord(
            time_unix_nano=time.time_ns(),
            severity_number=9 if i % 4 else 17,
            severity_text="INFO" if i % 4 else "ERROR",
            body=AnyValue(string_value=f"order {i} paid"),
            attributes=[KeyValue(key="order.id", value=AnyValue(int_value=i))],
            trace_id=secrets.token_bytes(16),
            span_id=secrets.token_bytes(8),
        )
        records.append(record)
    resource = Resource(
        attributes=[KeyValue(key="service.name", value=AnyValue(string_value="billing"))]
    )
    body = ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(resource=resource, scope_logs=[ScopeLogs(log_records=records)])]
    ).SerializeToString()
    request = urllib.request.Request(
        stack.native_url("collector", 4318, "/v1/logs"),
        data=body,
        headers={"Content-Type": "application/x-protobuf"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200

    assert wait_until(lambda: len(stack.loki.log_records()) >= len(records), timeout=30)
    got = stack.loki.log_records()
    assert len(got) == len(records)
    assert {resource.get("service.name") for resource, _ in got} == {"billing"}
    by_body = {record.body.string_value: record for _, record in got}
    for sent in records:
        arrived = by_body[sent.body.string_value]
        assert (arrived.severity_number, arrived.severity_text) == (
            sent.severity_number,
            sent.severity_text,
        )
        assert attributes(arrived.attributes) == attributes(sent.attributes)
        assert (arrived.trace_id, arrived.span_id) == (sent.trace_id, sent.span_id)
        assert arrived.time_unix_nano == sent.time_unix_nano
