"""`sightline stack` and `sightline demo` on this machine: real Prometheus, Alertmanager,
Redis, gunicorn and Celery processes on loopback, configured from the compose files."""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import socket
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import yaml
from sightline_appliance.demo.load import Plan, pick
from sightline_appliance.doctor import MARKER, MARKER_VALUE
from sightline_appliance.stack import BY_NAME, Stack, processes, python_command
from sightline_appliance.stack.native import (
    COMPOSE_DIR,
    DEMO_TARGETS,
    Native,
    assign_ports,
    load_compose,
    scaled,
    seconds,
)

from .helpers import free_port, wait_until
from .servers import ROOT, Prometheus, binary, launcher

# Checks the stack's files, binaries and processes: not run again by .ci/newest-sdk.
pytestmark = pytest.mark.stack

SERVICES = load_compose()["services"]
NEEDED = ("prometheus", "alertmanager", "redis")


def free_ports(services: tuple[str, ...] = (*NEEDED, "demo-app", "demo-worker")) -> dict[str, int]:
    """A free loopback port for every port of ``services``, by ``service:port``, no two
    the same (each socket is held until all are bound: a port freed may come back)."""
    native = Native(Path("/nonexistent"), SERVICES)
    keys = [key for key in native.ports if key.split(":")[0] in services]
    with contextlib.ExitStack() as held:
        ports = []
        for _ in keys:
            probe = held.enter_context(socket.socket())
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    return dict(zip(keys, ports, strict=True))


def port_args(services: tuple[str, ...] = (*NEEDED, "demo-app", "demo-worker")) -> list[str]:
    """A free loopback port for every port of ``services``, as --port options."""
    return [
        arg for key, port in free_ports(services).items() for arg in ("--port", f"{key}={port}")
    ]


def only(*names: str) -> list[str]:
    """--without options for every other component, so a machine that has, say, Loki
    installed still runs just these (on the ports the test chose)."""
    return [f"--without={c}" for c in BY_NAME if c not in names]


def sightline(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*launcher(), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


@pytest.fixture
def stack_dir(tmp_path: Path) -> Iterator[Path]:
    """A state directory; whatever it recorded is stopped afterwards, even on failure."""
    for name in NEEDED:
        binary(*BY_NAME[name].binaries)
    directory = tmp_path / "stack"
    yield directory
    try:
        Stack(directory).down(out=lambda line: None)
    finally:
        for proc in processes.ours(directory.resolve()):  # whatever the code under test missed
            proc.kill()


def test_stack_up_scrapes_the_demo_and_loads_every_rule_file(stack_dir: Path) -> None:
    """`stack up` starts Prometheus, Alertmanager and Redis; a targets file dropped in is
    scraped without a restart and the alert rules see its service down; with the demo
    shop, worker and load running against it, PromQL sees the demo's HTTP and worker
    metrics and every rule file under alerts/; a second `up` starts nothing new; `down`
    leaves no process behind."""
    up = sightline("stack", "up", "--dir", str(stack_dir), *port_args(), *only(*NEEDED))
    assert up.returncode == 0, up.stdout + up.stderr
    for name in NEEDED:
        assert re.search(rf"^{name}\s+started", up.stdout, re.M), up.stdout
    first = Stack(stack_dir)
    pids = {name: first.records[name].pid for name in NEEDED}

    again = sightline("stack", "up", "--dir", str(stack_dir))
    assert again.returncode == 0, again.stdout + again.stderr
    assert {name: Stack(stack_dir).records[name].pid for name in NEEDED} == pids
    assert again.stdout.count("already running") == len(NEEDED)

    prom = Prometheus(first.native().url("prometheus", 9090))
    # A service added by dropping a targets file, no restart: nothing listens on its
    # port, so the rules see it down at once (the alert pends for its `for:` period).
    dead = free_port()
    (stack_dir / "targets" / "checkout.yml").write_text(
        f"- targets: ['127.0.0.1:{dead}']\n  labels: {{job: checkout}}\n"
    )

    def pending(alertname: str, job: str) -> bool:
        alerts = prom.get("/api/v1/alerts")["alerts"]
        return any(
            a["labels"]["alertname"] == alertname and a["labels"].get("job") == job for a in alerts
        )

    assert wait_until(lambda: pending("SightlineServiceDown", "checkout"), timeout=30)
    demo = subprocess.Popen(
        [*launcher(), "demo", "--dir", str(stack_dir), "--duration", "40", "--refresh", "10"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    try:

        def scraped(promql: str) -> bool:
            return any(float(r["value"][1]) > 0 for r in prom.query(promql))

        assert wait_until(
            lambda: scraped('sum(http_server_request_duration_seconds_count{job="shop"})'),
            timeout=35,
        ), "no HTTP metrics from the demo shop"
        assert wait_until(
            lambda: scraped('sum(worker_task_duration_seconds_count{job="shop-worker"})'),
            timeout=35,
        ), "no task metrics from the demo worker"
        assert scraped('sum(http_server_worker_capacity{job="shop"})')
    finally:
        output, _ = demo.communicate(timeout=90)
    assert demo.returncode == 0, output
    assert "already running" in output  # the demo reused the stack
    # The view lists the alerts of the whole stack, the dropped-in service's included.
    listed = output.rpartition("PENDING (in Prometheus")[2]
    group = r"^ +\{alertname=SightlineServiceDown, job=checkout, severity=critical\}  \(1 alert\)$"
    assert re.search(group, listed, re.M), output
    # The burst (from 20 s) sends checkouts faster than the worker drains them.
    peak = prom.query('max_over_time(max(worker_queue_depth{job="shop-worker"})[5m:1s])')
    assert peak, "no queue depth scraped"
    assert float(peak[0]["value"][1]) >= 5, "the burst did not back the queue up"
    loaded = {group["file"] for group in prom.get("/api/v1/rules")["groups"]}
    expected = {str(path.resolve()) for path in (ROOT / "alerts").glob("*.rules.yml")}
    assert expected, "no rule files under alerts/"
    assert loaded == expected
    # The demo stopped its own processes and left the stack it found running.
    assert set(Stack(stack_dir).running()) == set(NEEDED)

    down = sightline("stack", "down", "--dir", str(stack_dir))
    assert down.returncode == 0, down.stderr
    assert processes.ours(stack_dir.resolve()) == []
    assert not any(psutil.pid_exists(pid) and _same(pid, stack_dir) for pid in pids.values())


def _same(pid: int, directory: Path) -> bool:
    try:
        return psutil.Process(pid).environ().get(processes.MARKER) == str(directory.resolve())
    except psutil.Error:
        return False


def test_demo_runs_for_its_duration_and_prints_golden_signals(stack_dir: Path) -> None:
    """`sightline demo --duration 30` with only Prometheus and Alertmanager (every other
    component left out, Redis included: Celery then passes messages through files) runs to
    completion, prints request rate, error ratio and p95 per route of the shop and its
    queues, then stops everything it started."""
    result = sightline(
        "demo", "--dir", str(stack_dir), "--duration", "30",
        *only("prometheus", "alertmanager"), *port_args(), timeout=150,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Prometheus    http://127.0.0.1:" in out
    rows = re.findall(
        r"^shop\s+/products/<int:product_id>\s+(\d+\.\d)\s+(\d+\.\d) %\s+(\d+) ms$", out, re.M
    )
    assert rows, out
    rate, errors, p95 = rows[-1]
    assert float(rate) > 0
    assert 0 <= float(errors) <= 100
    assert int(p95) > 0
    queues = re.findall(r"^shop-worker\s+(orders|emails)\s+(\d+)\s+", out, re.M)
    assert {name for name, _depth in queues} == {"orders", "emails"}, out
    assert "no Redis here" in out
    assert re.search(r"^redis\s+left out", out, re.M)
    # Which signals flow and which are off, and why.
    assert re.search(r"^metrics +on +scraped by Prometheus at http://127\.0\.0\.1:\d+$", out, re.M)
    assert re.search(
        r"^traces +off +left out \(--without collector, --without tempo\)", out, re.M
    ), out
    assert re.search(r"^logs +off +left out \(--without loki\)", out, re.M), out
    assert "FIRING (as Alertmanager groups and routes them)" in out
    assert "SCALING (sightline:recommended_replicas:count)" in out
    assert processes.ours(stack_dir.resolve()) == []


def test_stack_up_names_a_taken_port_and_how_to_move_it(stack_dir: Path) -> None:
    """A component whose port another program holds is reported with the port and the
    --port option that moves it; the others still start."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        result = sightline(
            "stack", "up", "--dir", str(stack_dir),
            *port_args(("alertmanager", "redis")), "--port", f"prometheus:9090={taken}",
            *only(*NEEDED),
        )  # fmt: skip
    assert result.returncode == 1
    # The holder is this test's own process: named, with its PID.
    holder_name = psutil.Process().name()
    assert (
        f"port {taken} on 127.0.0.1 (for prometheus:9090) is taken by {holder_name} "
        f"(pid {os.getpid()}); move prometheus with --port prometheus:9090=PORT, or run "
        "this whole stack beside the other one with --port-offset N"
    ) in result.stdout, result.stdout
    assert Stack(stack_dir).running() == {"alertmanager", "redis"}


def test_first_up_moves_off_a_taken_default_port_and_says_so(stack_dir: Path) -> None:
    """The first `stack up` of a state directory, finding compose's port for Prometheus
    held by another program, starts it on the next free port, naming the holder, the
    port used and how to choose; later commands keep that port."""
    with contextlib.ExitStack() as held:
        if processes.port_free(9090):
            holder = held.enter_context(socket.socket())
            holder.bind(("127.0.0.1", 9090))
            holder.listen()
        up = sightline(
            "stack", "up", "--dir", str(stack_dir), *port_args(("alertmanager", "redis")),
            *only(*NEEDED),
        )  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        moved = Stack(stack_dir).ports["prometheus:9090"]
        assert moved != 9090
        assert re.search(
            rf"^prometheus +port 9090 is taken by .+: prometheus:9090 listens on {moved} "
            r"instead \(--port prometheus:9090=PORT to choose\)$",
            up.stdout,
            re.M,
        ), up.stdout
        assert f"prometheus    started   http://127.0.0.1:{moved}" in up.stdout
    status = sightline("stack", "status", "--dir", str(stack_dir))
    assert f"http://127.0.0.1:{moved}" in status.stdout


def test_moving_one_taken_port_moves_no_other_silently(tmp_path: Path) -> None:
    """When the Collector's gRPC port (4317) is taken, it moves, and its HTTP port (4318,
    what apps send to) keeps its number rather than being pushed along; every port that
    differs from its usual number is announced."""
    with contextlib.ExitStack() as held:
        if processes.port_free(4317):
            holder = held.enter_context(socket.socket())
            holder.bind(("127.0.0.1", 4317))
            holder.listen()
        stack = Stack(tmp_path / "s")
        lines: list[str] = []
        stack._choose_ports(lines.append)
    usual = assign_ports(SERVICES, stack.listening, {})
    assert stack.ports["collector:4317"] != 4317
    if processes.port_free(4318):
        assert stack.ports["collector:4318"] == 4318
    moved = {key for key, port in stack.ports.items() if port != usual[key]}
    assert moved
    for key in moved:
        assert any(f" {key} listens on {stack.ports[key]} instead" in line for line in lines), key


def test_a_second_stack_runs_beside_the_first_with_port_offset(tmp_path: Path) -> None:
    """A second stack on the first one's ports is refused, naming the first stack's
    process and directory; the demo then says Prometheus failed and why, not that it is
    missing. With --port-offset the second stack starts on every compose port + N, and
    says where."""
    for name in NEEDED:
        binary(*BY_NAME[name].binaries)
    first, second = tmp_path / "first", tmp_path / "second"
    offset = random.randrange(20000, 30000)
    try:
        up = sightline(
            "stack", "up", "--dir", str(first), f"--port-offset={offset}", *only(*NEEDED)
        )
        assert up.returncode == 0, up.stdout + up.stderr
        assert f"prometheus    started   http://127.0.0.1:{9090 + offset}" in up.stdout

        clash = sightline(
            "demo", "--dir", str(second), f"--port-offset={offset}", "--duration", "5",
            *only(*NEEDED),
        )  # fmt: skip
        assert clash.returncode == 1
        assert re.search(
            rf"^sightline demo needs Prometheus running: port {9090 + offset} on 127\.0\.0\.1 "
            rf"\(for prometheus:9090\) is taken by prometheus \(pid \d+\) of the Sightline "
            rf"stack in {re.escape(str(first.resolve()))};",
            clash.stdout,
            re.M,
        ), clash.stdout
        assert "apt-get install" not in clash.stdout

        beside = sightline(
            "stack", "up", "--dir", str(second), f"--port-offset={offset + 7}", *only(*NEEDED)
        )
        assert beside.returncode == 0, beside.stdout + beside.stderr
        assert f"prometheus    started   http://127.0.0.1:{9097 + offset}" in beside.stdout
        assert Stack(first).running() == Stack(second).running() == set(NEEDED)
    finally:
        for directory in (first, second):
            Stack(directory).down(out=lambda line: None)


def test_status_names_absent_components_and_how_to_get_them(tmp_path: Path) -> None:
    """`stack status` lists every component: absent ones with how to install them; the
    long-term store and its ruler only with --longterm."""
    result = sightline("stack", "status", "--dir", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    for name in ("victoriametrics", "vmalert"):
        assert not re.search(rf"^{name}\s", result.stdout, re.M), result.stdout
    result = sightline("stack", "status", "--longterm", "--dir", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    for component in BY_NAME.values():
        line = re.search(rf"^{component.service}\s+(\w+)", result.stdout, re.M)
        assert line, result.stdout
        absent = processes.find_binary(component.binaries) is None
        assert (line.group(1) == "absent") == absent
        if absent:
            assert component.get_it in result.stdout


def test_bad_port_option_is_refused(tmp_path: Path) -> None:
    """A malformed --port is refused with a usage error naming it, before anything starts."""
    result = sightline("stack", "up", "--dir", str(tmp_path / "s"), "--port", "prometheus=1")
    assert result.returncode == 2
    assert "--port: expected SERVICE:PORT=HOSTPORT, got 'prometheus=1'" in result.stderr
    assert not (tmp_path / "s").exists()


def everything(tmp_path: Path) -> Native:
    return Native(tmp_path, SERVICES)


def test_native_configs_listen_and_send_on_loopback_only(tmp_path: Path) -> None:
    """Every file a component mounts, its command and its environment, rewritten for a
    native run, name only 127.0.0.1 addresses: no 0.0.0.0, no compose service names."""
    native = everything(tmp_path)
    names = "|".join(map(re.escape, SERVICES))
    leftover = re.compile(rf"(?<![\w.-])(?:0\.0\.0\.0|{names}):\d+(?![\d.])")
    checked = 0
    for service in SERVICES:
        native.write_configs(service)
        texts = [" ".join(native.command(service))]
        texts += native.environment(service, {"GRAFANA_ADMIN_PASSWORD": "x"}).values()
        for host in native.paths(service).values():
            if host.is_relative_to(tmp_path):
                files = [host] if host.is_file() else sorted(host.rglob("*"))
                texts += [f.read_text() for f in files if f.suffix in (".yml", ".yaml", ".json")]
        for text in texts:
            assert not leftover.findall(text), (service, leftover.findall(text))
            assert "0.0.0.0" not in text, (service, text)
            checked += 1
    assert checked > 20


def test_time_scale_shortens_for_and_timings_only_and_still_passes_the_checks(
    tmp_path: Path,
) -> None:
    """SIGHTLINE_STACK_TIME_SCALE=30 makes the derived rule files' `for:` 30 times shorter
    (every other line as shipped, windows included), Prometheus' intervals and every
    Alertmanager route's timings likewise (none below 1 s); the results pass promtool and
    amtool. Unscaled, the rules are loaded where they are."""
    running = {"prometheus", "alertmanager", "redis"}
    plain = Native(tmp_path / "plain", running)
    assert plain.paths("prometheus")["/etc/prometheus/alerts"] == ROOT / "alerts"
    native = Native(tmp_path / "scaled", running, time_scale=30)
    native.write_configs("prometheus")
    native.write_configs("alertmanager")
    rules = native.paths("prometheus")["/etc/prometheus/alerts"]
    assert rules.is_relative_to(tmp_path)
    changed = 0
    for shipped in sorted((ROOT / "alerts").glob("*.rules.yml")):
        before = shipped.read_text().splitlines()
        after = (rules / shipped.name).read_text().splitlines()
        assert len(before) == len(after)
        for old, new in zip(before, after, strict=True):
            if old != new:
                value = old.split("for:")[1].strip()
                assert new == old.replace(value, f"{max(1, round(seconds(value) / 30))}s")
                changed += 1
    assert changed == sum(
        len(re.findall(r"^\s*for: ", p.read_text(), re.M))
        for p in (ROOT / "alerts").glob("*.rules.yml")
    )
    assert "15m" in (ROOT / "alerts/saturation.rules.yml").read_text()
    assert "for: 30s" in (rules / "saturation.rules.yml").read_text()
    config_path = native.paths("prometheus")["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_path.read_text())
    assert config["global"] == {
        "scrape_interval": "1s",
        "scrape_timeout": "1s",
        "evaluation_interval": "1s",
    }
    assert config["rule_files"] == [f"{rules}/*.rules.yml"]
    am_path = native.paths("alertmanager")["/etc/alertmanager/alertmanager.yml"]
    shipped_am = yaml.safe_load((ROOT / "alerts/alertmanager.yml").read_text())
    scaled_am = yaml.safe_load(am_path.read_text())
    assert scaled_am["route"]["group_interval"] == "10s"  # 5m
    assert scaled_am["route"]["repeat_interval"] == "480s"  # 4h
    assert [r["group_wait"] for r in scaled_am["route"]["routes"] if "group_wait" in r] == [
        scaled(r["group_wait"], 30) for r in shipped_am["route"]["routes"] if "group_wait" in r
    ]
    assert scaled_am["inhibit_rules"] == shipped_am["inhibit_rules"]
    check = subprocess.run(
        [binary("promtool"), "check", "config", str(config_path)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr
    check = subprocess.run(
        [binary("amtool"), "check-config", str(am_path)], capture_output=True, text=True
    )
    assert check.returncode == 0, check.stdout + check.stderr


def test_a_bad_time_scale_is_refused_naming_the_setting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A time scale that is not a number from 1 to 3600 stops `stack up` before anything
    starts, with an error naming SIGHTLINE_STACK_TIME_SCALE and the value."""
    for bad in ("fast", "0.5", "0"):
        monkeypatch.setenv("SIGHTLINE_STACK_TIME_SCALE", bad)
        result = sightline("stack", "up", "--dir", str(tmp_path / "s"))
        assert result.returncode == 2
        assert f"SIGHTLINE_STACK_TIME_SCALE={bad!r} is not a number from 1 to 3600" in (
            result.stderr
        )
        assert not (tmp_path / "s").exists()


def test_native_ports_are_distinct_and_overrides_win(tmp_path: Path) -> None:
    """No two native listeners share a port; published ports keep their compose numbers
    where free; a --port override is used as given."""
    native = everything(tmp_path)
    assert len(set(native.ports.values())) == len(native.ports)
    assert native.port("collector", 4317) == 4317  # what apps on this host send to
    assert native.port("tempo", 4317) != 4317
    moved = Native(tmp_path, SERVICES, {"prometheus:9090": 19090})
    assert moved.port("prometheus", 9090) == 19090
    assert "127.0.0.1:19090" in moved.rewrite("http://prometheus:9090/api/v1/write", "tempo")


def test_native_prometheus_config_passes_promtool_and_skips_absent_services(
    tmp_path: Path,
) -> None:
    """The derived Prometheus config, with the rule files it loads, passes `promtool check
    config`, and scrapes or alerts to no component that is not running here."""
    promtool = binary("promtool")
    native = Native(tmp_path, {"prometheus", "alertmanager", "redis"})
    native.write_configs("prometheus")
    path = native.paths("prometheus")["/etc/prometheus/prometheus.yml"]
    check = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS" in check.stdout + check.stderr
    # The targets directory's README speaks of this stack: loopback addresses, its own
    # Prometheus, the file the demo writes; and its example is a valid targets file.
    targets = native.paths("prometheus")["/etc/prometheus/targets"]
    readme = (targets / "README.md").read_text()
    assert "host.docker.internal" not in readme
    assert str(targets) in readme
    assert f"http://127.0.0.1:{native.port('prometheus', 9090)}/targets" in readme
    assert f"`{DEMO_TARGETS}` is written here by `sightline demo`" in readme
    example = re.search(r"```yaml\n(.*?)```", readme, re.S)
    assert example
    (targets / "checkout.yml").write_text(example.group(1))
    check = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert yaml.safe_load(example.group(1)) == [
        {"targets": ["127.0.0.1:9464"], "labels": {"job": "checkout"}}
    ]
    config = yaml.safe_load(path.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"apps", "prometheus", "alertmanager"}
    # Only the apps' targets are labelled services (the rules select the label).
    marker = {"target_label": MARKER, "replacement": MARKER_VALUE}
    assert jobs["apps"]["relabel_configs"] == [marker]
    assert "relabel_configs" not in jobs["prometheus"]
    managers = config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert managers == [f"127.0.0.1:{native.port('alertmanager', 9093)}"]
    assert config["rule_files"] == [str((ROOT / "alerts").resolve()) + "/*.rules.yml"]


def test_demo_commands_run_with_this_interpreter() -> None:
    """The compose commands of the demo services run the same Python's modules natively."""
    native = Native(Path("/nonexistent"), SERVICES)
    app = python_command(native.command("demo-app"))
    assert app[:3] == [sys.executable, "-m", "sightline.cli"]
    after = app.index("--") + 1
    assert app[after : after + 3] == [sys.executable, "-m", "gunicorn"]
    assert f"127.0.0.1:{native.port('demo-app', 8000)}" in app
    load = python_command(native.command("demo-load"))
    assert load[0] == sys.executable
    assert f"http://127.0.0.1:{native.port('demo-app', 8000)}" in load


def test_stack_files_are_the_repository_files() -> None:
    """The package's stack files are the repository's compose/, alerts/ and dashboards/
    (one source of truth), not copies that could drift."""
    assert (ROOT / "compose").resolve() == COMPOSE_DIR


def test_demo_stops_cleanly_on_ctrl_c(stack_dir: Path) -> None:
    """Ctrl-C (SIGINT) during `sightline demo` stops the shop, its worker, the load and
    the components the demo started, and exits 0."""
    demo = subprocess.Popen(
        [
            *launcher(),
            "demo",
            "--dir",
            str(stack_dir),
            "--refresh",
            "1",
            *port_args(),
            *only(*NEEDED),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
    )
    assert demo.stdout is not None
    lines = []
    try:
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("Sightline demo ·"):
                break
        assert Stack(stack_dir).running() >= {"demo-app", "demo-worker", "demo-load"}
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 0, "".join(lines) + rest
    assert "stopping the demo" in rest
    assert processes.ours(stack_dir.resolve()) == []


def test_load_bursts_on_schedule() -> None:
    """The load plan runs the baseline rate, then bursts for burst_seconds every
    burst_every seconds from burst_start, and the burst mix leans to the slow search."""
    plan = Plan(rate=10, burst_rate=70, burst_every=60, burst_seconds=15, burst_start=20)
    assert [plan.rate_at(t) for t in (0, 19.9, 20, 34.9, 35, 79.9, 80, 94)] == [
        10, 10, 70, 70, 10, 10, 70, 70,
    ]  # fmt: skip
    random.seed(7)
    baseline = Counter(pick(False)[1].split("?")[0].split("/")[1] for _ in range(4000))
    burst = Counter(pick(True)[1].split("?")[0].split("/")[1] for _ in range(4000))
    assert burst["search"] > 3 * baseline["search"]


def test_without_names_a_component(tmp_path: Path) -> None:
    """--without accepts only the stack's component names, and says which they are."""
    result = sightline("stack", "up", "--dir", str(tmp_path / "s"), "--without", "mysql")
    assert result.returncode == 2
    assert "--without: no component 'mysql' (one of redis, victoriametrics, prometheus," in (
        result.stderr
    )
    assert not (tmp_path / "s").exists()


def test_components_not_installed_here_get_complete_native_commands(tmp_path: Path) -> None:
    """Loki, Tempo, the Collector and Grafana (not installable on our machines, so never
    started by these tests) get a command whose config files exist with loopback
    addresses, and Grafana gets loopback settings, the provisioning copy and a private
    admin password that stays the same across runs."""
    native = everything(tmp_path)
    for name in ("loki", "tempo", "collector"):
        native.write_configs(name)
        argv = BY_NAME[name].argv(f"/opt/bin/{name}", native, tmp_path)
        configs = [arg.split("=", 1)[1] for arg in argv if arg.startswith(("-config", "--config"))]
        assert configs, argv
        for config in configs:
            assert Path(config).is_file()
            assert Path(config).is_relative_to(tmp_path)
            assert "127.0.0.1" in Path(config).read_text()
    native.write_configs("grafana")
    env = BY_NAME["grafana"].environment(native, tmp_path)
    assert env["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    assert env["GF_SERVER_HTTP_PORT"] == str(native.port("grafana", 3000))
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    provisioning = Path(env["GF_PATHS_PROVISIONING"])
    sources = yaml.safe_load((provisioning / "datasources" / "datasources.yml").read_text())
    urls = {source["uid"]: source["url"] for source in sources["datasources"]}
    assert urls["prometheus"] == "${SIGHTLINE_METRICS_URL}"  # Grafana expands it from env
    assert env["SIGHTLINE_METRICS_URL"] == native.url("prometheus", 9090)
    assert urls["loki"] == native.url("loki", 3100)
    dashboards = yaml.safe_load((provisioning / "dashboards" / "dashboards.yml").read_text())
    assert Path(dashboards["providers"][0]["options"]["path"]) == (ROOT / "dashboards").resolve()
    password = env["GF_SECURITY_ADMIN_PASSWORD"]
    assert len(password) >= 20
    secret = tmp_path / "grafana" / "admin-password"
    assert secret.stat().st_mode & 0o777 == 0o600
    assert BY_NAME["grafana"].environment(native, tmp_path)["GF_SECURITY_ADMIN_PASSWORD"] == (
        password
    )


def test_stop_never_signals_a_pid_that_is_not_the_recorded_process(tmp_path: Path) -> None:
    """A record whose PID now belongs to another process (its start time differs) is not
    signalled by `down`; the recorded process itself is stopped, with its children."""
    proc, record = processes.launch(
        "sleeper",
        [sys.executable, "-c", "import subprocess, sys, time; "
         "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); "
         "time.sleep(60)"],
        {}, tmp_path / "sleeper.log",
    )  # fmt: skip
    try:
        reused = processes.Record("sleeper", record.pid, record.started - 100, record.log)
        assert not processes.stop(reused)
        assert proc.poll() is None
        assert wait_until(lambda: len(psutil.Process(proc.pid).children()) == 1, timeout=10)
        child = psutil.Process(proc.pid).children()[0]
        assert processes.stop(record)
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    finally:
        proc.kill()
        proc.wait()


def test_ctrl_c_while_a_component_starts_stops_everything_the_demo_started(
    stack_dir: Path, tmp_path: Path
) -> None:
    """Ctrl-C while the demo waits for a component to become ready stops that component
    and every component the demo had already started."""
    fake = tmp_path / "bin"
    fake.mkdir()
    loki = fake / "loki"
    loki.write_text("#!/bin/sh\nexec sleep 300\n")  # never answers /ready
    loki.chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    command = [*launcher(), "demo", "--dir", str(stack_dir), *port_args((*NEEDED, "loki"))]
    demo = subprocess.Popen(
        [*command, *only(*NEEDED, "loki")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=env,
    )
    assert demo.stdout is not None
    lines = []
    try:
        for line in demo.stdout:
            lines.append(line)
            if line.startswith("alertmanager") and "started" in line:
                break
        assert wait_until(lambda: "loki" in Stack(stack_dir).running(), timeout=10)
        demo.send_signal(signal.SIGINT)
        rest, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    output = "".join(lines) + rest
    assert "stopping the demo" in output
    assert processes.ours(stack_dir.resolve()) == [], output


def test_port_options_must_name_a_compose_port_and_not_collide(tmp_path: Path) -> None:
    """--port for a port compose does not have, or one that puts two listeners on one
    port, is refused with a message naming both."""
    unknown = sightline("stack", "up", "--dir", str(tmp_path / "a"), "--port", "prometheus:9091=1")
    assert unknown.returncode == 2
    assert "compose has no port prometheus:9091" in unknown.stderr
    ports = ["--port", "grafana:3000=19999", "--port", "prometheus:9090=19999"]
    clash = sightline("stack", "status", "--dir", str(tmp_path / "b"), *ports)
    assert clash.returncode == 2
    assert "grafana:3000 and prometheus:9090 would both listen on port 19999" in clash.stderr


def test_demo_targets_name_the_demo_on_its_native_ports(tmp_path: Path) -> None:
    """The demo's targets file, rewritten for a native run, scrapes the shop and the worker
    on their native metrics ports, labelled with their services."""
    native = Native(tmp_path, SERVICES, {"demo-app:9464": 19464, "demo-worker:9464": 19465})
    groups = yaml.safe_load(native.demo_targets())
    assert {g["labels"]["job"]: g["targets"] for g in groups} == {
        "shop": ["127.0.0.1:19464"],
        "shop-worker": ["127.0.0.1:19465"],
    }


def test_prometheus_leaves_out_a_component_that_failed_to_start(stack_dir: Path) -> None:
    """When Alertmanager cannot start (its port is taken), the running Prometheus is
    reloaded without it: no alertmanager scrape job, no Alertmanager to send to."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        result = sightline(
            "stack", "up", "--dir", str(stack_dir), *port_args(("prometheus",)),
            "--port", f"alertmanager:9093={taken}", *only("prometheus", "alertmanager"),
        )  # fmt: skip
    assert result.returncode == 1
    assert re.search(r"^alertmanager\s+FAILED", result.stdout, re.M), result.stdout
    prom = Prometheus(Stack(stack_dir).native().url("prometheus", 9090))

    def jobs() -> set[str]:
        return {t["labels"]["job"] for t in prom.get("/api/v1/targets")["activeTargets"]}

    assert wait_until(lambda: jobs() == {"prometheus"}, timeout=20), jobs()
    assert prom.get("/api/v1/alertmanagers")["activeAlertmanagers"] == []


def test_status_reports_versions_and_warns_when_compose_pins_another(tmp_path: Path) -> None:
    """`stack status` gives each installed component's version: one that is not what
    compose pins (Debian's Prometheus) is warned about, naming the pin and how to build it;
    the binaries compose/build-binaries made are reported as pinned, without a warning."""
    from .test_binaries import built

    compose = load_compose()
    pinned = compose["services"]["prometheus"]["image"].partition(":v")[2]
    debian = binary("prometheus")
    version = re.search(
        r"version (\d+\.\d+\.\d+)",
        subprocess.run([debian, "--version"], capture_output=True, text=True).stdout,
    )
    assert version is not None
    result = sightline("stack", "status", "--dir", str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    block = re.search(r"^prometheus .*\n\s+(.*)$", result.stdout, re.M)
    assert block is not None, result.stdout
    if version.group(1) != pinned:
        assert block.group(1) == (
            f"version {version.group(1)}; WARNING: compose pins {pinned}, behaviour may "
            "differ (compose/build-binaries builds the pinned one)"
        )
    folder = built("prometheus").parent
    env = {**os.environ, "PATH": f"{folder}{os.pathsep}{os.environ['PATH']}"}
    pinned_run = subprocess.run(
        [*launcher(), "stack", "status", "--dir", str(tmp_path / "p")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        env=env,
    )
    for service in ("prometheus", "alertmanager", "collector"):
        line = re.search(rf"^{service} .*\n\s+(.*)$", pinned_run.stdout, re.M)
        assert line is not None, pinned_run.stdout
        assert line.group(1).endswith("(as compose pins)"), line.group(1)
