"""Long-term storage (compose's longterm.yml, `sightline stack up --longterm`): Prometheus
remote-writes every series to a real VictoriaMetrics (Debian's package, of the 1.79 LTS
line the layer's images pin), vmalert evaluates alerts/*.rules.yml against it, and the dashboards
read from it what they read from a Prometheus that evaluates the rules itself."""

from __future__ import annotations

import contextlib
import json
import math
import re
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from sightline import cli
from sightline_appliance import alerts, hints
from sightline_appliance.doctor import default_query_url, default_ruler
from sightline_appliance.stack import BY_NAME, Stack, StackError, processes
from sightline_appliance.stack.native import (
    COMPOSE_DIR,
    COMPOSE_FILE,
    LONGTERM_FILE,
    Native,
    load_compose,
    merge_compose,
    mounts,
)

from .helpers import free_port, wait_until
from .receivers import Backend
from .servers import (
    ROOT,
    Prometheus,
    alertmanager,
    binary,
    celery_worker,
    gunicorn,
    process,
    prometheus,
    started,
)
from .test_dashboards import (
    MAY_BE_EMPTY,
    PRODUCER,
    RULE_FILES,
    Case,
    metric_names,
    queries,
    recording_rules,
    substitute,
    traffic,
)

# Checks the stack's files, binaries and processes: not run again by .ci/newest-sdk.
pytestmark = pytest.mark.stack

LONGTERM = load_compose(COMPOSE_FILE, LONGTERM_FILE)
JOBS = ("shop", "shop-worker", "shop-producer")
SELECTOR = '{job=~"shop|shop-worker|shop-producer"}'


# -- the files


def test_longterm_prometheus_config_is_the_main_one_plus_remote_write() -> None:
    """prometheus/longterm.yml is prometheus.yml with no rules and no Alertmanager (vmalert
    has them), one remote write to VictoriaMetrics and scrape jobs for it and vmalert:
    nothing else differs, so the two cannot drift apart."""
    main = yaml.safe_load((COMPOSE_DIR / "prometheus" / "prometheus.yml").read_text())
    longterm = yaml.safe_load((COMPOSE_DIR / "prometheus" / "longterm.yml").read_text())
    assert [w["url"] for w in longterm.pop("remote_write")] == [
        "http://victoriametrics:8428/api/v1/write"
    ]
    added = longterm["scrape_configs"][len(main["scrape_configs"]) :]
    assert [(job["job_name"], job["static_configs"][0]["targets"]) for job in added] == [
        ("victoriametrics", ["victoriametrics:8428"]),
        ("vmalert", ["vmalert:8880"]),
    ]
    del longterm["scrape_configs"][len(main["scrape_configs"]) :]
    del main["rule_files"], main["alerting"]
    assert longterm == main


def test_the_layer_points_prometheus_grafana_and_vmalert_at_the_store() -> None:
    """Merged as `docker compose -f docker-compose.yml -f longterm.yml` merges: Prometheus
    runs the long-term config with its other flags and mounts intact, Grafana's data
    source reads VictoriaMetrics, and vmalert reads the repository's rules from it,
    writes back to it and notifies Alertmanager."""
    base = load_compose()["services"]
    services = LONGTERM["services"]
    prom = services["prometheus"]
    assert prom["command"][0] == "--config.file=/etc/prometheus/longterm.yml"
    assert prom["command"][1:] == base["prometheus"]["command"][1:]
    targets = [str(v).split(":")[1] for v in prom["volumes"]]
    assert targets == [
        *(str(v).split(":")[1] for v in base["prometheus"]["volumes"]),
        "/etc/prometheus/longterm.yml",
    ]
    assert services["grafana"]["environment"]["SIGHTLINE_METRICS_URL"] == (
        "http://victoriametrics:8428"
    )
    assert base["grafana"]["environment"]["SIGHTLINE_METRICS_URL"] == "http://prometheus:9090"
    vmalert = services["vmalert"]["command"]
    assert "-rule=/etc/alerts/*.rules.yml" in vmalert
    assert "../alerts:/etc/alerts:ro" in services["vmalert"]["volumes"]
    for flag in ("datasource", "remoteWrite", "remoteRead"):
        assert f"-{flag}.url=http://victoriametrics:8428" in vmalert
    assert "-notifier.url=http://alertmanager:9093" in vmalert
    assert "victoriametrics-data" in LONGTERM["volumes"]
    # Both images run the 1.79 LTS line, which Debian packages and the tests here run.
    for name in ("victoriametrics", "vmalert"):
        assert services[name]["image"].rpartition(":")[2].startswith("v1.79."), services[name]


def test_merge_replaces_commands_and_merges_environment_and_mounts_by_key() -> None:
    """The merge follows compose's rules: a command is replaced, environment and
    depends_on merge by key, volumes by container path (a later mount wins)."""
    base = {
        "services": {
            "a": {
                "command": ["x", "y"],
                "environment": ["K=1", "L=2"],
                "depends_on": ["b"],
                "volumes": ["./one:/etc/one:ro", "data:/data"],
            }
        },
        "volumes": {"data": None},
    }
    layer = {
        "services": {
            "a": {
                "command": ["z"],
                "environment": {"L": "3"},
                "depends_on": {"c": {"condition": "service_started"}},
                "volumes": ["./two:/etc/one:ro"],
            },
            "c": {"image": "c:1"},
        },
        "volumes": {"more": None},
    }
    merged = merge_compose(base, layer)
    a = merged["services"]["a"]
    assert a["command"] == ["z"]
    assert a["environment"] == {"K": "1", "L": "3"}
    assert a["depends_on"] == {"b": {}, "c": {"condition": "service_started"}}
    assert a["volumes"] == ["data:/data", "./two:/etc/one:ro"]
    assert merged["services"]["c"] == {"image": "c:1"}
    assert merged["volumes"] == {"data": None, "more": None}
    assert base["services"]["a"]["command"] == ["x", "y"]  # the inputs are left alone
    # Compose merges ports and healthchecks in ways not implemented: refused, not guessed.
    for key, value in (("ports", ["1:1"]), ("healthcheck", {"test": ["CMD", "true"]})):
        first = {"services": {"a": {key: value}}}
        with pytest.raises(ValueError, match=rf"services\.a\.{key}: a layer may not"):
            merge_compose(first, {"services": {"a": {key: value}}})
    # Top-level keys it does not merge (networks, secrets, configs) are refused, not
    # dropped; a service given with no keys changes nothing; x- fields are YAML anchors.
    for key in ("networks", "secrets", "configs"):
        with pytest.raises(ValueError, match=rf"^{key}: a layer may not add them here"):
            merge_compose(base, {key: {"n": {}}, "services": {}})
    same = merge_compose(base, {"x-s3": {"K": "1"}, "services": {"a": None}})
    assert same["services"] == base["services"]
    # A new service with nothing to run is refused, naming it, not added empty.
    for empty in (None, {"command": ["x"]}):
        with pytest.raises(ValueError, match=r"^services\.d: a service a layer adds needs"):
            merge_compose(base, {"services": {"d": empty}})


def test_mounts_without_a_source_are_the_services_own_data_directories(tmp_path: Path) -> None:
    """An anonymous volume (short or long syntax) or a tmpfs in a layer is read, replaces the
    mount at its target, and natively gets a data directory of the service's own (one per
    target, a tmpfs's emptied at each start), made under the stack's directory, never a
    host path or the service's whole directory; long syntax's type decides bind or volume,
    and a kind of mount that cannot be made natively is refused, naming it."""
    base = {
        "services": {"a": {"command": ["x"], "volumes": ["./one:/etc/one:ro", "/cache/a-b"]}},
    }
    layer = {
        "services": {
            "a": {
                "volumes": [
                    {"type": "tmpfs", "target": "/etc/one", "tmpfs": {"size": 1000}},
                    {"type": "volume", "target": "/cache/a/b"},
                    {"type": "bind", "source": "conf", "target": "/etc/conf"},
                    {"type": "volume", "source": "./data", "target": "/data"},
                ]
            }
        }
    }
    merged = merge_compose(base, layer)
    found = mounts(merged["services"]["a"])
    assert [(m.target, m.source, m.named, m.scratch) for m in found] == [
        ("/cache/a-b", "anonymous-cache%2Fa-b", True, False),
        ("/etc/one", "anonymous-etc%2Fone", True, True),
        ("/cache/a/b", "anonymous-cache%2Fa%2Fb", True, False),
        ("/etc/conf", "conf", False, False),
        ("/data", "./data", True, False),
    ]
    volumes = {m.target: m for m in found if m.named}
    merged["services"]["a"]["volumes"] = [
        e for e, m in zip(merged["services"]["a"]["volumes"], found, strict=True) if m.named
    ]
    native = Native(tmp_path, ["a"], compose=merged, listening={"a": []})
    native.write_configs("a")
    paths = native.paths("a")
    assert paths == {target: tmp_path / "a" / m.source for target, m in volumes.items()}
    assert all(path.is_dir() for path in paths.values())
    for target in ("/etc/one", "/cache/a/b"):
        (paths[target] / "left").write_text("from the last run")
    native.write_configs("a")  # the next start
    assert not (paths["/etc/one"] / "left").exists()
    assert (paths["/cache/a/b"] / "left").exists()
    with pytest.raises(ValueError, match=r"^volumes: a npipe mount at /p cannot be made"):
        mounts({"volumes": [{"type": "npipe", "source": "x", "target": "/p"}]})


def test_a_layer_the_merge_cannot_read_is_refused_naming_it(tmp_path: Path) -> None:
    """A layer using compose's own YAML tags (!reset, !override), which this merge does not
    implement, or adding networks, is an error naming the file, not a partial merge."""
    tagged = tmp_path / "tagged.yml"
    tagged.write_text("services:\n  prometheus:\n    ports: !reset []\n")
    with pytest.raises(ValueError, match=rf"^{tagged}: not YAML this merge reads"):
        load_compose(COMPOSE_FILE, tagged)
    networked = tmp_path / "networked.yml"
    networked.write_text("networks:\n  outside: {external: true}\n")
    with pytest.raises(ValueError, match=rf"^{networked}: networks: a layer may not add"):
        load_compose(COMPOSE_FILE, networked)


def test_vmalert_accepts_every_rule_file_and_refuses_a_broken_one(tmp_path: Path) -> None:
    """vmalert (Debian's, of the line the layer pins) parses alerts/*.rules.yml, templates
    included (-dryRun), and the same check fails on a rule it cannot parse."""
    exe = binary(*BY_NAME["vmalert"].binaries)
    ok = subprocess.run(
        [exe, "-dryRun", "-rule=" + str(ROOT / "alerts" / "*.rules.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    broken = tmp_path / "broken.rules.yml"
    broken.write_text(
        "groups:\n  - name: x\n    rules:\n"
        "      - record: a:b:c\n        expr: sum(rate(x[5m]) by\n"
    )
    bad = subprocess.run([exe, "-dryRun", f"-rule={broken}"], capture_output=True, text=True)
    assert bad.returncode != 0
    assert "a:b:c" in bad.stderr


def test_alerts_reads_a_quiet_vmalert_as_no_alerts_not_as_an_error(tmp_path: Path) -> None:
    """`sightline alerts` against a vmalert with no active alert (Debian 12's answers
    `"alerts": null` there, newer ones an empty list) shows no alert and no error, as for
    a quiet Prometheus."""
    rules = tmp_path / "quiet.rules.yml"
    rules.write_text(
        "groups:\n  - name: quiet\n    rules:\n      - alert: Never\n        expr: vector(1) == 0\n"
    )
    port = free_port()
    for part in ("p", "a"):
        (tmp_path / part).mkdir()
    with (
        prometheus(tmp_path / "p", {}) as prom,
        alertmanager(tmp_path / "a", ROOT / "alerts" / "alertmanager.yml") as manager,
    ):
        argv = [
            binary(*BY_NAME["vmalert"].binaries),
            f"-rule={rules}",
            f"-datasource.url={prom.url}",
            f"-notifier.url={manager}",
            f"-httpListenAddr=127.0.0.1:{port}",
            "-evaluationInterval=1s",
        ]
        url = f"http://127.0.0.1:{port}"
        with started("vmalert", argv, tmp_path, f"{url}/health"):
            with urllib.request.urlopen(f"{url}/api/v1/alerts", timeout=5) as response:
                assert json.load(response)["data"]["alerts"] in (None, [])
            found = alerts.read(url, manager)
    assert found.errors == []
    assert (found.pending, found.firing) == ([], [])


def test_status_gives_the_store_and_ruler_versions_even_when_the_binary_prints_none(
    tmp_path: Path,
) -> None:
    """`stack status --longterm` gives VictoriaMetrics' and vmalert's version: the
    binary's own, or, when it prints none (Debian's build), that of the Debian package
    that installed it, saying so, and warns when compose pins another."""
    command = ["stack", "status", "--longterm", "--dir", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, "-m", "sightline.cli", *command],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    compose = load_compose(COMPOSE_FILE, LONGTERM_FILE)
    for service in ("victoriametrics", "vmalert"):
        exe = binary(*BY_NAME[service].binaries)
        line = re.search(rf"^{service} .*\n\s+(.*)$", result.stdout, re.M)
        assert line is not None, result.stdout
        own = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
        said = re.search(r"(\d+\.\d+\.\d+)", own.stdout + own.stderr)
        if said is None:
            query = ["dpkg-query", "-W", "-f=${Version}", "victoria-metrics"]
            package = subprocess.run(query, capture_output=True, text=True, check=True)
            found = re.match(r"(?:\d+:)?(\d+\.\d+\.\d+)", package.stdout)
            assert found is not None, package.stdout
            version = found.group(1)
            source = f"its package's: {exe} --version says none"
        else:
            version, source = said.group(1), ""
        pinned = compose["services"][service]["image"].partition(":v")[2]
        notes = ["as compose pins"] if version == pinned else []
        notes += [source] if source else []
        expected = f"version {version}" + (f" ({'; '.join(notes)})" if notes else "")
        if version != pinned:
            expected += f"; WARNING: compose pins {pinned}, behaviour may differ"
        assert line.group(1) == expected, line.group(1)


def test_longterm_refuses_to_run_without_its_store_or_ruler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--longterm with VictoriaMetrics or vmalert left out is refused, naming the fix; with
    either not installed, `up` reports it as a failure (exit 1), not as an optional
    component absent: without vmalert nothing would evaluate the rules."""
    for name in ("victoriametrics", "vmalert"):
        with pytest.raises(StackError, match=r"--longterm needs victoriametrics and vmalert"):
            Stack(tmp_path / name, without=(name,), longterm=True)
    others = tuple(name for name in BY_NAME if name not in ("victoriametrics", "vmalert"))
    stack = Stack(tmp_path / "s", without=others, longterm=True)
    monkeypatch.setattr(Stack, "available", lambda self: {})
    lines: list[str] = []
    started, failures = stack.up(lines.append)
    assert started == []
    assert set(failures) == {"victoriametrics", "vmalert"}
    assert "apt-get install victoria-metrics" in failures["vmalert"]
    assert any(line.startswith("vmalert") and "FAILED" in line for line in lines), lines


def test_time_scale_shortens_the_store_delays_too(tmp_path: Path) -> None:
    """Divided by 5 for alert tests: vmalert's interval, the store's latency offset and
    Prometheus' remote-write batch deadline, so the rules' inputs are not held back longer
    than the shortened `for:` durations."""
    native = Native(tmp_path, LONGTERM["services"], compose=LONGTERM, time_scale=5)
    assert "-evaluationInterval=1s" in native.command("vmalert")
    assert "-search.latencyOffset=2s" in native.command("victoriametrics")
    native.write_configs("prometheus")
    config = yaml.safe_load((tmp_path / "prometheus" / "config" / "longterm.yml").read_text())
    assert config["remote_write"][0]["queue_config"]["batch_send_deadline"] == "1s"
    assert config["remote_write"][0]["url"] == native.url("victoriametrics", 8428, "/api/v1/write")


# -- the running stack


class Store(Prometheus):
    """VictoriaMetrics' Prometheus-compatible query API."""

    def flush(self) -> None:
        with urllib.request.urlopen(f"{self.url}/internal/force_flush", timeout=5):
            pass


def longterm_ports() -> dict[str, int]:
    """A free loopback port for every port of the components started here."""
    native = Native(Path("/nonexistent"), LONGTERM["services"], compose=LONGTERM)
    wanted = ("prometheus", "alertmanager", "redis", "victoriametrics", "vmalert")
    ports: dict[str, int] = {}
    for key in native.ports:
        if key.split(":")[0] in wanted:
            ports[key] = free_port()
    return ports


@pytest.fixture(scope="module")
def longterm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """`sightline stack up --longterm` (Prometheus, Alertmanager, Redis, VictoriaMetrics,
    vmalert; intervals divided by 5) scraping a gunicorn Flask app, a Celery worker and
    the process publishing its tasks, with traffic flowing; beside it, a Prometheus
    that scrapes the same processes and evaluates the rules itself."""
    for module in ("flask", "gunicorn", "celery", "redis"):
        pytest.importorskip(module)
    for name in ("prometheus", "alertmanager", "redis", "victoriametrics", "vmalert"):
        binary(*BY_NAME[name].binaries)
    tmp = tmp_path_factory.mktemp("longterm")
    directory = tmp / "state" / "sightline" / "stack"  # default_dir() under XDG_STATE_HOME
    without = ("loki", "tempo", "collector", "grafana")
    stack = Stack(directory, longterm_ports(), without, time_scale=5, longterm=True)
    lines: list[str] = []
    with contextlib.ExitStack() as stop:
        stop.callback(lambda: [p.kill() for p in processes.ours(directory)])
        stop.callback(lambda: Stack(directory).down(lambda line: None))
        _started, failures = stack.up(lines.append)
        assert not failures, lines
        native = stack.native()
        broker = f"redis://127.0.0.1:{native.port('redis', 6379)}/0"
        app_port, worker_port, producer_port = free_port(), free_port(), free_port()
        common = {"TMPDIR": str(tmp), "BROKER_URL": broker, "SIGHTLINE_QUEUE_SAMPLE_INTERVAL": "1"}
        backend = Backend().start()
        stop.callback(backend.stop)
        backend.script = [503, 400]  # as for the dashboards' own test: drops to show
        app_env = {
            **common,
            "SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{app_port}",
            "OTEL_EXPORTER_OTLP_ENDPOINT": backend.url,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "SIGHTLINE_LOKI_URL": backend.url,
            "DEPS_HTTP_URL": backend.url + "/deps",  # answered 501: failing HTTP calls
        }
        base = stop.enter_context(
            gunicorn("tests.apps.flask_app:application", app_env, ["--workers", "2"], tmp)
        )
        worker_env = {**common, "SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{worker_port}"}
        stop.enter_context(celery_worker(worker_env, tmp / "worker.log"))
        producer_env = {**common, "SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{producer_port}"}
        stop.enter_context(process([sys.executable, "-c", PRODUCER], producer_env, tmp / "p.log"))
        targets = {
            "shop": f"127.0.0.1:{app_port}",
            "shop-worker": f"127.0.0.1:{worker_port}",
            "shop-producer": f"127.0.0.1:{producer_port}",
        }
        (directory / "targets" / "shop.yml").write_text(
            yaml.safe_dump([{"targets": [t], "labels": {"job": j}} for j, t in targets.items()])
        )
        (tmp / "rules").mkdir()
        ruled = stop.enter_context(prometheus(tmp / "rules", targets, rule_files=RULE_FILES))
        halt = threading.Event()
        thread = threading.Thread(target=traffic, args=(base, halt), daemon=True)
        thread.start()
        stop.callback(thread.join, 10)
        stop.callback(halt.set)
        started = time.time()
        yield {
            "started": started,
            "prometheus": Prometheus(native.url("prometheus", 9090)),
            "store": Store(native.url("victoriametrics", 8428)),
            "vmalert": native.url("vmalert", 8880),
            "ruled": ruled,
            "lines": lines,
            "directory": directory,
            "alertmanager": native.url("alertmanager", 9093),
        }


def test_the_mode_stays_with_the_directory_and_cannot_change_under_a_running_stack(
    longterm: dict[str, Any],
) -> None:
    """`up --longterm` started VictoriaMetrics before Prometheus and vmalert after
    Alertmanager; the directory remembers the mode (a later command without the flag
    keeps it), and switching it off while the stack runs is refused, naming the fix."""
    started = [line.split()[0] for line in longterm["lines"] if " started " in line]
    assert started.index("victoriametrics") < started.index("prometheus"), started
    assert started.index("alertmanager") < started.index("vmalert"), started
    directory = longterm["directory"]
    again = Stack(directory)
    assert again.longterm
    assert {"victoriametrics", "vmalert"} <= {c.service for c in again.components()}
    with pytest.raises(StackError, match=r"runs with --longterm; stop it first"):
        Stack(directory, longterm=False)
    plain = Stack(directory.parent / "plain")
    assert not plain.longterm
    assert not {"victoriametrics", "vmalert"} & {c.service for c in plain.components()}


def test_commands_read_the_rules_where_they_run(
    longterm: dict[str, Any], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Under --longterm `sightline hints` (and the demo's view) read the recorded series
    from the store and `sightline alerts` the pending alerts from vmalert, by default, and
    says they wait in vmalert: the stack's Prometheus evaluates no rules, so reading it
    would show no hint at all."""
    directory = longterm["directory"]
    monkeypatch.setenv("XDG_STATE_HOME", str(directory.parent.parent))
    assert default_query_url() == longterm["store"].url
    assert default_ruler() == (longterm["vmalert"], "vmalert")
    settled(longterm)
    assert {h.service for h in hints.read(longterm["prometheus"].url)} == set()
    assert wait_until(
        lambda: {"shop", "shop-worker"} <= {h.service for h in hints.read(default_query_url())},
        timeout=30,
        every=2,
    ), hints.read(default_query_url())

    def shown() -> alerts.Alerts | None:
        found = alerts.read(longterm["vmalert"], longterm["alertmanager"])
        return found if found.pending or found.firing else None

    found = wait_until(shown, timeout=30, every=2)
    assert found is not None
    assert not found.errors, found.errors
    names = {a.labels["alertname"] for g in found.pending + found.firing for a in g.alerts}
    assert names & {"SightlineHighErrorRatio", "SightlineAvailabilityBudgetBurn"}, names
    assert cli.main(["alerts", "--alertmanager", longterm["alertmanager"]]) == 0
    assert "PENDING (in vmalert until their `for` passes" in capsys.readouterr().out
    # The store answers vmalert's alerts itself (-vmalert.proxyURL), as the demo reads them.
    proxied = alerts.read(longterm["store"].url, longterm["alertmanager"])
    assert {a.labels["alertname"] for g in proxied.pending + proxied.firing for a in g.alerts}


#: Metric labels as a hashable key; vmalert labels the ALERTS series with its group too.
Labels = tuple[tuple[str, str], ...]


def at(server: Prometheus, promql: str, when: float) -> dict[Labels, float]:
    """The instant query's non-NaN results for the apps' jobs at ``when`` (the store drops
    NaN results, Prometheus returns them; neither scrapes the other's own components)."""
    found = {}
    for sample in server.get("/api/v1/query", query=promql, time=f"{when:.3f}")["result"]:
        labels = {k: v for k, v in sample["metric"].items() if k != "alertgroup"}
        value = float(sample["value"][1])
        if labels.get("job", JOBS[0]) in JOBS and not math.isnan(value):
            found[tuple(sorted(labels.items()))] = value
    return found


def settled(longterm: dict[str, Any], age: float = 80) -> float:
    """A time the store answers for (older than its latency offset, flushed) once the
    traffic has run ``age`` seconds, so one-minute windows hold only steady traffic."""
    wait = longterm["started"] + age - time.time()
    if wait > 0:
        time.sleep(wait)
    longterm["store"].flush()
    return time.time() - 15


def test_every_scraped_sample_reaches_the_store(longterm: dict[str, Any]) -> None:
    """Every series Prometheus scraped from the apps is in VictoriaMetrics, and an instant
    query at one time gives the same value from both (to a relative 1e-9: the store keeps
    about 12 significant digits): remote write carries everything, histograms' buckets
    included."""
    when = settled(longterm)
    scraped = at(longterm["prometheus"], SELECTOR, when)
    stored = at(longterm["store"], SELECTOR, when)
    assert len(scraped) > 500, len(scraped)
    assert {name for (_, name), *_ in scraped} >= {
        "http_server_request_duration_seconds_bucket",
        "worker_task_duration_seconds_count",
        "worker_tasks_published_total",
    }
    missing = [labels for labels in scraped if labels not in stored]
    assert not missing, missing[:5]
    wrong = [
        (labels, value, stored[labels])
        for labels, value in scraped.items()
        if not math.isclose(value, stored[labels], rel_tol=1e-9, abs_tol=1e-12)
    ]
    assert not wrong, wrong[:5]


#: Recording rules whose values do not move while the apps run.
STEADY_RULES = (
    "instance:process_cpu_limit_cores:max",
    "instance:process_memory_limit_bytes:max",
    "job:http_server_worker_capacity:sum",
    "job:worker_capacity:sum",
    "sightline:actual_replicas:count",
    "slo:objective:ratio",
)


def test_vmalert_records_every_rule_prometheus_records(longterm: dict[str, Any]) -> None:
    """Each recording rule with results on the Prometheus that evaluates the rules itself
    has results for the same series in the store, recorded there by vmalert, and the
    rules over steady gauges the same values."""
    when = settled(longterm)
    names = sorted(recording_rules())

    def differences() -> list[str]:
        found = []
        for name in names:
            own = set(at(longterm["ruled"], name, when))
            stored = set(at(longterm["store"], name, when))
            if own != stored:
                found.append(f"{name}: only Prometheus {own - stored}, only store {stored - own}")
        return found

    assert wait_until(lambda: not differences(), timeout=60, every=5), differences()
    # Rules over gauges that hold still while the apps run (limits, capacities, replicas,
    # objectives) record the same values on both rulers. (Those over rates differ for a
    # series younger than the window: VictoriaMetrics divides by the time the samples
    # span, Prometheus by the window.)
    for name in STEADY_RULES:
        own, stored = at(longterm["ruled"], name, when), at(longterm["store"], name, when)
        assert own, name
        assert stored == pytest.approx(own, rel=1e-9), name
    vmalert = longterm["vmalert"]
    with urllib.request.urlopen(f"{vmalert}/api/v1/rules", timeout=5) as response:
        groups = json.load(response)["data"]["groups"]
    errors = [r for g in groups for r in g["rules"] if r.get("lastError")]
    assert not errors, errors[:3]
    recording = {r["name"] for g in groups for r in g["rules"] if r["type"] == "recording"}
    assert recording == set(names)
    # The stack's own components are not services, on the store as on Prometheus.
    jobs = {
        sample["metric"]["job"]
        for sample in longterm["store"].query("sightline:actual_replicas:count")
    }
    assert jobs == set(JOBS), jobs


PROMETHEUS_CASES = queries("prometheus")


#: Series the rules write: read from a Prometheus evaluating them, not from the scrapes.
RULE_OUTPUTS = recording_rules() | {"ALERTS", "ALERTS_FOR_STATE"}


@pytest.mark.parametrize("case", PROMETHEUS_CASES, ids=str)
def test_dashboard_query_reads_the_same_from_the_store(
    longterm: dict[str, Any], case: Case
) -> None:
    """The query returns the same series from VictoriaMetrics as from Prometheus, with
    numbers (panels that can only have data in the full stack excepted). A query of
    scraped series is compared with the Prometheus that remote-writes them, on the same
    samples: equal values without a range, within 25 % over one-minute windows (the two
    engines' rate() treat a window's edges differently, which for a counter moving in
    steps, a batch of spans dropped at once, is a step in 60 s), series alone over longer
    windows (the series are younger than them). A query of the rules' series is compared
    with a Prometheus evaluating the rules itself: series alone (it scrapes separately)."""
    promql = substitute(case.query)
    when = settled(longterm)
    windows = set(re.findall(r"\[(\w+)\]", promql))
    ruled = bool(metric_names(promql) & RULE_OUTPUTS)
    reference = longterm["ruled"] if ruled else longterm["prometheus"]

    def same_series() -> tuple[dict[Labels, float], dict[Labels, float]] | None:
        own, stored = at(reference, promql, when), at(longterm["store"], promql, when)
        return (own, stored) if set(own) == set(stored) else None

    # vmalert's chained rules (a ratio of recorded series) settle a few rounds late.
    found = wait_until(same_series, timeout=45, every=5)
    own, stored = found or (at(reference, promql, when), at(longterm["store"], promql, when))
    assert set(own) == set(stored), (promql, set(own) ^ set(stored))
    if (case.board, case.title) not in MAY_BE_EMPTY:
        assert stored, f"{case} returned no number from the store: {promql}"
    if ruled or not windows <= {"1m"}:
        return
    tolerance = 0.25 if windows else 1e-9
    far = {
        labels: (value, stored[labels])
        for labels, value in own.items()
        if not math.isclose(value, stored[labels], rel_tol=tolerance, abs_tol=1e-12)
    }
    assert not far, (promql, far)
