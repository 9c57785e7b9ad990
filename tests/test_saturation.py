"""Saturation: cgroup v1/v2 limits and throttling, GC pauses, threads and worker capacity."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import sightline
from prometheus_client import CollectorRegistry
from sightline import saturation


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def cores() -> float:
    return float(len(os.sched_getaffinity(0)))


def test_cgroup_v2_limits_and_throttling(tmp_path: Path) -> None:
    """On cgroup v2 the quota, memory.max and cpu.stat of our group (or a parent) are used."""
    write(tmp_path, "proc/self/cgroup", "0::/kubepods/pod1/ctr\n")
    write(tmp_path, "sys/fs/cgroup/cgroup.controllers", "cpu memory\n")
    write(tmp_path, "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "50000 100000\n")
    write(tmp_path, "sys/fs/cgroup/kubepods/pod1/memory.max", "536870912\n")
    write(tmp_path, "sys/fs/cgroup/kubepods/pod1/ctr/memory.max", "max\n")
    write(
        tmp_path,
        "sys/fs/cgroup/kubepods/pod1/ctr/cpu.stat",
        "usage_usec 100\nnr_periods 40\nnr_throttled 7\nthrottled_usec 2500000\n",
    )
    assert saturation.cpu_limit_cores(str(tmp_path)) == 0.5
    assert saturation.memory_limit_bytes(str(tmp_path)) == 536870912
    assert saturation.cpu_stat(str(tmp_path)) == saturation.CpuStat(40, 7, 2.5)


def test_cgroup_v2_without_limits_falls_back(tmp_path: Path) -> None:
    """With `max` quotas the limits are the CPUs we may run on and the host's memory."""
    write(tmp_path, "proc/self/cgroup", "0::/\n")
    write(tmp_path, "sys/fs/cgroup/cgroup.controllers", "cpu memory\n")
    write(tmp_path, "sys/fs/cgroup/cpu.max", "max 100000\n")
    write(tmp_path, "sys/fs/cgroup/memory.max", "max\n")
    write(tmp_path, "sys/fs/cgroup/cpu.stat", "usage_usec 5\n")
    assert saturation.cpu_limit_cores(str(tmp_path)) == cores()
    assert saturation.memory_limit_bytes(str(tmp_path)) == psutil.virtual_memory().total
    assert saturation.cpu_stat(str(tmp_path)) is None, "no CFS counters without a cpu controller"


def test_cgroup_v1_limits_and_throttling(tmp_path: Path) -> None:
    """On cgroup v1 the CFS quota, memory.limit_in_bytes and throttled_time (ns) are used."""
    write(tmp_path, "proc/self/cgroup", "4:memory:/docker/abc\n2:cpu,cpuacct:/docker/abc\n0::/\n")
    write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "150000\n")
    write(tmp_path, "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000\n")
    write(
        tmp_path,
        "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.stat",
        "nr_periods 10\nnr_throttled 3\nthrottled_time 1500000000\n",
    )
    write(tmp_path, "sys/fs/cgroup/memory/docker/abc/memory.limit_in_bytes", "268435456\n")
    assert saturation.cpu_limit_cores(str(tmp_path)) == min(1.5, cores())
    assert saturation.memory_limit_bytes(str(tmp_path)) == 268435456
    assert saturation.cpu_stat(str(tmp_path)) == saturation.CpuStat(10, 3, 1.5)


def test_cgroup_v1_unlimited_is_no_limit(tmp_path: Path) -> None:
    """v1's -1 quota and its huge 'unlimited' memory value mean no limit."""
    write(tmp_path, "proc/self/cgroup", "4:memory:/\n1:cpu:/\n")
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n")
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n")
    write(tmp_path, "sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712\n")
    assert saturation.cpu_limit_cores(str(tmp_path)) == cores()
    assert saturation.memory_limit_bytes(str(tmp_path)) == psutil.virtual_memory().total


def test_no_cgroup_filesystem(tmp_path: Path) -> None:
    """Without any cgroup files (macOS, odd sandboxes) the host's figures are reported."""
    assert saturation.cpu_limit_cores(str(tmp_path)) == cores()
    assert saturation.memory_limit_bytes(str(tmp_path)) == psutil.virtual_memory().total
    assert saturation.cpu_stat(str(tmp_path)) is None


@pytest.mark.internal_errors_expected
def test_a_cgroup_file_that_does_not_parse_loses_only_its_own_families(
    tmp_path: Path, internal_errors: list[BaseException]
) -> None:
    """A cgroup file that does not parse is an internal error (counted and logged) that
    loses only what it gives: a bad cpu.max is skipped, so the CPU limit is still served
    (the CPUs we may run on), and bad cpu.stat and memory.max lose their own families,
    not the thread count beside them; on cgroup v1 as on v2."""
    write(tmp_path, "proc/self/cgroup", "0::/\n")
    write(tmp_path, "sys/fs/cgroup/cgroup.controllers", "cpu memory\n")
    write(tmp_path, "sys/fs/cgroup/cpu.max", "banana 100000\n")
    write(tmp_path, "sys/fs/cgroup/cpu.stat", "nr_periods many\n")
    write(tmp_path, "sys/fs/cgroup/memory.max", "lots\n")
    registry = CollectorRegistry()
    registry.register(saturation.SaturationCollector(lambda: None, root=str(tmp_path)))
    get = registry.get_sample_value
    assert get("process_cpu_limit_cores") == cores()
    assert get("process_threads") == psutil.Process().num_threads()
    assert get("process_cpu_periods_total") is None
    assert get("process_memory_limit_bytes") is None
    assert sorted({str(e) for e in internal_errors}) == [  # each scrape reports them
        "invalid literal for int() with base 10: 'banana'",
        "invalid literal for int() with base 10: 'lots'",
        "invalid literal for int() with base 10: 'many'",
    ]
    # cgroup v1 alike: a quota that does not parse is skipped and reported.
    internal_errors.clear()
    v1 = tmp_path / "v1"
    write(v1, "proc/self/cgroup", "1:cpu:/\n")
    write(v1, "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-x\n")
    write(v1, "sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n")
    assert saturation.cpu_limit_cores(str(v1)) == cores()
    assert [str(e) for e in internal_errors] == ["invalid literal for int() with base 10: '-x'"]


def test_this_machine_is_read_without_error() -> None:
    """On the real machine the readers return sane values."""
    assert 0 < saturation.cpu_limit_cores() <= (os.cpu_count() or 1)
    assert 0 < saturation.memory_limit_bytes() <= psutil.virtual_memory().total


def test_saturation_metrics_are_exposed(registry: CollectorRegistry) -> None:
    """The scrape carries CPU, memory, fds, threads, GC pauses and the configured capacity."""
    sightline.init(service="t", registry=registry, metrics_addr="off", worker_capacity=8)
    gc.collect()
    get = registry.get_sample_value
    assert get("process_cpu_limit_cores") == saturation.cpu_limit_cores()
    assert get("process_memory_limit_bytes") == saturation.memory_limit_bytes()
    assert get("process_threads") == psutil.Process().num_threads()
    assert (get("process_cpu_seconds_total") or 0) > 0
    assert (get("process_resident_memory_bytes") or 0) > 0
    assert (get("process_open_fds") or 0) > 0
    assert (get("process_max_fds") or 0) > 0
    assert (get("python_gc_pause_seconds_count", {"generation": "2"}) or 0) >= 1
    assert get("http_server_worker_capacity") == 8


def test_init_loads_no_psutil_until_the_first_scrape() -> None:
    """Metrics alone, init() registers the saturation signals without loading psutil or
    reading the cgroup: the first scrape does, and shows them."""
    program = (
        "import sys, sightline\n"
        "from prometheus_client import REGISTRY, generate_latest\n"
        "sightline.init(service='t', metrics_addr='off', traces=False, logs=False)\n"
        "print('psutil' in sys.modules)\n"
        "page = generate_latest(REGISTRY).decode()\n"
        "print('psutil' in sys.modules, 'process_threads ' in page)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SIGHTLINE_", "OTEL_"))}
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, env=env, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "True"]


def test_gc_callback_removed_on_shutdown(registry: CollectorRegistry) -> None:
    """shutdown() removes the GC timing callback it added."""
    before = list(gc.callbacks)
    sightline.init(service="t", registry=registry, metrics_addr="off")
    assert len(gc.callbacks) == len(before) + 1
    sightline.shutdown()
    assert gc.callbacks == before


def test_capacity_unknown_is_not_guessed(registry: CollectorRegistry) -> None:
    """Outside a known server and without SIGHTLINE_WORKER_CAPACITY no capacity is invented."""
    sightline.init(service="t", registry=registry, metrics_addr="off")
    assert registry.get_sample_value("http_server_worker_capacity") is None


@pytest.mark.parametrize(
    ("options", "capacity"),
    [
        ({}, 1),
        ({"threads": 4}, 4),
        ({"worker_class": "gthread", "threads": 8}, 8),
        ({"worker_class": "gevent", "worker_connections": 250}, 250),
    ],
)
def test_gunicorn_capacity_from_its_config(options: dict[str, object], capacity: int) -> None:
    """Capacity follows gunicorn's worker class: sync 1, threads, or worker connections."""
    pytest.importorskip("gunicorn")
    from gunicorn.config import Config
    from sightline.integrations import gunicorn as integration

    cfg = Config()
    for key, value in options.items():
        cfg.set(key, value)
    assert integration.capacity_from_config(cfg) == capacity
