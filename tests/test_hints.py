"""`sightline hints` read from a real Prometheus running the shipped rules, and the KEDA and
HPA manifests checked against KEDA's CRD and Kubernetes' OpenAPI schema."""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from sightline_appliance import hints as _hints
from sightline_appliance.doctor import MARKER, MARKER_VALUE
from sightline_appliance.stack import BY_NAME

from .helpers import free_port, wait_until
from .schemas import AUTOSCALING_V2, keda_cel, keda_validator, kubernetes_validator
from .servers import FLAVOURS, SERVICE_RELABEL, Prometheus, binary, started

# Starts Prometheus and reads Go modules: not run again by .ci/newest-sdk.
pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parent.parent
RULE_FILES = [
    ROOT / "alerts" / f"{name}.rules.yml"
    for name in ("http", "saturation", "workers", "dependencies", "scaling")
]

#: Seconds of history written into the TSDB before Prometheus starts, so that every
#: 5-minute rate the rules take has a full window from the first scrape on.
HISTORY = 600.0


@dataclass
class Replica:
    """One scrape target: gauges as they are, counters growing at a fixed rate."""

    gauges: dict[str, float] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)  # series -> increase per second

    def samples(self, at: float, start: float) -> dict[str, float]:
        return {
            **self.gauges,
            **{series: rate * (at - start) for series, rate in self.rates.items()},
        }


def web(in_flight: float, cpu: float, pool_used: float) -> Replica:
    """A web replica with 4 request slots, ``in_flight`` busy on average, using ``cpu``
    of its 1 core and ``pool_used`` of its 10 database connections."""
    pool = 'db_system_name="postgresql",db_client_connection_pool_name="default"'
    return Replica(
        gauges={
            "http_server_worker_capacity": 4,
            # A sample, as a sync worker's scrape reads it: the rules do not use it.
            "http_server_active_requests": 0,
            "process_cpu_limit_cores": 1,
            f"db_client_connection_max{{{pool}}}": 10,
            f'db_client_connection_count{{{pool},db_client_connection_state="used"}}': pool_used,
            f'db_client_connection_count{{{pool},db_client_connection_state="idle"}}': (
                10 - pool_used
            ),
        },
        rates={
            # Busy seconds per second: the mean in flight; and 4 slot-seconds a second.
            "http_server_busy_seconds_total": in_flight,
            "http_server_capacity_seconds_total": 4,
            "http_server_request_duration_seconds_sum": in_flight,
            "http_server_request_duration_seconds_count": in_flight * 10,
            "process_cpu_seconds_total": cpu,
        },
    )


def worker(backlog: float, done: float, duration: float, cpu: float) -> Replica:
    """A Celery worker with 4 task slots finishing ``done`` tasks/s of ``duration`` s each,
    its queue holding ``backlog`` messages."""
    task = 'task_system="celery",task_queue="mail"'
    finished = f'{task},task_name="send",task_outcome="success"'
    return Replica(
        gauges={
            'worker_capacity{task_system="celery"}': 4,
            # A sample, which the rules do not use: the busy counter says how busy.
            'worker_tasks_active{task_system="celery"}': 0,
            f"worker_queue_depth{{{task}}}": backlog,
            "process_cpu_limit_cores": 1,
        },
        rates={
            f"worker_task_duration_seconds_count{{{finished}}}": done,
            f"worker_task_duration_seconds_sum{{{finished}}}": done * duration,
            'worker_busy_seconds_total{task_system="celery"}': done * duration,
            'worker_capacity_seconds_total{task_system="celery"}': 4,
            "process_cpu_seconds_total": cpu,
        },
    )


#: shop: 2 replicas, 7.5 requests in flight of 8 slots, 60 % CPU, pools 95 % full.
#: mailer: 1 replica, 30 queued, 2 tasks/s of 0.5 s (1 task slot busy, and 30 / 300 x 0.5
#: more to drain the backlog in 300 s: 1.05 needed), 30 % CPU.
SERVICES = {
    "shop": [web(3.75, 0.6, 10), web(3.75, 0.6, 9)],
    "mailer": [worker(30, 2.0, 0.5, 0.3)],
}


def _label(series: str, **extra: str) -> str:
    """``name{labels}`` with ``extra`` labels added."""
    name, _, labels = series.partition("{")
    more = ",".join(f'{k}="{v}"' for k, v in extra.items())
    labels = labels.rstrip("}")
    return f"{name}{{{labels}{',' if labels and more else ''}{more}}}"


class Exporter:
    """A replica's /metrics on a loopback port, values computed at each scrape."""

    def __init__(self, replica: Replica, start: float) -> None:
        def handler(*args: Any) -> BaseHTTPRequestHandler:
            return _Handler(replica, start, *args)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    def __init__(self, replica: Replica, start: float, *args: Any) -> None:
        self.replica, self.start = replica, start
        super().__init__(*args)

    def do_GET(self) -> None:
        samples = self.replica.samples(time.time(), self.start)
        body = "".join(f"{series} {value!r}\n" for series, value in samples.items()).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def backfill(
    tsdb: Path,
    exporters: dict[str, list[tuple[Exporter, Replica]]],
    start: float,
    flavour: str,
) -> None:
    """Write each target's last ``HISTORY`` seconds into ``tsdb`` (promtool's backfill),
    the same functions of time its exporter serves from now on."""
    now = time.time()
    lines: dict[str, list[str]] = {}
    for job, targets in exporters.items():
        for exporter, replica in targets:
            # Every second, as scraped: rate() extrapolates to the window's start only
            # when its first sample is within 1.1 mean intervals of it.
            for at in range(int(now - HISTORY), int(now)):
                for series, value in replica.samples(at, start).items():
                    where = {"job": job, "instance": exporter.address, MARKER: MARKER_VALUE}
                    labelled = _label(series, **where)
                    lines.setdefault(series.partition("{")[0], []).append(
                        f"{labelled} {value!r} {at}"
                    )
    source = tsdb.parent / "history.om"
    # OpenMetrics wants each family's samples together; the backfill reads no types.
    source.write_text(
        "".join(line + "\n" for family in lines.values() for line in family) + "# EOF\n"
    )
    tsdb.mkdir(parents=True)
    subprocess.run(
        [
            binary("promtool", flavour=flavour),
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            str(source),
            str(tsdb),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture(scope="module", params=FLAVOURS)
def prom(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """Prometheus (each flavour) with the shipped rules scraping shop (2 replicas) and
    mailer (1) every second, over 10 minutes of their history."""
    flavour = request.param
    tmp = tmp_path_factory.mktemp(f"hints-{flavour}")
    start = time.time() - HISTORY - 60
    exporters = {
        job: [(Exporter(replica, start), replica) for replica in replicas]
        for job, replicas in SERVICES.items()
    }
    try:
        backfill(tmp / "tsdb", exporters, start, flavour)
        jobs = "".join(
            f"  - job_name: {job}\n    static_configs:\n      - targets: "
            + json.dumps([e.address for e, _ in targets])
            + "\n"
            + SERVICE_RELABEL
            for job, targets in exporters.items()
        )
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            + "rule_files:\n"
            + "".join(f"  - {path}\n" for path in RULE_FILES)
            + "scrape_configs:\n"
            + jobs
        )
        port = free_port()
        argv = [
            binary(*BY_NAME["prometheus"].binaries, flavour=flavour),
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ]
        with started("prometheus", argv, tmp, f"http://127.0.0.1:{port}/-/ready"):
            url = f"http://127.0.0.1:{port}"
            readings: list[Any] = []
            settled = wait_until(lambda: _settled(url, readings), timeout=60, every=1.5)
            assert settled, f"the rules did not settle: {_hints.read(url)}"
            yield Prometheus(url)
    finally:
        for targets in exporters.values():
            for exporter, _ in targets:
                exporter.close()


def _settled(url: str, readings: list[Any]) -> bool:
    """Both services scraped on every replica, every reason recorded, and the numbers as
    they were one reading before: until the rules have seen the first scrapes, every
    rate falls short of the history's by a little more each second."""
    try:
        hints = {h.service: h for h in _hints.read(url)}
    except _hints.Unreachable:
        return False
    readings.append([h.as_json() for h in hints.values()])
    return (
        len(readings) > 1
        and _close(readings[-1], readings[-2])
        and set(hints) == {"shop", "mailer"}
        and hints["shop"].replicas == 2
        and set(hints["shop"].required) == {"concurrency", "cpu"}
        and set(hints["mailer"].required) == {"cpu", "queue"}
        and hints["shop"].pool is not None
        and hints["mailer"].drain_seconds is not None
    )


def _close(a: Any, b: Any) -> bool:
    """Equal, numbers within 0.01 % of each other."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(map(_close, a, b))
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-4)
    return bool(a == b)


def hints(prometheus: str, as_json: bool) -> tuple[int, str, str]:
    out: list[str] = []
    err: list[str] = []
    code = _hints.main(prometheus, as_json, out.append, err.append)
    return code, "\n".join(out), "\n".join(err)


def test_table_shows_replicas_recommendation_and_the_numbers_behind_it(prom: Prometheus) -> None:
    """The table gives the saturated shop 3 of 2 replicas held by its full pools, by
    concurrency, and the healthy mailer 1 of 1, with each reason's inputs."""
    code, out, err = hints(prom.url, as_json=False)
    assert (code, err) == (0, "")
    assert out == "\n".join(
        [
            "mailer: 1 replica, recommended 1 (hold)",
            "  REASON       REQUIRED  NUMBERS BEHIND IT",
            "  cpu                 1  0.30 of 1.00 cores (30%, target 70% ±10%)",
            "  queue               1  backlog 30, drained in 15 s; 2.00 arriving/s, "
            "2.00 finished/s; 1.05 task slots needed of 4 (26%, target 70%)",
            "",
            "shop: 2 replicas, recommended 3 (scale up)",
            "  held: its database pools are 95% in use; more replicas open more connections, "
            "so raise the pools or the database's capacity first",
            "  REASON       REQUIRED  NUMBERS BEHIND IT",
            "  concurrency         3  7.50 requests in flight of 8 slots (94%, target 70%)",
            "  cpu                 2  1.20 of 2.00 cores (60%, target 70% ±10%)",
            "  db pools               fullest 95% in use (saturated: more replicas will not help)",
        ]
    )


def test_json_has_the_documented_shape_and_values(prom: Prometheus) -> None:
    """--json gives every service with every documented key, null where a reason has no data."""
    code, out, err = hints(prom.url, as_json=True)
    assert (code, err) == (0, "")
    document = json.loads(out)
    assert document["prometheus"] == prom.url
    shop, mailer = sorted(document["services"], key=lambda s: s["service"] != "shop")
    approx = pytest.approx
    assert shop == {
        "service": "shop",
        "replicas": 2,
        "recommended": 3,
        "direction": "up",
        "held": True,
        "required": {"concurrency": 3, "cpu": 2, "queue": None},
        "concurrency": {
            "in_flight": approx(7.5, rel=1e-3),
            "capacity": 8,
            "utilisation": approx(0.9375, rel=1e-3),
        },
        "cpu": {
            "used_cores": approx(1.2, rel=1e-3),
            "limit_cores": 2,
            "utilisation": approx(0.6, rel=1e-3),
        },
        "queue": {
            "backlog": None,
            "arrived_per_second": None,
            "completed_per_second": None,
            "drain_seconds": None,
            "task_slots": None,
            "slots_needed": None,
            "utilisation": None,
        },
        "db_pool": {"utilisation": approx(0.95), "saturated": True},
    }
    assert mailer == {
        "service": "mailer",
        "replicas": 1,
        "recommended": 1,
        "direction": "hold",
        "held": False,
        "required": {"concurrency": None, "cpu": 1, "queue": 1},
        "concurrency": {"in_flight": None, "capacity": None, "utilisation": None},
        "cpu": {
            "used_cores": approx(0.3, rel=1e-3),
            "limit_cores": 1,
            "utilisation": approx(0.3, rel=1e-3),
        },
        "queue": {
            "backlog": 30,
            "arrived_per_second": approx(2.0, rel=1e-3),
            "completed_per_second": approx(2.0, rel=1e-3),
            "drain_seconds": approx(15.0, rel=1e-3),
            "task_slots": 4,
            "slots_needed": approx(1.05, rel=1e-3),
            "utilisation": approx(0.2625, rel=1e-3),
        },
        "db_pool": {"utilisation": None, "saturated": False},
    }


def test_unreachable_prometheus_is_one_line_and_exit_code_2() -> None:
    """With nothing listening at --prometheus, or something that is not Prometheus, hints
    print one line naming it and why, and exit 2."""
    url = f"http://127.0.0.1:{free_port()}"
    for as_json in (False, True):
        code, out, err = hints(url, as_json)
        assert (code, out) == (2, "")
        assert err.startswith(f"sightline hints: Prometheus at {url} did not answer: [Errno ")
        assert err.endswith("Connection refused")
    not_prometheus = Exporter(Replica(gauges={"up": 1}), 0)
    try:
        url = f"http://{not_prometheus.address}"
        code, out, err = hints(url, as_json=False)
    finally:
        not_prometheus.close()
    assert (code, out) == (2, "")
    assert err.startswith(
        f"sightline hints: Prometheus at {url} did not answer as its HTTP API does: "
    )
    assert "\n" not in err


def test_prometheus_without_sightline_series_says_no_service_reports_yet(tmp_path: Path) -> None:
    """A Prometheus that has no Sightline series gives exit 1, an empty JSON list and a
    message that no service reports yet."""
    port = free_port()
    (tmp_path / "prometheus.yml").write_text("global:\n  scrape_interval: 1s\n")
    argv = [
        binary(*BY_NAME["prometheus"].binaries),
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    url = f"http://127.0.0.1:{port}"
    with started("prometheus", argv, tmp_path, f"{url}/-/ready"):
        code, out, err = hints(url, as_json=False)
        assert (code, out) == (1, "")
        assert f"no service reports to Prometheus at {url} yet" in err
        code, out, _ = hints(url, as_json=True)
        assert (code, json.loads(out)) == (1, {"prometheus": url, "services": []})


# -- the manifests ----------------------------------------------------------------------------


def errors(validator: Any, document: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


# The first run downloads the modules (3 MB and 19 MB).
@pytest.mark.timeout(300)
def test_keda_scaledobject_satisfies_kedas_crd(tmp_path: Path) -> None:
    """The ScaledObject passes KEDA's CRD schema and scales on the recommendation with
    threshold 1 as an AverageValue, so that replicas = recommended."""
    text = _hints.manifest(
        "keda", "shop", namespace="shop", deployment="shop-web", min_replicas=2, max_replicas=20
    )
    document = yaml.safe_load(text)
    validator = keda_validator(tmp_path)
    assert errors(validator, document) == []
    assert keda_cel(document["spec"])
    assert document["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "shop-web",
    }
    (trigger,) = document["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "AverageValue"
    assert trigger["metadata"]["query"] == 'sightline:recommended_replicas:count{job="shop"}'
    assert trigger["metadata"]["threshold"] == "1"
    assert trigger["metadata"]["ignoreNullValues"] == "false"
    assert trigger["metadata"]["serverAddress"] == _hints.CLUSTER_PROMETHEUS
    # The schema does refuse what KEDA would: a number where it wants a string.
    broken = copy.deepcopy(document)
    broken["spec"]["triggers"][0]["metadata"]["threshold"] = 1
    broken["spec"]["minReplicaCount"] = "2"
    assert len(errors(validator, broken)) == 2


@pytest.mark.timeout(300)
def test_hpa_satisfies_the_kubernetes_autoscaling_v2_schema(tmp_path: Path) -> None:
    """The HPA passes autoscaling/v2's schema with an External AverageValue target of 1 on
    the metric prometheus-adapter serves, selected by job."""
    text = _hints.manifest("hpa", "shop", namespace="shop", min_replicas=2, max_replicas=20)
    documents = list(yaml.safe_load_all(text))
    assert len(documents) == 1, "the adapter's rule is a comment: kubectl applies the output"
    (document,) = documents
    validator = kubernetes_validator(
        tmp_path, AUTOSCALING_V2, "io.k8s.api.autoscaling.v2.HorizontalPodAutoscaler"
    )
    assert errors(validator, document) == []
    spec = document["spec"]
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 20)
    (metric,) = spec["metrics"]
    # What the API server checks beyond the schema for an External metric.
    assert metric["type"] == "External"
    assert metric["external"]["target"] == {"type": "AverageValue", "averageValue": "1"}
    assert metric["external"]["metric"] == {
        "name": "sightline_recommended_replicas",
        "selector": {"matchLabels": {"job": "shop"}},
    }
    broken = copy.deepcopy(document)
    broken["spec"]["metrics"][0]["external"]["target"]["averageVaule"] = "1"
    del broken["spec"]["maxReplicas"]
    assert len(errors(validator, broken)) == 2


def adapter_rule(text: str) -> dict[str, Any]:
    """The prometheus-adapter externalRules entry the HPA manifest carries as a comment."""
    _, _, comment = text.partition("# externalRules:\n")
    rules = yaml.safe_load(
        "externalRules:\n"
        + "".join(line.removeprefix("# ") + "\n" for line in comment.splitlines())
    )
    (rule,) = rules["externalRules"]
    return dict(rule)


def test_manifest_queries_are_promql_that_read_the_recording_rule(prom: Prometheus) -> None:
    """KEDA's query, and the adapter's series and metrics queries as it fills them in for the
    HPA's selector, run on Prometheus and return shop's recommendation, 3."""
    keda = yaml.safe_load(_hints.manifest("keda", "shop"))
    query = keda["spec"]["triggers"][0]["metadata"]["query"]
    assert query.startswith("sightline:recommended_replicas:count{")
    [result] = prom.query(query)
    assert (result["metric"]["job"], result["value"][1]) == ("shop", "3")

    text = _hints.manifest("hpa", "shop")
    rule = adapter_rule(text)
    assert rule["resources"] == {"namespaced": False}
    assert (
        rule["name"]["as"]
        == yaml.safe_load(text)["spec"]["metrics"][0]["external"]["metric"]["name"]
    )
    series = prom.get("/api/v1/series", **{"match[]": rule["seriesQuery"]})
    names = {s["__name__"] for s in series}
    assert names == {"sightline:recommended_replicas:count"}
    assert {s["job"] for s in series} == {"shop", "mailer"}
    assert re.fullmatch(rule["name"]["matches"], "sightline:recommended_replicas:count")
    filled = (
        rule["metricsQuery"]
        .replace("<<.Series>>", "sightline:recommended_replicas:count")
        .replace("<<.LabelMatchers>>", 'job="shop"')
    )
    [result] = prom.query(filled)
    assert result["value"][1] == "3"


def test_a_service_name_with_quotes_stays_one_promql_string(prom: Prometheus) -> None:
    """A job name with quotes and backslashes is escaped: the query parses and matches nothing."""
    keda = yaml.safe_load(_hints.manifest("keda", 'we"ird\\job', deployment="weird"))
    query = keda["spec"]["triggers"][0]["metadata"]["query"]
    assert prom.query(query) == []
    assert prom.get("/api/v1/format_query", query=query) == (
        'sightline:recommended_replicas:count{job="we\\"ird\\\\job"}'
    )


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("keda", {"min_replicas": 5, "max_replicas": 2}, "need 1 <= --min (5) <= --max (2)"),
        ("hpa", {"deployment": "Shop_Web"}, "'Shop_Web' is not a Kubernetes object name"),
        ("keda", {"namespace": "a.b"}, "--namespace 'a.b' is not a Kubernetes namespace name"),
    ],
)
def test_arguments_kubernetes_would_refuse_are_refused(
    kind: str, options: dict[str, Any], message: str
) -> None:
    """Replica bounds out of order and names Kubernetes refuses end with exit 2 and why."""
    out: list[str] = []
    err: list[str] = []
    code = _hints.print_manifest(kind, "shop", **options, out=out.append, err=err.append)
    assert (code, out) == (2, [])
    assert err[0].startswith(f"sightline hints {kind}: {message}")


def test_hpa_refuses_a_job_that_is_no_label_value() -> None:
    """A job name the HPA's label selector cannot hold is refused for hpa, accepted for keda."""
    with pytest.raises(ValueError, match="cannot be a Kubernetes label value"):
        _hints.manifest("hpa", "shop web", deployment="shop")
    assert 'job="shop web"' in _hints.manifest("keda", "shop web", deployment="shop")
