"""Load for the demo shop: a steady baseline with periodic bursts past capacity.

    python -m sightline_appliance.demo.load --target http://127.0.0.1:8000

Open loop: requests are scheduled at the target rate whether or not earlier ones have
answered, as real users arrive, so a slow server builds a backlog instead of slowing the
load down. At most ``--concurrency`` requests are outstanding; a request that would
exceed it is shed and counted. During a burst (a "sale") the rate jumps and the mix
shifts to searches and checkouts: in-flight requests reach the gunicorn workers'
capacity, CPU hits the container's quota and the Celery queue backs up. With
``--outage S``, the first S seconds' requests ask the shop to fail
(``X-Demo-Fault: outage``): an outage, to show the error-budget alerts.
"""

from __future__ import annotations

import argparse
import http.client
import json
import queue
import random
import re
import signal
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote_plus

_SEARCHES = ("lamp", "product 1", "mug", "x")

# (weight at baseline, weight in a burst, method, path builder)
# Sized for the compose demo (4 gunicorn workers x 2 threads, 2 Celery slots): the
# baseline keeps both under half their capacity; a burst fills the web workers (searches
# cost ~250 ms) and brings checkouts to about twice what the worker drains, so the queue
# grows for the burst and drains within ~20 s after it.
_MIX: tuple[tuple[int, int, str, Callable[[], str]], ...] = (
    (25, 15, "GET", lambda: f"/products?page={random.randint(1, 10)}"),
    (35, 23, "GET", lambda: f"/products/{random.randint(1, 220)}"),  # > 200: a 404
    (8, 35, "GET", lambda: "/search?q=" + quote_plus(random.choice(_SEARCHES))),
    (17, 17, "POST", lambda: f"/cart/{random.randint(1, 500)}/items"),
    (15, 10, "POST", lambda: "/checkout"),
)


# gunicorn closes a kept-alive connection after 2 s idle (its --keep-alive default): the
# load reuses one only within half of that.
_REUSE_WITHIN = 1.0
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
_IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "PUT", "DELETE"))


@dataclass(frozen=True)
class Plan:
    rate: float = 10.0
    burst_rate: float = 70.0
    burst_every: float = 60.0
    burst_seconds: float = 15.0
    burst_start: float = 20.0

    def bursting(self, elapsed: float) -> bool:
        if elapsed < self.burst_start:
            return False
        return (elapsed - self.burst_start) % self.burst_every < self.burst_seconds

    def rate_at(self, elapsed: float) -> float:
        return self.burst_rate if self.bursting(elapsed) else self.rate


def pick(bursting: bool) -> tuple[str, str]:
    weights = [entry[1] if bursting else entry[0] for entry in _MIX]
    _b, _w, method, path = random.choices(_MIX, weights)[0]
    return method, path()


class Load:
    def __init__(self, target: str, plan: Plan, concurrency: int) -> None:
        url = urllib.parse.urlsplit(target)
        self.host, self.port = url.hostname or "127.0.0.1", url.port or 80
        self.plan = plan
        #: While set, requests carry ``X-Demo-Fault: <fault>`` (the shop fails them).
        self.fault: str | None = None
        self.pending: queue.Queue[tuple[str, str] | None] = queue.Queue(maxsize=concurrency)
        self.counts: Counter[str] = Counter()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self._last_failure_said = -1.0
        self.workers = [
            threading.Thread(target=self._worker, daemon=True) for _ in range(concurrency)
        ]

    def inject(self, fault: str, seconds: float) -> None:
        """Ask the shop for ``fault`` (``X-Demo-Fault``) in the next ``seconds``."""
        self.fault = fault
        ends = threading.Timer(seconds, setattr, (self, "fault", None))
        ends.daemon = True
        ends.start()

    def _count(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def _say_failure(self, what: str) -> None:
        """Why a request failed, at most once a second (the counts say how often)."""
        now = time.monotonic()
        with self.lock:
            if now - self._last_failure_said < 1.0:
                return
            self._last_failure_said = now
        print(f"load: failed {what}", flush=True)

    def _worker(self) -> None:
        connection: http.client.HTTPConnection | None = None
        last_used = 0.0
        while True:
            item = self.pending.get()
            if item is None:
                if connection is not None:
                    connection.close()
                return
            method, path = item
            self._count("sent")
            body = json.dumps({"product_id": random.randint(1, 200)}) if method == "POST" else None
            headers = {"Content-Type": "application/json"} if body else {}
            fault = self.fault
            if fault:
                headers["X-Demo-Fault"] = fault
            # A connection idle for longer than the server keeps it may be closed by now:
            # start a new one rather than race the server's close.
            if connection is not None and time.monotonic() - last_used > _REUSE_WITHIN:
                connection.close()
                connection = None
            for attempt in (1, 2):
                reused = connection is not None
                try:
                    if connection is None:
                        connection = http.client.HTTPConnection(self.host, self.port, timeout=30)
                    connection.request(method, path, body=body, headers=headers)
                    response = connection.getresponse()
                    response.read()
                    last_used = time.monotonic()
                    self._count(f"{response.status // 100}xx")
                    if response.will_close:
                        connection.close()
                        connection = None
                    break
                except (OSError, http.client.HTTPException) as exc:
                    if connection is not None:
                        connection.close()
                    connection = None
                    # A kept-alive connection the server closed as the request went out:
                    # the request never reached the app. Sent again only when repeating
                    # it is harmless (RFC 9110 9.2.2), as browsers do.
                    stale = reused and isinstance(exc, _STALE)
                    if attempt == 1 and stale and method in _IDEMPOTENT:
                        self._count("retried")
                        continue
                    self._count("failed")
                    self._say_failure(f"{method} {path}: {exc!r}" + (" (reused)" if reused else ""))
                    time.sleep(0.2)
                    break

    def run(self, duration: float | None, report_every: float = 5.0) -> Counter[str]:
        for worker in self.workers:
            worker.start()
        start = time.monotonic()
        next_report = start + report_every
        due = start
        while not self.stopping.is_set():
            now = time.monotonic()
            elapsed = now - start
            if duration is not None and elapsed >= duration:
                break
            if now < due:
                self.stopping.wait(min(due - now, 0.05))
                continue
            bursting = self.plan.bursting(elapsed)
            try:
                self.pending.put_nowait(pick(bursting))
            except queue.Full:
                self._count("shed")
            # Exponential gaps: arrivals as a Poisson process at the current rate.
            due += random.expovariate(self.plan.rate_at(elapsed))
            due = max(due, now - 1.0)  # after a stall, do not fire a backlog at once
            if now >= next_report:
                next_report += report_every
                self.report(elapsed, bursting)
        # Requests still waiting for a free worker are not sent (nor counted as sent).
        while True:
            try:
                self.pending.get_nowait()
            except queue.Empty:
                break
        for _ in self.workers:
            try:
                self.pending.put(None, timeout=1)
            except queue.Full:
                break
        # Let requests under way finish (and be counted), for a few seconds at most.
        deadline = time.monotonic() + 5
        for worker in self.workers:
            worker.join(max(0.0, deadline - time.monotonic()))
        return self.counts

    def report(self, elapsed: float, bursting: bool) -> None:
        with self.lock:
            counts = Counter(self.counts)
        phase = "burst" if bursting else "baseline"
        print(f"load: {elapsed:5.0f} s {phase:<8} {format_counts(counts)}", flush=True)


#: What the load reports, in this order: requests sent, failed (no answer, even after a
#: retry), sent again on a fresh connection, shed (over --concurrency), answers by class.
REPORTED = ("sent", "failed", "retried", "shed", "2xx", "3xx", "4xx", "5xx")


def format_counts(counts: Counter[str]) -> str:
    return ", ".join(
        f"{key} {counts[key]}" for key in REPORTED if key in counts or key in REPORTED[:2]
    )


_REPORT = re.compile(r"^load: .*?((?:\w+ \d+(?:, )?)+)$")


def parse_report(line: str) -> Counter[str] | None:
    """The counts in one of the load's report lines (``None`` if it is not one)."""
    match = _REPORT.match(line.strip())
    if not match:
        return None
    counts: Counter[str] = Counter()
    for item in match.group(1).split(", "):
        key, _, value = item.rpartition(" ")
        counts[key] = int(value)
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sightline_appliance.demo.load", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--target", default="http://127.0.0.1:8000", help="the shop's URL")
    parser.add_argument("--rate", type=float, default=Plan.rate, help="baseline requests/s")
    parser.add_argument("--burst-rate", type=float, default=Plan.burst_rate)
    parser.add_argument("--burst-every", type=float, default=Plan.burst_every, help="seconds")
    parser.add_argument("--burst-seconds", type=float, default=Plan.burst_seconds)
    parser.add_argument(
        "--burst-start", type=float, default=Plan.burst_start, help="seconds to the first"
    )
    parser.add_argument("--concurrency", type=int, default=48, help="requests outstanding")
    parser.add_argument("--duration", type=float, default=None, help="seconds (default: ever)")
    parser.add_argument(
        "--outage", type=float, default=0.0, help="first seconds in which the shop fails all"
    )
    args = parser.parse_args(argv)
    for name in ("rate", "burst_rate", "burst_every", "concurrency"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    plan = Plan(args.rate, args.burst_rate, args.burst_every, args.burst_seconds, args.burst_start)
    load = Load(args.target, plan, args.concurrency)
    signal.signal(signal.SIGTERM, lambda *_: load.stopping.set())
    if args.outage > 0:
        load.inject("outage", args.outage)
    try:
        counts = load.run(args.duration)
    except KeyboardInterrupt:
        counts = load.counts
    print(f"load: done {format_counts(counts)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
