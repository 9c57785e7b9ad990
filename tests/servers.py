"""Real servers for tests: Prometheus (Debian package) and gunicorn, on loopback ports."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from sightline_appliance.doctor import MARKER, MARKER_VALUE
from sightline_appliance.stack import BY_NAME, processes

from .helpers import free_port

ROOT = Path(__file__).resolve().parent.parent


def wait_for(url: str, timeout: float = 20.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    alive = None if proc is None else (lambda: proc.poll() is None)
    try:
        processes.wait_http(url, timeout, alive=alive)
    except processes.NotReady as exc:
        code = "" if proc is None else f" (exit code {proc.poll()})"
        raise RuntimeError(f"{exc}{code}") from None


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


#: Which build of Prometheus and Alertmanager a test runs: the machine's own (Debian's
#: packages, what a Debian user's native stack has) or the version compose pins, built by
#: compose/build-binaries. Rules, routes and dashboards must work on both.
FLAVOURS = ("installed", "pinned")


def pinned_dir() -> Path:
    """Where compose/build-binaries put its binaries (.ci/run sets SIGHTLINE_PINNED_BIN)."""
    return Path(os.environ.get("SIGHTLINE_PINNED_BIN") or Path.home() / ".cache/sightline/bin")


def binary(*names: str, flavour: str = "installed") -> str:
    """The installed binary (the stack's own lookup), or the one built at the version
    compose pins; a failure under CI, else a skip."""
    if flavour == "pinned":
        found = [pinned_dir() / name for name in names if os.access(pinned_dir() / name, os.X_OK)]
        path = str(found[0]) if found else None
        missing = f"{names[0]} at the version compose pins is not in {pinned_dir()}"
        fix = "run compose/build-binaries"
        if names[0] == "kustomize":
            missing = f"kustomize is not in {pinned_dir()}"
            fix = "run deploy/kubernetes/build-tools"
    else:
        path = processes.find_binary(names)
        missing, fix = f"{names[0]} is not installed", "apt-get install it"
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{missing} (.ci/run does that)")
        pytest.skip(f"{missing}: {fix}")
    return path


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=5) as response:
            payload = json.load(response)
        assert payload["status"] == "success", payload
        return payload["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.get("/api/v1/query", query=promql)["result"]
        return result


#: A scrape job's relabelling that marks its targets as services, as the stack's `apps`
#: job does (compose/prometheus/prometheus.yml), indented for a job in scrape_configs.
SERVICE_RELABEL = (
    f"    relabel_configs:\n      - target_label: {MARKER}\n        replacement: {MARKER_VALUE}\n"
)


@contextlib.contextmanager
def prometheus(
    tmp_path: Path,
    targets: dict[str, str],
    rule_files: Sequence[Path] = (),
    flavour: str = "installed",
    alertmanager: str = "",
    services: bool = True,
    remote_write: str = "",
) -> Iterator[Prometheus]:
    """Start a real Prometheus (of ``flavour``, see :data:`FLAVOURS`) scraping ``targets``
    (job -> host:port) every second and evaluating ``rule_files`` every second, sending
    its alerts to ``alertmanager`` (host:port) if given, resent every second. With
    ``services`` the targets are labelled application services as the stack's `apps`
    job labels them. With ``remote_write`` (a URL) it remote-writes every series there."""
    exe = binary(*BY_NAME["prometheus"].binaries, flavour=flavour)
    port = free_port()
    config = tmp_path / "prometheus.yml"
    jobs = "".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
        + (SERVICE_RELABEL if services else "")
        for job, target in targets.items()
    )
    rules = "".join(f"  - {path}\n" for path in rule_files)
    config.write_text(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
        + (f"rule_files:\n{rules}" if rules else "")
        + (
            f"alerting:\n  alertmanagers:\n    - static_configs:\n"
            f"        - targets: ['{alertmanager}']\n"
            if alertmanager
            else ""
        )
        + (f"remote_write:\n  - url: {remote_write}\n" if remote_write else "")
        + "scrape_configs:\n"
        + jobs
    )
    argv = [
        exe,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--enable-feature=exemplar-storage",
        "--rules.alert.resend-delay=1s",
    ]
    with started("prometheus", argv, tmp_path, f"http://127.0.0.1:{port}/-/ready"):
        yield Prometheus(f"http://127.0.0.1:{port}")


@contextlib.contextmanager
def alertmanager(tmp_path: Path, config: Path, flavour: str = "installed") -> Iterator[str]:
    """Start a real Alertmanager (of ``flavour``) with ``config`` on a loopback port, no
    cluster; yields its URL."""
    exe = binary(*BY_NAME["alertmanager"].binaries, flavour=flavour)
    port = free_port()
    argv = [
        exe,
        f"--config.file={config}",
        f"--storage.path={tmp_path / 'alertmanager-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    with started("alertmanager", argv, tmp_path, f"http://127.0.0.1:{port}/-/ready"):
        yield f"http://127.0.0.1:{port}"


@contextlib.contextmanager
def started(name: str, argv: list[str], tmp_path: Path, ready: str) -> Iterator[None]:
    """Run a stack component the way ``sightline stack`` does; stopped on exit."""
    proc, record = processes.launch(name, argv, os.environ, tmp_path / f"{name}.log")
    try:
        processes.wait_http(ready, 30, alive=record.alive)
        yield
    finally:
        processes.stop(record)
        stop(proc)  # collects the exit status (and would end it, were it still running)


@contextlib.contextmanager
def serve(command: list[str], port: int, env: dict[str, str], log_path: Path) -> Iterator[str]:
    log = open(log_path, "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
    )
    try:
        wait_for(f"http://127.0.0.1:{port}/health", proc=proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)
        log.close()


@contextlib.contextmanager
def gunicorn(
    app: str,
    env: dict[str, str],
    args: list[str],
    tmp_path: Path,
    prefix: list[str] | None = None,
) -> Iterator[str]:
    """Run ``app`` (module:callable under tests/apps) in a real gunicorn, started through
    ``prefix`` if given (the launcher); yields its base URL."""
    port = free_port()
    command = [
        *(prefix or []),
        sys.executable,
        "-m",
        "gunicorn",
        "--chdir",
        str(ROOT),
        "-b",
        f"127.0.0.1:{port}",
        *args,
        app,
    ]
    with serve(command, port, env, tmp_path / "gunicorn.log") as url:
        yield url


@contextlib.contextmanager
def uvicorn(
    app: str,
    env: dict[str, str],
    args: list[str],
    tmp_path: Path,
    prefix: list[str] | None = None,
) -> Iterator[str]:
    """Run ``app`` in a real uvicorn on a loopback port, started through ``prefix`` if
    given (the launcher); yields its base URL."""
    port = free_port()
    command = [
        *(prefix or []),
        sys.executable,
        "-m",
        "uvicorn",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
        *args,
        app,
    ]
    with serve(command, port, env, tmp_path / "uvicorn.log") as url:
        yield url


def status_of(url: str) -> int:
    """GET ``url`` and return the status, reading the body (errors included)."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            response.read()
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def counts_by_route(prom: Prometheus, expected: dict[tuple[str, str], float]) -> dict[Any, float]:
    """Requests per (route, status) in PromQL, polled until they equal ``expected`` (30 s)."""
    promql = (
        "sum by (http_route, http_response_status_code)"
        ' (http_server_request_duration_seconds_count{job="app"})'
    )
    deadline = time.monotonic() + 30
    while True:
        got = {
            (r["metric"]["http_route"], r["metric"]["http_response_status_code"]): float(
                r["value"][1]
            )
            for r in prom.query(promql)
        }
        if got == expected or time.monotonic() > deadline:
            return got
        time.sleep(0.5)


@contextlib.contextmanager
def redis(tmp_path: Path) -> Iterator[str]:
    """Start a real redis-server (Debian package) on a loopback port, the way ``sightline
    stack`` does; yields its URL."""
    exe = binary(*BY_NAME["redis"].binaries)
    port = free_port()
    argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(tmp_path)]
    proc, record = processes.launch("redis", argv, os.environ, tmp_path / "redis.log")
    try:
        processes.wait_redis(port, 10, alive=record.alive)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        processes.stop(record)
        stop(proc)


def postgres_bin() -> Path:
    """The newest PostgreSQL server's bin directory (Debian: postgresql-NN); a failure
    under CI, else a skip."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: p.parts)
    if not found:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL is not installed (.ci/run installs it)")
        pytest.skip("PostgreSQL is not installed: apt-get install postgresql")
    return found[-1].parent


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL server (Debian's package) on a loopback port, trusting local
    connections; yields the URL of its ``postgres`` database as user ``postgres``. As root
    the server runs as the ``postgres`` user, since PostgreSQL refuses to run as root."""
    bin_dir = postgres_bin()
    base = Path(tempfile.mkdtemp(prefix="sightline-pg-"))
    data, sockets = base / "data", base / "run"
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        import pwd

        account = pwd.getpwnam("postgres")
        for path in (base, sockets):
            os.chown(path, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [*as_user, str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
         "--no-sync", "-E", "UTF8", "--locale=C"],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    port = free_port()
    log = open(base / "postgres.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [*as_user, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-k",
         str(sockets), "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off",
         "-c", "max_connections=50"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log_file = base / "postgres.log"
                    raise RuntimeError(f"PostgreSQL did not start: see {log_file}") from None
                time.sleep(0.1)
        yield f"postgres@127.0.0.1:{port}/postgres"
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


#: Debian's rabbitmq-server: the broker itself, without the wrapper that switches user.
RABBITMQ = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")


@contextlib.contextmanager
def rabbitmq(base: Path) -> Iterator[tuple[str, str]]:
    """A throwaway RabbitMQ node (Debian's package) with the management plugin, on
    loopback ports, its own Erlang port mapper, and state under ``base``; yields the AMQP
    URL and the management API's URL (user guest). Queue statistics, which the API
    serves, are refreshed every 0.5 s instead of 5 s."""
    if not RABBITMQ.exists():
        if os.environ.get("CI"):
            pytest.fail("RabbitMQ is not installed (.ci/run installs it)")
        pytest.skip("RabbitMQ is not installed: apt-get install rabbitmq-server")
    amqp, api, dist, epmd = free_port(), free_port(), free_port(), free_port()
    (base / "rabbitmq.conf").write_text(
        f"listeners.tcp.default = 127.0.0.1:{amqp}\n"
        f"management.tcp.ip = 127.0.0.1\nmanagement.tcp.port = {api}\n"
        "collect_statistics_interval = 500\n"
    )
    (base / "enabled_plugins").write_text("[rabbitmq_management].\n")
    env = {
        **os.environ,
        "HOME": str(base),  # the Erlang cookie
        "RABBITMQ_NODENAME": f"sightline-{amqp}@localhost",
        "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
        "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
        "RABBITMQ_LOG_BASE": str(base / "log"),
        "RABBITMQ_PID_FILE": str(base / "pid"),
        "RABBITMQ_DIST_PORT": str(dist),
        "ERL_EPMD_PORT": str(epmd),
    }
    log = open(base / "rabbitmq.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [str(RABBITMQ)], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    api_url = f"http://127.0.0.1:{api}"
    try:
        ready = urllib.request.Request(
            f"{api_url}/api/health/checks/virtual-hosts",
            headers={"Authorization": "Basic Z3Vlc3Q6Z3Vlc3Q="},  # guest:guest
        )
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(ready, timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"RabbitMQ did not start: see {base}/rabbitmq.log") from None
                time.sleep(0.2)
        yield f"amqp://guest:guest@127.0.0.1:{amqp}//", api_url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
        # The port mapper the node started outlives it (it is a daemon).
        epmd_exe = shutil.which("epmd") or "/usr/lib/erlang/bin/epmd"
        subprocess.run([epmd_exe, "-port", str(epmd), "-kill"], env=env, capture_output=True)
        log.close()


@contextlib.contextmanager
def process(command: list[str], env: dict[str, str], log_path: Path) -> Iterator[Any]:
    """Run a long-lived process (a worker) from the repository root; stopped on exit."""
    log = open(log_path, "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        command, env={**os.environ, **env}, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
    )
    try:
        yield proc
    finally:
        stop(proc)
        log.close()


def launcher() -> list[str]:
    """The `sightline` command (the console script, or the module if not installed)."""
    exe = shutil.which("sightline")
    return [exe] if exe else [sys.executable, "-m", "sightline.cli"]


def celery_worker(env: dict[str, str], log_path: Path) -> Any:
    """A prefork Celery worker (2 processes) for tests/apps/celery_tasks, queue ``work``."""
    command = [sys.executable, "-m", "celery", "-A", "tests.apps.celery_tasks", "worker"]
    command += ["--pool", "prefork", "--concurrency", "2", "--queues", "work"]
    command += ["--loglevel", "WARNING", "--without-gossip", "--without-mingle"]
    command += ["--without-heartbeat"]
    return process(command, env, log_path)


def rq_worker(env: dict[str, str], broker: str, log_path: Path) -> Any:
    """A forking `rq worker` on queue ``work``, instrumented by the launcher alone."""
    command = [*launcher(), "run", "--", sys.executable, "-m", "rq.cli", "worker"]
    command += ["--url", broker, "--path", ".", "work"]
    return process(command, env, log_path)
