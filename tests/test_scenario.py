"""The shipped alerts and scaling hints end to end, as a team lives them: two native stacks
(real Prometheus, Alertmanager and Redis; the demo shop under gunicorn and its Celery
worker) with their timings divided by SIGHTLINE_STACK_TIME_SCALE (``for:``, intervals,
Alertmanager's grouping; every rule and window otherwise as shipped), and the test's
webhook behind every receiver that notifies.

One stack (Prometheus and Alertmanager at the versions compose pins), with hours of
healthy traffic behind it, lives through a sale that starts with the payment provider
down; the other (Debian's) then gets the demo's steady load for longer than the sale and
its alerts last."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from sightline_appliance.demo.load import Load, Plan
from sightline_appliance.demo.run import start_demo
from sightline_appliance.stack import BY_NAME, Stack, processes

from .helpers import wait_until
from .receivers import Posts
from .servers import Prometheus, binary, pinned_dir
from .test_stack import NEEDED, free_ports

pytestmark = pytest.mark.stack

#: Every `for:` and Alertmanager timing divided by this: 15m -> 30s, 5m -> 10s.
SCALE = 30
#: A sale: requests past what the shop's 8 request slots serve, checkouts past what its
#: 2 task slots drain; and in its first seconds the payment provider is down (checkouts
#: answer 502: a tenth of the sale's requests).
SALE_END, SALE_RATE, PAYMENT_DOWN = 60.0, 150.0, 15.0
#: The troubled stack's story, resolutions included, is over within this. The worker's
#: scale-up hint resolves last: its queue drains two to three minutes after the sale, its
#: 5-minute mean of busy task slots falls a minute or two later, and the recommendation
#: holds the higher value for 5 minutes more (about 600 s in all here).
STORY = 780.0
#: The troubled shop's past, written into its Prometheus before it starts: it served
#: HISTORY_RATE requests a second, none failed or slow, for HISTORY seconds, then had no
#: traffic for QUIET seconds before the sale. The SLO tickets' 1-day and 3-day windows
#: weigh the sale against that day, as on a stack that has been running; the pages' windows
#: (an hour at most) see the sale alone.
HISTORY, HISTORY_RATE, QUIET = 8 * 3600, 50.0, 3600
SLO_ALERTS = ("SightlineAvailabilityBudgetBurn", "SightlineLatencyBudgetBurn")
DEMO_JOBS = ("shop", "shop-worker")
#: What the sale must fire and deliver, at least.
WANTED = (
    ("SightlineAvailabilityBudgetBurn", "shop", "critical"),
    ("SightlineInFlightNearCapacity", "shop", "warning"),
    ("SightlineScaleUpRecommended", "shop", "warning"),
    ("SightlineScaleUpRecommended", "shop-worker", "warning"),
)


@dataclass
class Demo:
    """One native stack running the demo, with the test's own load."""

    stack: Stack
    prometheus: Prometheus
    alertmanager: str
    posts: Posts
    path: str
    load: Load | None = None
    threads: list[threading.Thread] = field(default_factory=list)
    launched: list[str] = field(default_factory=list)

    def notified(self) -> list[dict[str, Any]]:
        """Every alert the webhook was sent (status, labels, annotations), in order."""
        return [alert for body in self.posts.at(self.path) for alert in body["alerts"]]

    def alerts(self) -> list[dict[str, str]]:
        """Prometheus' ALERTS series: every alert pending or firing now."""
        return [series["metric"] for series in self.prometheus.query("ALERTS")]

    def values(self, promql: str) -> dict[str, float]:
        """``promql`` by job."""
        return {
            s["metric"].get("job", ""): float(s["value"][1]) for s in self.prometheus.query(promql)
        }

    def start_load(self, plan: Plan, fault: str = "", seconds: float = 0.0) -> None:
        """Send ``plan``'s load, asking the shop for ``fault`` for its first ``seconds``."""
        native = self.stack.native()
        self.load = load = Load(native.url("demo-app", 8000), plan, concurrency=96)
        if fault:
            load.inject(fault, seconds)
        thread = threading.Thread(target=load.run, args=(None,), daemon=True)
        thread.start()
        self.threads.append(thread)


def write_history(data: Path, promtool: str, end: float) -> int:
    """The SLO rules' per-job rates (what ``sightline.slo.sli`` records) for the shop's
    healthy past, HISTORY seconds up to ``end``, one sample per rule evaluation of the
    scaled stack (every second), as TSDB blocks in Prometheus' data directory ``data``
    (``promtool tsdb create-blocks-from openmetrics``). Returns the samples per series."""
    start, steps = end - HISTORY, HISTORY
    lines = []
    for name, value in (("slo:sli_total:rate5m", HISTORY_RATE), ("slo:sli_error:rate5m", 0.0)):
        lines.append(f"# TYPE {name} gauge")
        for slo in ("availability", "latency"):
            series = f'{name}{{job="shop",slo="{slo}"}} {value:g}'
            lines.extend(f"{series} {start + i:.3f}" for i in range(steps))
    lines.append("# EOF")
    data.mkdir(parents=True, exist_ok=True)
    source = data.parent / "history.om"
    source.write_text("\n".join(lines) + "\n")
    subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", str(source), str(data)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    source.unlink()
    return steps


@contextlib.contextmanager
def demo(
    directory: Path,
    posts: Posts,
    path: str,
    bin_dir: Path | None,
    before: Callable[[Path], None] | None = None,
) -> Iterator[Demo]:
    """A native stack in ``directory`` (its binaries from ``bin_dir`` first if given) with
    the test's webhook at ``path`` behind every receiver, running the demo's shop and
    worker without their load; stopped afterwards, whatever happens. ``before`` gets
    Prometheus' data directory before anything starts."""
    ports = free_ports((*NEEDED, "demo-app", "demo-worker"))
    without = [name for name in BY_NAME if name not in NEEDED]
    stack = Stack(directory, ports, without, time_scale=SCALE)
    running = Demo(stack, Prometheus(""), "", posts, path)
    saved = os.environ["PATH"]
    try:
        if before is not None:
            before(stack.native().paths("prometheus")["/prometheus"])
        if bin_dir is not None:
            os.environ["PATH"] = f"{bin_dir}{os.pathsep}{saved}"
        try:
            _started, failures = stack.up(out=lambda line: None)
        finally:
            os.environ["PATH"] = saved
        assert not failures, failures
        native = stack.native()
        running.prometheus = Prometheus(native.url("prometheus", 9090))
        running.alertmanager = native.url("alertmanager", 9093)
        _notify_the_test(directory, posts.url(path), running.alertmanager)
        os.environ["SHOP_CHECKOUT_FAILURES"] = "0"  # no errors but the test's own
        try:
            start_demo(stack, running.launched, load=False)
        finally:
            del os.environ["SHOP_CHECKOUT_FAILURES"]
        scraped = f'count(up{{job=~"{"|".join(DEMO_JOBS)}"}} == 1)'
        assert wait_until(lambda: running.values(scraped).get("") == 2, timeout=60), scraped
        yield running
    finally:
        if running.load is not None:
            running.load.stopping.set()
        for thread in running.threads:
            thread.join(15)
        try:
            stack.stop(running.launched, out=lambda line: None)
            stack.down(out=lambda line: None)
        finally:
            for proc in processes.ours(directory.resolve()):
                proc.kill()


def _notify_the_test(directory: Path, url: str, alertmanager: str) -> None:
    """Give every receiver of the stack's Alertmanager copy that notifies (all but the
    blackhole, which the shipped routes keep for info alerts) the test's webhook, with
    resolutions, and have Alertmanager reload it."""
    path = directory / "alertmanager" / "config" / "alertmanager.yml"
    config = yaml.safe_load(path.read_text())
    for receiver in config["receivers"]:
        if receiver["name"] != "blackhole":
            receiver["webhook_configs"] = [{"url": url, "send_resolved": True}]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    request = urllib.request.Request(f"{alertmanager}/-/reload", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@dataclass
class Sample:
    at: float
    alerts: list[dict[str, str]]
    recommended: dict[str, float]
    actual: dict[str, float]
    required: list[tuple[str, str, float]]
    depth: float
    web: dict[str, float]
    #: The worker's queue hint's inputs, for a failure message.
    worker: dict[str, float]


def sample(running: Demo, start: float) -> Sample:
    required = [
        (s["metric"]["job"], s["metric"]["reason"], float(s["value"][1]))
        for s in running.prometheus.query("sightline:required_replicas:count")
    ]
    depth = running.values("job:worker_queue_depth:sum").get("shop-worker", 0.0)
    web = {
        name: running.values(promql).get("shop", -1.0)
        for name, promql in (
            ("in_flight", "job:http_server_requests_in_flight:mean5m"),
            ("active", "job:http_server_active_requests:sum"),
            ("capacity", "job:http_server_worker_capacity:sum"),
        )
    }
    worker = {
        name: running.values(promql).get("shop-worker", -1.0)
        for name, promql in (
            ("busy", "job:worker_tasks_active:mean5m"),
            ("mean_s", "job:worker_task_duration_seconds:mean5m"),
            ("needed", "job:worker_task_slots_needed:estimate5m"),
            ("capacity", "job:worker_capacity:sum"),
        )
    }
    return Sample(
        time.monotonic() - start,
        running.alerts(),
        running.values("sightline:recommended_replicas:count"),
        running.values("sightline:actual_replicas:count"),
        required,
        depth,
        web,
        worker,
    )


def key(alert: dict[str, Any]) -> tuple[str, str, str]:
    labels = alert.get("labels", alert)
    return labels["alertname"], labels.get("job", ""), labels.get("severity", "")


def story(samples: list[Sample]) -> str:
    """The timeline, for a failure message."""
    lines = []
    for s in samples[::5]:
        firing = sorted(
            f"{a['alertname']}/{a.get('job')}/{a.get('severity')}/{a['alertstate']}"
            for a in s.alerts
        )
        lines.append(
            f"{s.at:5.0f}s rec={s.recommended} act={s.actual} depth={s.depth:.0f} web={s.web} "
            f"worker={s.worker} req={s.required} alerts={firing}"
        )
    return "\n".join(lines)


@pytest.mark.timeout(STORY + 300)
def test_a_sale_with_payments_down_fires_delivers_and_resolves_while_steady_load_fires_nothing(
    tmp_path: Path,
) -> None:
    """A sale on a stack with a healthy past, the payment provider down at the sale's
    start: the availability page, the saturation alerts and the scale-up hints
    (recommended replicas above the actual count, with the reason and its numbers) fire
    and reach the webhook; when the load is back to normal every alert that fired
    resolves and the resolution reaches the webhook, and the SLO tickets, whose 1-3 day
    windows weigh the sale against that past, never fire. The other stack, on the demo's
    steady load for longer, has nothing pending or firing, sends nothing and recommends
    the replicas it runs."""
    for name in NEEDED:
        binary(*BY_NAME[name].binaries)
    for name in ("prometheus", "alertmanager", "promtool"):
        binary(name, flavour="pinned")
    promtool = binary("promtool", flavour="pinned")
    posts = Posts()
    past: list[int] = []

    def history(data: Path) -> None:
        past.append(write_history(data, promtool, time.time() - QUIET))

    try:
        with (
            demo(tmp_path / "troubled", posts, "/troubled", pinned_dir(), history) as troubled,
            demo(tmp_path / "steady", posts, "/steady", None) as steady,
        ):
            # Prometheus loaded the past: every sample of every series.
            window = HISTORY + QUIET + 600
            loaded = troubled.values(
                f'count_over_time(slo:sli_total:rate5m{{slo="availability"}}[{window}s])'
            )
            assert loaded.get("shop", 0) >= past[0], loaded
            _live_through(troubled, steady)
    finally:
        posts.shutdown()
        posts.server_close()


def _live_through(troubled: Demo, steady: Demo) -> None:
    start = time.monotonic()
    sale = Plan(10.0, SALE_RATE, burst_every=10 * STORY, burst_seconds=SALE_END, burst_start=0)
    troubled.start_load(sale, "payment", PAYMENT_DOWN)
    steady_from = None
    samples: list[Sample] = []
    calm: list[Sample] = []
    fired: dict[tuple[str, str, str], dict[str, Any]] = {}
    resolved: set[tuple[str, str, str]] = set()

    def open_alerts() -> set[tuple[str, str, str]]:
        for alert in troubled.notified():
            if alert["status"] == "firing":
                fired.setdefault(key(alert), alert)
            elif key(alert) in fired:
                resolved.add(key(alert))
        return {k for k in fired if k not in resolved}

    while time.monotonic() - start < STORY:
        now = time.monotonic() - start
        samples.append(sample(troubled, start))
        if steady_from is None and now >= SALE_END:
            # The steady stack's load runs from here to the end: longer than the sale.
            steady.start_load(Plan(rate=10.0, burst_every=10 * STORY, burst_start=10 * STORY))
            steady_from = time.monotonic()
        elif steady_from is not None and time.monotonic() - steady_from > 15:
            calm.append(sample(steady, steady_from))  # past its first scrapes of the load
        if now > SALE_END + 60 and not open_alerts() and set(WANTED) <= set(fired):
            break
        time.sleep(2)
    timeline = story(samples)
    open_alerts()

    # The failed payments paged, the sale filled the request slots and the task queue.
    assert set(WANTED) <= set(fired), f"delivered: {sorted(fired)}\n{timeline}"
    assert max(s.depth for s in samples) > 100, timeline
    for job, reason in (("shop", "concurrency"), ("shop-worker", "queue")):
        hint = fired[("SightlineScaleUpRecommended", job, "warning")]["annotations"]
        assert int(hint["recommended_replicas"]) > int(hint["current_replicas"]) == 1, hint
        assert f"{reason} {hint['recommended_replicas']}" in hint["description"], hint
        assert any(j == job and r == reason and v > 1 for s in samples for j, r, v in s.required)
    # A sale's minutes against the day before it: no SLO ticket, not even pending.
    seen = {key(a) for s in samples for a in s.alerts} | set(fired)
    tickets = {k for k in seen if k[0] in SLO_ALERTS and k[2] == "warning"}
    assert not tickets, f"{sorted(tickets)}\n{timeline}"
    # Every alert delivered firing was delivered resolved, and is neither pending nor
    # firing now.
    left = {k for k in fired if k not in resolved}
    assert not left, f"not resolved: {sorted(left)}\n{timeline}"
    for name, job, _ in fired:
        assert not any(a["alertname"] == name and a.get("job") == job for a in troubled.alerts()), (
            f"{name} {job} is still pending or firing\n{timeline}"
        )

    # The steady stack, for longer than the sale and its alerts took.
    assert steady_from is not None
    assert time.monotonic() - steady_from > SALE_END
    assert calm, "the steady stack was never sampled"
    for s in calm:
        assert s.alerts == [], f"at {s.at:.0f} s: {s.alerts}"
        for job in DEMO_JOBS:
            assert s.recommended.get(job) == s.actual.get(job) == 1, (s.at, job, s)
    assert steady.notified() == []
