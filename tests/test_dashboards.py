"""The Grafana dashboards: generated from dashboards/build.py, well formed, and every query runs.

The structural tests read the committed JSON. The last tests start one real Prometheus that
evaluates alerts/*.rules.yml and scrapes a gunicorn Flask app, a Celery worker and the
process publishing its tasks, and run every Prometheus query of every dashboard against it.
Loki and Tempo cannot run here: their queries are checked for shape and for the labels and
attributes Sightline really sends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sightline_appliance.queries import ERROR_RATIO, GOLDEN_SIGNALS, Query

from .helpers import free_port, wait_until
from .receivers import Backend
from .servers import (
    FLAVOURS,
    ROOT,
    Prometheus,
    celery_worker,
    gunicorn,
    process,
    prometheus,
    redis,
)

# Checks the stack's files, binaries and processes: not run again by .ci/newest-sdk.
pytestmark = pytest.mark.stack

Json = dict[str, Any]

BOARDS = ROOT / "dashboards"
DOCS = ROOT / "docs"
RULE_FILES = sorted((ROOT / "alerts").glob("*.rules.yml"))
DATASOURCES = {"prometheus", "tempo", "loki", "alertmanager"}
RULE_NAME = re.compile(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+")

# What Grafana puts in place of its variables, for running a query outside Grafana.
VARIABLES = {
    "$__rate_interval": "1m",
    "$__interval": "5s",
    "$__range": "5m",
    "$service": ".*",
    "$route": ".*",
    "$queue": ".*",
}

# Panels whose Prometheus queries only have to succeed here, and why they may be empty.
NO_INTERNAL_ERRORS = (
    "the counter has no series until Sightline suppresses an error, which a healthy app "
    "never makes it do"
)
MAY_BE_EMPTY = {
    ("sightline-overview", "Calls between services"): (
        "Tempo's metrics generator writes the service-graph metrics; there is no Tempo here"
    ),
    ("sightline-saturation", "Event-loop lag p99"): (
        "the app under test is WSGI: no asyncio loop, so no lag observations (NaN)"
    ),
    ("sightline-saturation", "CPU throttled share"): (
        "0/0 (NaN) unless the test runs in a cgroup with a CPU quota"
    ),
    ("sightline-workers", "RQ registries"): "RQ only; the worker under test is Celery",
    ("sightline-health", "Internal errors since start"): NO_INTERNAL_ERRORS,
    ("sightline-health", "Internal errors"): NO_INTERNAL_ERRORS,
    ("sightline-dependencies", "Pool timeouts"): (
        "the counter has no series until a request for a connection gives up, which the "
        "app under test never makes it do"
    ),
    ("sightline-health", "Snapshot store problems"): (
        "the counter has no series until the snapshot directory gives trouble, which it "
        "does not on a healthy machine"
    ),
}


# -- reading the dashboards


def dashboards() -> dict[str, Json]:
    boards = (json.loads(p.read_text(encoding="utf-8")) for p in sorted(BOARDS.glob("*.json")))
    return {board["uid"]: board for board in boards}


def panels(board: Json) -> list[Json]:
    """Every panel, including those inside collapsed rows."""
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def datasource_type(panel: Json, target: Json) -> str:
    return str((target.get("datasource") or panel.get("datasource") or {}).get("type", ""))


@dataclasses.dataclass(frozen=True)
class Case:
    board: str
    title: str
    ref: str
    query: str

    def __str__(self) -> str:
        return f"{self.board} / {self.title} / {self.ref}"


def queries(kind: str) -> list[Case]:
    """The queries of every dashboard sent to one kind of datasource."""
    found = []
    for uid, board in dashboards().items():
        for panel in panels(board):
            for target in panel.get("targets", []):
                if datasource_type(panel, target) == kind:
                    text = target.get("expr") or target.get("query") or ""
                    if text:
                        found.append(Case(uid, panel["title"], target["refId"], text))
    return found


def substitute(query: str) -> str:
    for name in sorted(VARIABLES, key=len, reverse=True):
        query = query.replace(name, VARIABLES[name])
    assert "$" not in query, f"a variable is left in {query}"
    return query


def documented_metrics() -> set[str]:
    """Backticked names in the first column of docs/metrics.md's tables."""
    names = set()
    for line in (DOCS / "metrics.md").read_text().splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            names.update(re.findall(r"`([^`]+)`", line.split("|")[1]))
    return names


def recording_rules() -> set[str]:
    return {
        name
        for path in RULE_FILES
        for name in re.findall(r"^\s*-?\s*record:\s*['\"]?([\w:]+)", path.read_text(), re.M)
    }


KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or"}
KEYWORDS |= {"unless", "bool", "offset"}


def metric_names(promql: str) -> set[str]:
    """The series names a PromQL expression reads (not functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', promql)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:])[a-zA-Z_:][\w:]*", text):
        is_call = text[match.end() :].lstrip().startswith("(")
        if not is_call and match.group() not in KEYWORDS:
            names.add(match.group())
    return names


# -- generated from source


def test_committed_json_is_what_the_source_generates() -> None:
    """`build.py --check` passes: the committed JSON is exactly what the source renders."""
    result = subprocess.run(
        [sys.executable, str(BOARDS / "build.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_check_mode_names_a_file_that_differs(tmp_path: Path) -> None:
    """`build.py --check` exits 1 and names the file when a committed dashboard was edited
    by hand, and a plain run writes it back."""
    copy = tmp_path / "dashboards"
    shutil.copytree(BOARDS, copy, ignore=shutil.ignore_patterns("__pycache__", "*.md"))
    edited = copy / "overview.json"
    edited.write_text(edited.read_text().replace('"Request rate"', '"Requests"', 1))
    run = [sys.executable, str(copy / "build.py")]
    result = subprocess.run([*run, "--check"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "dashboards/overview.json" in result.stderr
    assert "workers.json" not in result.stderr
    subprocess.run(run, check=True, capture_output=True, timeout=60)
    assert edited.read_text() == (BOARDS / "overview.json").read_text()


# -- structure


def test_dashboards_have_unique_stable_identities() -> None:
    """Each dashboard file has its own UID, a "Sightline / " title, the sightline tag, a
    classic schema version Grafana 11 to 13 loads, and links to the other dashboards."""
    files = sorted(BOARDS.glob("*.json"))
    boards = dashboards()
    assert len(boards) == len(files) >= 5
    for uid, board in boards.items():
        assert uid.startswith("sightline-")
        assert board["title"].startswith("Sightline / ")
        assert "sightline" in board["tags"]
        assert 39 <= board["schemaVersion"] <= 41
        assert board["id"] is None
        assert any(link.get("tags") == ["sightline"] for link in board["links"])
    titles = [board["title"] for board in boards.values()]
    assert len(set(titles)) == len(titles)


def test_panel_ids_are_unique_per_dashboard() -> None:
    """No two panels of a dashboard share an id (Grafana would mix their state up)."""
    for uid, board in dashboards().items():
        ids = [panel["id"] for panel in panels(board)]
        assert len(ids) == len(set(ids)), uid


def test_every_datasource_is_a_provisioned_uid() -> None:
    """Every panel and query names a datasource by one of the provisioned UIDs (or a
    template variable), so the dashboards work on any Grafana provisioned from compose/."""
    for uid, board in dashboards().items():
        for panel in panels(board):
            refs = [
                panel.get("datasource"),
                *(t.get("datasource") for t in panel.get("targets", [])),
            ]
            for ref in refs:
                if ref is not None:
                    assert ref["uid"] in DATASOURCES or ref["uid"].startswith("$"), (uid, panel)
        for variable in board["templating"]["list"]:
            if "datasource" in variable:
                assert variable["datasource"]["uid"] in DATASOURCES


def test_panels_fit_the_grid_without_overlapping() -> None:
    """Every panel lies inside the 24-column grid and no two panels cover the same cell."""
    for uid, board in dashboards().items():
        taken: dict[tuple[int, int], str] = {}
        for panel in panels(board):
            pos = panel["gridPos"]
            assert min(pos["w"], pos["h"]) > 0, (uid, panel["title"])
            assert min(pos["x"], pos["y"]) >= 0, (uid, panel["title"])
            assert pos["x"] + pos["w"] <= 24, (uid, panel["title"])
            for x in range(pos["x"], pos["x"] + pos["w"]):
                for y in range(pos["y"], pos["y"] + pos["h"]):
                    assert (x, y) not in taken, (uid, panel["title"], taken.get((x, y)))
                    taken[(x, y)] = panel["title"]


def test_every_panel_has_a_one_sentence_description() -> None:
    """Each panel (rows aside) carries a description of one sentence, shown on hover."""
    for uid, board in dashboards().items():
        assert board["description"].endswith(".")
        for panel in panels(board):
            if panel["type"] == "row":
                continue
            description = panel.get("description", "")
            assert description.endswith("."), (uid, panel["title"])
            assert ". " not in description.rstrip("."), (uid, panel["title"], description)


def test_every_panel_sets_a_unit() -> None:
    """Graphs, stats and table columns of numbers say what they measure (a unit)."""
    for uid, board in dashboards().items():
        for panel in panels(board):
            config = panel.get("fieldConfig", {})
            if panel["type"] in ("timeseries", "stat"):
                assert config["defaults"].get("unit"), (uid, panel["title"])
            if panel["type"] == "table" and datasource_type(panel, {}) == "prometheus":
                values = {
                    override["matcher"]["options"]
                    for override in config["overrides"]
                    for prop in override["properties"]
                    if prop["id"] == "unit"
                }
                [organize] = [t for t in panel["transformations"] if t["id"] == "organize"]
                shown = organize["options"]["includeByName"]
                assert {name for name in shown if name.startswith("Value")} <= values, (
                    uid,
                    panel["title"],
                )


def test_links_point_at_dashboards_and_datasources_that_exist() -> None:
    """Every link opens a Sightline dashboard by its UID, or Explore on a provisioned
    datasource with a query that decodes."""
    boards = dashboards()
    for board in boards.values():
        links = [
            link
            for panel in panels(board)
            for override in panel.get("fieldConfig", {}).get("overrides", [])
            for prop in override["properties"]
            if prop["id"] == "links"
            for link in prop["value"]
        ]
        for link in links:
            url = urllib.parse.urlsplit(link["url"])
            if url.path == "/explore":
                [panes] = urllib.parse.parse_qs(url.query)["panes"]
                pane = json.loads(panes)["a"]
                assert pane["datasource"] in DATASOURCES, link
                assert pane["queries"][0]["datasource"]["uid"] == pane["datasource"]
            else:
                match = re.fullmatch(r"/d/([\w-]+)/?", url.path)
                assert match, link
                assert match.group(1) in boards, link


def test_latency_panel_shows_exemplars() -> None:
    """The overview's latency panel asks Prometheus for exemplars of the request-duration
    histogram, so its dots open traces."""
    [latency] = [
        panel
        for panel in panels(dashboards()["sightline-overview"])
        if panel["type"] == "timeseries" and panel["title"].startswith("Latency")
    ]
    with_exemplars = [t for t in latency["targets"] if t.get("exemplar")]
    assert with_exemplars
    assert all("http_server_request_duration_seconds_bucket" in t["expr"] for t in with_exemplars)


def test_panels_allowed_to_be_empty_exist() -> None:
    """Every panel the live test lets return nothing is a real panel with Prometheus
    queries, so the list cannot outlive what it excuses."""
    named = {(case.board, case.title) for case in queries("prometheus")}
    assert set(MAY_BE_EMPTY) <= named, set(MAY_BE_EMPTY) - named


# -- queries against the contract


def signal_of(promql: str) -> Query | None:
    """The sightline_appliance.queries query ``promql`` renders, grouped by its own labels (and,
    for latency, at any quantile), or None."""
    selectors = re.findall(r"\{([^{}]*)\}", promql)
    by = re.search(r"by \(([^)]*)\)", promql)
    if not selectors or by is None:
        return None
    labels = tuple(label for label in by.group(1).split(", ") if label != "le")
    windows = re.findall(r"\[([^\]]+)\]", promql)[-1:]
    canonical = re.sub(r"^histogram_quantile\(0\.\d+,", "histogram_quantile(0.95,", promql)
    for signal in GOLDEN_SIGNALS:
        if dataclasses.replace(signal, by=labels).render(selectors[-1], *windows) == canonical:
            return signal
    return None


def test_overview_golden_signals_are_the_shared_queries() -> None:
    """Every overview query on the HTTP golden-signal metrics is a render of a
    sightline_appliance.queries query, so the terminal view and the dashboard compute the same
    numbers."""
    golden = re.compile(
        r"\b(http_server_request_duration_seconds|http_server_active_requests|"
        r"http_server_worker_capacity|http_server_busy_seconds|http_server_capacity_seconds)"
    )
    cases = [
        case
        for case in queries("prometheus")
        if case.board == "sightline-overview" and golden.search(case.query)
    ]
    assert len(cases) >= 12
    for case in cases:
        assert signal_of(case.query), f"{case} is not a render of sightline_appliance.queries"


def test_signal_reader_rejects_a_hand_written_variant() -> None:
    """A query that differs from the shared one (here: 4xx counted as errors) is not
    taken for a render of it."""
    shared = ERROR_RATIO.render('job=~"$service"')
    assert signal_of(shared) == ERROR_RATIO
    assert signal_of(shared.replace('=~"5.."', '=~"4..|5.."')) is None


def test_every_shared_query_is_on_a_dashboard() -> None:
    """Each golden signal of sightline_appliance.queries is drawn on some dashboard."""
    shown = {signal_of(case.query) for case in queries("prometheus")}
    missing = [signal.title for signal in GOLDEN_SIGNALS if signal not in shown]
    assert not missing, missing


def test_recording_rules_used_are_defined() -> None:
    """Every recording rule a dashboard reads (level:metric:operation) is recorded in
    alerts/*.rules.yml."""
    defined = recording_rules()
    for case in queries("prometheus"):
        for name in RULE_NAME.findall(case.query):
            assert name in defined, f"{case} reads {name}, which no rule records"


def test_metrics_used_are_in_the_contract() -> None:
    """Every metric a dashboard reads is documented in docs/metrics.md, a recording rule,
    Prometheus's own (up, ALERTS) or Tempo's metrics generator's (traces_*)."""
    documented = documented_metrics()
    rules = recording_rules()
    builtin = {"up", "ALERTS", "ALERTS_FOR_STATE"}
    for case in queries("prometheus"):
        for name in metric_names(case.query):
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            known = name in documented or base in documented or name in rules
            known = known or name in builtin or name.startswith("traces_")
            assert known, f"{case} reads {name}, which docs/metrics.md does not define"


def test_metric_name_reader_finds_names_only() -> None:
    """The PromQL reader the contract test relies on returns series names, never
    functions, labels, keywords or numbers."""
    expr = (
        'histogram_quantile(0.95, sum by (job, le) (rate(a_bucket{job=~"x|y"}[5m])))'
        " / on (job) group_left () b:c:d * 1e-3 or vector(0) > bool up"
    )
    assert metric_names(expr) == {"a_bucket", "b:c:d", "up"}


# -- Loki and Tempo


def balanced(query: str) -> bool:
    depth: list[str] = []
    pairs = {")": "(", "]": "[", "}": "{"}
    unquoted = re.sub(r'"(?:[^"\\]|\\.)*"|`[^`]*`', '""', query)
    if '"' in unquoted.replace('""', "") or "`" in unquoted:
        return False
    for char in unquoted:
        if char in "([{":
            depth.append(char)
        elif char in pairs and (not depth or depth.pop() != pairs[char]):
            return False
    return not depth


def loki_labels() -> tuple[set[str], set[str]]:
    """The stream labels and the structured-metadata keys docs/logs.md says Sightline ships."""
    text = (DOCS / "logs.md").read_text()
    streams = re.search(r"^- \*\*Streams\*\*(.*?)^- ", text, re.S | re.M)
    metadata = re.search(r"^- \*\*(.*?)structured metadata\*\*", text, re.M)
    assert streams, "docs/logs.md no longer lists the stream labels"
    assert metadata, "docs/logs.md no longer names the structured metadata"
    labels = {name for name in re.findall(r"`(\w+)`", streams.group(1)) if name.islower()}
    return labels, set(re.findall(r"`(\w+)`", metadata.group(1)))


MATCHER = re.compile(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def selects_streams(selector: str) -> bool:
    """Whether Loki accepts ``selector``: one of its matchers must not match the empty
    string (``{service_name=~".*"}`` alone is refused)."""
    for _, op, value in MATCHER.findall(selector):
        if op in ("=", "!="):
            empty = (value == "") == (op == "=")
        else:
            empty = (re.fullmatch(value, "") is not None) == (op == "=~")
        if not empty:
            return True
    return False


def test_logql_filters_on_labels_sightline_ships() -> None:
    """Every LogQL query is balanced, selects streams Loki accepts even with every service
    selected, and selects and groups only by the stream labels and structured metadata
    Sightline sends to Loki."""
    labels, metadata = loki_labels()
    assert {"service_name", "level"} <= labels
    assert metadata == {"trace_id", "span_id"}
    cases = queries("loki")
    assert cases
    for case in cases:
        assert balanced(case.query), case
        for selector in re.findall(r"\{([^{}]*)\}", case.query):
            assert selects_streams(substitute(selector)), f"Loki refuses {case}: {selector}"
            for name, _, _ in MATCHER.findall(selector):
                assert name in labels | metadata, f"{case} filters on {name}"
        for grouping in re.findall(r"\bby\s*\(([^)]*)\)", case.query):
            for name in re.split(r"\s*,\s*", grouping.strip()):
                assert name in labels, f"{case} groups by {name}"


def test_traceql_uses_attributes_sightline_records() -> None:
    """Every TraceQL query is balanced and filters only on intrinsics and on span and
    resource attributes docs/tracing.md says Sightline records."""
    documented = set(re.findall(r"`([\w.]+)`", (DOCS / "tracing.md").read_text()))
    intrinsics = {"status", "duration", "name", "kind", "statusMessage", "rootServiceName"}
    cases = queries("tempo")
    assert cases
    for case in cases:
        assert balanced(case.query), case
        text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', case.query)
        for scope, name in re.findall(r"\b(resource|span)\.([\w.]+)", text):
            assert name in documented, f"{case} filters on {scope}.{name}"
        for name in re.findall(r"(?<![\w.])([a-zA-Z]\w*)\s*(?:=~|!=|>=|<=|=|>|<)", text):
            assert name in intrinsics, f"{case} filters on {name}"


def test_loki_selector_check_rejects_what_loki_refuses() -> None:
    """The selector check used above refuses a selector that matches every stream."""
    assert not selects_streams('service_name=~".*"')
    assert not selects_streams('service_name=~".*", level!="x"')
    assert selects_streams('service_name=~".*", service_name!=""')
    assert selects_streams('level=~"error|critical"')


def test_balanced_rejects_unbalanced_queries() -> None:
    """The shape check used above fails on an unclosed brace or quote."""
    assert balanced('{a=~"x"} | json')
    assert not balanced('{a=~"x"')
    assert not balanced('{a=~"x}')
    assert not balanced("sum(rate({a}[5m])")


NODE_PARSER = """
const { parser } = require("@grafana/lezer-logql");
const queries = JSON.parse(require("fs").readFileSync(0, "utf8"));
console.log(JSON.stringify(queries.map((query) => {
  let error = null;
  parser.parse(query).iterate({
    enter: (node) => { if (node.type.isError && error === null) error = node.from; },
  });
  return error;
})));
"""


def test_logql_parses_with_grafanas_grammar() -> None:
    """Every LogQL query parses with Grafana's own LogQL grammar (@grafana/lezer-logql,
    which .ci/run installs under .ci/node)."""
    node = shutil.which("node")
    env = {**os.environ, "NODE_PATH": str(ROOT / ".ci" / "node" / "node_modules")}
    probe = [node or "node", "-e", "require.resolve('@grafana/lezer-logql')"]
    if node is None or subprocess.run(probe, env=env, capture_output=True).returncode != 0:
        if os.environ.get("CI"):
            pytest.fail("node or @grafana/lezer-logql is not installed (.ci/run installs it)")
        pytest.skip("node or @grafana/lezer-logql is not installed")
    cases = queries("loki")
    bad = '{service_name=~".*"'
    texts = [substitute(case.query) for case in cases] + [bad]
    result = subprocess.run(
        [node, "-e", NODE_PARSER],
        input=json.dumps(texts),
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=True,
    )
    errors = json.loads(result.stdout)
    assert errors[-1] is not None  # the grammar does reject a broken query
    for case, error in zip(cases, errors, strict=False):
        assert error is None, f"{case} does not parse at offset {error}: {case.query}"


# -- every Prometheus query on a real Prometheus

PRODUCER = """
import os, time
import sightline
sightline.init(service="shop")
from celery import Celery
app = Celery("shop", broker=os.environ["BROKER_URL"])
app.conf.task_default_queue = "work"
while True:
    app.send_task("tasks.add", args=(1, 2))
    app.send_task("tasks.flaky")
    app.send_task("tasks.fail")
    time.sleep(0.5)
"""


def traffic(base: str, stop: threading.Event) -> None:
    """Requests that succeed, fail (500), miss (404), are refused (418) and wait on Redis,
    SQLite and an HTTP call, each with a front-proxy timestamp, until ``stop`` is set."""
    paths = ["/users/1", "/users/2", "/boom", "/nothing-here", "/teapot/green", "/deps"]
    while not stop.is_set():
        for path in paths:
            start = f"t={time.time() - 0.02:.3f}"
            request = urllib.request.Request(base + path, headers={"X-Request-Start": start})
            try:
                with urllib.request.urlopen(request, timeout=5) as response:
                    response.read()
            except urllib.error.HTTPError as error:
                error.read()
                error.close()
            except OSError:
                pass
        stop.wait(0.1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Prometheus]]:
    """Prometheus with the rule files, scraping a gunicorn Flask app (job shop, 2 workers,
    exporting to a backend that fails twice first), a Celery worker (shop-worker) and the
    process publishing its tasks (shop-producer), all with traffic flowing."""
    for module in ("flask", "gunicorn", "celery", "redis"):
        pytest.importorskip(module)
    tmp = tmp_path_factory.mktemp("dashboards")
    backend = Backend().start()
    backend.script = [503, 400]  # one retried export, then one refused: dropped
    app_port, worker_port, producer_port = free_port(), free_port(), free_port()
    with contextlib.ExitStack() as stack:
        stack.callback(backend.stop)
        broker = stack.enter_context(redis(tmp))
        common = {"TMPDIR": str(tmp), "BROKER_URL": broker, "SIGHTLINE_QUEUE_SAMPLE_INTERVAL": "1"}
        app_env = {
            **common,
            "SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{app_port}",
            "OTEL_EXPORTER_OTLP_ENDPOINT": backend.url,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "SIGHTLINE_LOKI_URL": backend.url,
            # The backend answers GET with 501: calls that fail, for the HTTP panels.
            "DEPS_HTTP_URL": backend.url + "/deps",
        }
        base = stack.enter_context(
            gunicorn("tests.apps.flask_app:application", app_env, ["--workers", "2"], tmp)
        )
        worker_env = {**common, "SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{worker_port}"}
        stack.enter_context(celery_worker(worker_env, tmp / "worker.log"))
        producer_env = {**common, "SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{producer_port}"}
        command = [sys.executable, "-c", PRODUCER]
        stack.enter_context(process(command, producer_env, tmp / "producer.log"))
        targets = {
            "shop": f"127.0.0.1:{app_port}",
            "shop-worker": f"127.0.0.1:{worker_port}",
            "shop-producer": f"127.0.0.1:{producer_port}",
        }
        # Debian's Prometheus and the one compose pins, scraping the same processes.
        proms = {}
        for flavour in FLAVOURS:
            (tmp / flavour).mkdir()
            proms[flavour] = stack.enter_context(
                prometheus(tmp / flavour, targets, rule_files=RULE_FILES, flavour=flavour)
            )
        stop = threading.Event()
        thread = threading.Thread(target=traffic, args=(base, stop), daemon=True)
        thread.start()
        stack.callback(thread.join, 10)
        stack.callback(stop.set)
        yield proms


def run(prom: Prometheus, promql: str) -> list[Json]:
    """The query's result, or a failure quoting Prometheus's error."""
    try:
        return prom.query(promql)
    except urllib.error.HTTPError as error:
        with error:
            pytest.fail(f"Prometheus refused {promql}: {error.read().decode()}")


def has_numbers(result: list[Json]) -> bool:
    return any(not math.isnan(float(sample["value"][1])) for sample in result)


PROMETHEUS_CASES = queries("prometheus")


@pytest.mark.parametrize("flavour", FLAVOURS)
@pytest.mark.parametrize("case", PROMETHEUS_CASES, ids=str)
def test_prometheus_query_runs_and_has_data(
    stack: dict[str, Prometheus], case: Case, flavour: str
) -> None:
    """The query runs on a real Prometheus, Debian's and the version compose pins, and,
    once the app, the worker and the producer have had traffic, returns a number (panels
    that can only have data in the full stack excepted, each with its reason)."""
    prom = stack[flavour]
    promql = substitute(case.query)
    if (case.board, case.title) in MAY_BE_EMPTY:
        run(prom, promql)
        return
    result = wait_until(lambda: has_numbers(run(prom, promql)), timeout=30, every=0.5)
    assert result, f"{case} returned no number: {promql}"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_variables_list_values(stack: dict[str, Prometheus], flavour: str) -> None:
    """Every template variable's label_values() query lists at least one value."""
    for uid, board in dashboards().items():
        for variable in board["templating"]["list"]:
            if variable["type"] != "query":
                continue
            definition = variable["definition"]
            match = re.fullmatch(r"label_values\((.+), (\w+)\)", definition)
            assert match, (uid, definition)
            selector, label = substitute(match.group(1)), match.group(2)

            def values(selector: str = selector, label: str = label) -> Any:
                return stack[flavour].get(f"/api/v1/label/{label}/values", **{"match[]": selector})

            assert wait_until(values, timeout=30, every=0.5), (uid, variable["name"])
