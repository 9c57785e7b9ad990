"""``sightline stack``: the compose stack, run from the binaries this machine has.

    sightline stack up [--dir DIR] [--port prometheus:9090=19090 ...]
    sightline stack status
    sightline stack down

Each component is started only if its binary is found (Prometheus and Alertmanager from
the OS packages at least; Loki, Tempo, Grafana and the Collector when installed), on
loopback, with the configuration compose mounts rewritten for it (see ``native``). State
lives in one directory: the ports chosen, the processes started (PID and start time),
logs, data. ``up`` is idempotent and ``down`` stops only processes this directory
recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import processes
from .native import (
    COMPOSE_FILE,
    DEMO_TARGETS,
    LONGTERM_FILE,
    TIME_SCALE_ENV,
    Native,
    assign_ports,
    listen_ports,
    load_compose,
)
from .processes import Record

Out = Callable[[str], None]


def default_dir() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return Path(state) / "sightline" / "stack"


@dataclass(frozen=True)
class Component:
    """One compose service that can also run from a local binary."""

    service: str
    binaries: tuple[str, ...]
    get_it: str  # how to install it, for `status`
    port: int  # the compose port of its HTTP interface
    ready: str  # readiness path on that port ("" for Redis: PING)

    def argv(self, binary: str, native: Native, directory: Path) -> list[str]:
        args = native.command(self.service)
        if args and Path(args[0]).name in self.binaries:
            args = args[1:]  # compose named the binary itself (redis-server ...)
        listen = f"127.0.0.1:{native.port(self.service, self.port)}"
        if self.service in ("prometheus", "alertmanager"):
            args = [a for a in args if not a.startswith("--web.listen-address")]
            args.append(f"--web.listen-address={listen}")
        elif self.service == "redis":
            data = directory / "redis"
            data.mkdir(parents=True, exist_ok=True)
            port = str(native.port("redis", self.port))
            args += ["--bind", "127.0.0.1", "--port", port, "--dir", str(data)]
        elif self.service == "collector" and not args:
            args = [native.rewrite("--config=/etc/otelcol-contrib/config.yaml", "collector")]
        elif self.service == "grafana":
            home = "/usr/share/grafana" if Path("/usr/share/grafana").is_dir() else None
            if Path(binary).name == "grafana":
                args = ["server", *(["--homepath", home] if home else []), *args]
            elif home:
                args = ["--homepath", home, *args]
        return [binary, *args]

    def environment(self, native: Native, directory: Path) -> dict[str, str]:
        variables = dict(os.environ)
        env = {**os.environ, processes.MARKER: str(directory)}
        if self.service == "grafana":
            # Natively the password is always the generated one, kept where `status` says.
            variables["GRAFANA_ADMIN_PASSWORD"] = _grafana_password(directory)
            env.update(native.environment("grafana", variables))
            data = directory / "grafana"
            env.update(
                GF_SERVER_HTTP_ADDR="127.0.0.1",
                GF_SERVER_HTTP_PORT=str(native.port("grafana", self.port)),
                GF_PATHS_PROVISIONING=str(native.paths("grafana")["/etc/grafana/provisioning"]),
                GF_PATHS_DATA=str(data / "data"),
                GF_PATHS_LOGS=str(data / "logs"),
                GF_PATHS_PLUGINS=str(data / "plugins"),
            )
        else:
            env.update(native.environment(self.service, variables))
        return env


_RELEASES = (
    "https://github.com/grafana/{0}/releases (the {0}-linux-amd64 zip), then put `{0}` on PATH"
)
COMPONENTS = (
    Component("redis", ("redis-server",), "apt-get install redis-server", 6379, ""),
    Component(
        "victoriametrics",
        ("victoria-metrics",),
        "apt-get install victoria-metrics",
        8428,
        "/health",
    ),
    Component("prometheus", ("prometheus",), "apt-get install prometheus", 9090, "/-/ready"),
    Component(
        "alertmanager",
        ("alertmanager", "prometheus-alertmanager"),
        "apt-get install prometheus-alertmanager",
        9093,
        "/-/ready",
    ),
    Component("vmalert", ("vmalert",), "apt-get install victoria-metrics", 8880, "/health"),
    Component("loki", ("loki",), _RELEASES.format("loki"), 3100, "/ready"),
    Component("tempo", ("tempo",), _RELEASES.format("tempo"), 3200, "/ready"),
    Component(
        "collector",
        ("otelcol-sightline", "otelcol-contrib"),
        "compose/build-binaries (builds it from Go modules at the release compose pins), "
        "then put the directory it prints on PATH",
        13133,
        "/",
    ),
    Component(
        "grafana",
        ("grafana", "grafana-server"),
        "https://grafana.com/grafana/download (the standalone Linux binaries or the .deb)",
        3000,
        "/api/health",
    ),
)
BY_NAME = {c.service: c for c in COMPONENTS}
#: What --longterm cannot run without: the store, and the ruler that replaces Prometheus'.
LONGTERM_NEEDS = ("victoriametrics", "vmalert")
DEMO = ("demo-app", "demo-worker", "demo-load")


def _grafana_password(directory: Path) -> str:
    """A random admin password, made once per state directory and kept there (0600)."""
    path = directory / "grafana" / "admin-password"
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(18)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    return password


class StackError(RuntimeError):
    """A component could not be started; the message says which and why."""


def check_ports(native: Native, service: str) -> None:
    """Refuse to start ``service`` on a port another program holds, naming that program
    and both ways around it."""
    for key, port in native.ports.items():
        if key.split(":")[0] == service and not processes.port_free(port):
            raise StackError(
                f"port {port} on 127.0.0.1 (for {key}) is taken by {processes.holder(port)}; "
                f"move {service} with --port {key}=PORT, or run this whole stack beside "
                "the other one with --port-offset N (every port + N)"
            )


def _time_scale() -> float:
    raw = os.environ.get(TIME_SCALE_ENV, "").strip()
    if not raw:
        return 1.0
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 1 <= value <= 3600:
        raise StackError(
            f"{TIME_SCALE_ENV}={raw!r} is not a number from 1 to 3600; it divides the "
            "stack's alert timings for tests: unset it to run the stack as shipped"
        )
    return value


class Stack:
    """The native stack whose state lives in ``directory``."""

    def __init__(
        self,
        directory: Path,
        ports: Mapping[str, int] | None = None,
        without: Iterable[str] = (),
        port_offset: int = 0,
        time_scale: float | None = None,
        longterm: bool | None = None,
    ) -> None:
        self.directory = directory.resolve()
        self.time_scale = _time_scale() if time_scale is None else time_scale
        self.state_file = self.directory / "stack.json"
        self.without = set(without)  # components not to start even if installed
        state = self._load()
        self.records = {
            name: Record.from_json(data) for name, data in state.get("processes", {}).items()
        }
        # With long-term storage (compose's longterm.yml layered on): None keeps the mode
        # this directory's stack runs in, which only a stopped stack may change.
        was = state.get("longterm") is True
        if longterm is not None and longterm != was and self.running():
            raise StackError(
                f"the stack in {self.directory} runs {'with' if was else 'without'} "
                "--longterm; stop it first (sightline stack down)"
            )
        self.longterm = was if longterm is None else longterm
        if self.longterm and self.without & set(LONGTERM_NEEDS):
            raise StackError(
                f"--longterm needs {' and '.join(LONGTERM_NEEDS)}: do not leave them out "
                "(--without), or run without long-term storage (--no-longterm)"
            )
        self.compose = load_compose(COMPOSE_FILE, *([LONGTERM_FILE] if self.longterm else []))
        self.listening = listen_ports(self.compose["services"])
        self._added: dict[str, Record] = {}
        self._removed: set[str] = set()
        self.ports: dict[str, int] = dict(state.get("ports", {}))
        self.port_offset = port_offset
        if port_offset:
            ports = {**self._offset(port_offset), **(ports or {})}
        self._override(ports or {})

    # -- state --------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        try:
            text = self.state_file.read_text()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise StackError(f"cannot read {self.state_file}: {exc.strerror}") from None
        try:
            data = json.loads(text)
            for entry in data.get("processes", {}).values():
                Record.from_json(entry)
            return dict(data)
        except (ValueError, TypeError, KeyError, AttributeError):
            raise StackError(
                f"{self.state_file} is damaged; stop what it started by hand (see logs/) "
                "and delete it"
            ) from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "stack.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _save(self) -> None:
        """Write this command's changes over what is on disk now, under a lock, so two
        commands on one directory do not lose each other's processes."""
        with self._locked():
            current = self._load()
            records = {
                name: Record.from_json(data)
                for name, data in current.get("processes", {}).items()
                if name not in self._removed
            }
            records.update(self._added)
            self.records = records
            data = {
                "longterm": self.longterm,
                "ports": {**current.get("ports", {}), **self.ports},
                "processes": {name: rec.to_json() for name, rec in records.items()},
            }
            tmp = self.state_file.with_name(f".stack.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(data, indent=2) + "\n")
            tmp.replace(self.state_file)

    def _record(self, record: Record) -> None:
        self._added[record.name] = record
        self._removed.discard(record.name)
        self._save()

    def _forget(self, name: str) -> None:
        self._added.pop(name, None)
        self._removed.add(name)
        self._save()

    def _override(self, ports: Mapping[str, int]) -> None:
        """Apply --port choices: known ports only, not of a running component, and no
        two listeners on one port."""
        known = {f"{s}:{p}" for s, listening in self.listening.items() for p in listening}
        running = self.running()
        for key, port in ports.items():
            if key not in known:
                raise StackError(
                    f"--port {key}={port}: compose has no port {key} "
                    f"(ports: {', '.join(sorted(known))})"
                )
            service = key.split(":")[0]
            if service in running and self.ports.get(key, port) != port:
                raise StackError(
                    f"--port {key}={port}: {service} is running on {self.ports[key]}; "
                    "stop it first (sightline stack down)"
                )
        self.ports.update(ports)
        assigned = self.native().ports
        owners: dict[int, str] = {}
        for key, port in assigned.items():
            if port in owners:
                raise StackError(f"{owners[port]} and {key} would both listen on port {port}")
            owners[port] = key

    def _offset(self, offset: int) -> dict[str, int]:
        """Every port a stack takes by default + ``offset`` (--port-offset): a second stack
        beside the first."""
        base = assign_ports(self.compose["services"], self.listening, {})
        shifted = {key: port + offset for key, port in base.items()}
        highest = max(shifted.items(), key=lambda item: item[1])
        if highest[1] > 65535:
            raise StackError(
                f"--port-offset {offset}: {highest[0]} would be port {highest[1]}; "
                f"the largest offset possible is {offset - (highest[1] - 65535)}"
            )
        return shifted

    def running(self) -> set[str]:
        return {name for name, rec in self.records.items() if rec.alive()}

    def components(self) -> list[Component]:
        """The components of this stack's compose services, in start order."""
        return [c for c in COMPONENTS if c.service in self.compose["services"]]

    def available(self) -> dict[str, str]:
        """Component -> binary, for the components this machine has."""
        found = {}
        for component in self.components():
            if component.service in self.without:
                continue
            binary = processes.find_binary(component.binaries)
            if binary:
                found[component.service] = binary
        return found

    def native(self, running: Iterable[str] | None = None) -> Native:
        names = self.running() if running is None else set(running)
        return Native(
            self.directory, names, self.ports, self.compose, self.listening, self.time_scale
        )

    # -- commands -----------------------------------------------------------------------

    def up(
        self, out: Out = print, timeout: float = 60.0, started: list[str] | None = None
    ) -> tuple[list[str], dict[str, str]]:
        """Start every available component not already running.

        Returns the components started (also appended to ``started`` as they start, so
        a caller interrupted half-way knows what to stop) and the failures (component ->
        message); a component that fails does not stop the others from starting.
        """
        started = [] if started is None else started
        if self.time_scale != 1:
            out(
                f"{TIME_SCALE_ENV}={self.time_scale:g}: alert `for:` durations, intervals and "
                "notification timings divided accordingly, for tests; unset it for real use"
            )
        available = self.available()
        alive = self.running()
        self._choose_ports(out)
        native = self.native(alive | set(available))
        self.ports = dict(native.ports)
        self._save()
        self._remove_stale_demo_targets()
        failures: dict[str, str] = {}
        if self.longterm:
            # Without them Prometheus still runs the long-term config, which has no rules:
            # nothing would evaluate the alerts.
            for name in LONGTERM_NEEDS:
                if name not in available and name not in alive:
                    failures[name] = (
                        f"--longterm needs {name}, which is not installed: "
                        f"{BY_NAME[name].get_it}; until then nothing evaluates the rules"
                    )
                    out(f"{name:<13} FAILED    {failures[name]}")
        for component in self.components():
            name = component.service
            if name in alive:
                out(f"{name:<13} already running (pid {self.records[name].pid})")
                continue
            if name not in available:
                continue
            try:
                self._start(component, available[name], native, timeout)
            except StackError as exc:
                failures[name] = str(exc)
                out(f"{name:<13} FAILED    {exc}")
                continue
            started.append(name)
            out(f"{name:<13} started   {self._where(component, native)}")
        for component in self.components():
            if component.service in self.without and component.service not in alive:
                out(f"{component.service:<13} left out (--without)")
            elif (
                component.service not in alive
                and component.service not in available
                and component.service not in failures
            ):
                out(f"{component.service:<13} absent    install: {component.get_it}")
        self._reload_prometheus()
        return started, failures

    def _choose_ports(self, out: Out) -> None:
        """The first time, every port not given with --port is its usual one unless
        another program holds it, then the next number neither held nor usual for another
        listener here, said here; from then on this state directory keeps its ports (a
        taken one is refused, naming its holder)."""
        if set(self.ports) >= {f"{s}:{p}" for s, ports in self.listening.items() for p in ports}:
            return
        services = self.compose["services"]
        usual = assign_ports(services, self.listening, self.ports)
        reserved = set(usual.values())
        moved: dict[str, int] = {}
        for key, port in usual.items():
            if key in self.ports or processes.port_free(port):
                continue
            new = port + 1
            while new in reserved or not processes.port_free(new):
                new += 1
            reserved.add(new)
            moved[key] = new
            if key.split(":")[0] not in self.without:
                out(
                    f"{key.split(':')[0]:<13} port {port} is taken by "
                    f"{processes.holder(port)}: {key} listens on {new} instead "
                    f"(--port {key}=PORT to choose)"
                )
        self.ports = {**usual, **moved}  # no other port moves along

    def _reload_prometheus(self) -> None:
        """Scrape and alert to what really runs now (a component may have failed, or
        been left out since Prometheus started)."""
        if "prometheus" not in self.running():
            return
        native = self.native()
        native.write_configs("prometheus")
        request = urllib.request.Request(native.url("prometheus", 9090, "/-/reload"), b"")
        try:
            processes.LOCAL.open(request, timeout=5).close()
        except OSError:
            pass  # an older config keeps working; `status` and the log tell the rest

    def _start(self, component: Component, binary: str, native: Native, timeout: float) -> None:
        name = component.service
        check_ports(native, name)
        try:
            native.write_configs(name)
            argv = component.argv(binary, native, self.directory)
            env = component.environment(native, self.directory)
            proc, record = processes.launch(
                name, argv, env, self.directory / "logs" / f"{name}.log", cwd=self.directory
            )
        except (OSError, ValueError, yaml.YAMLError) as exc:
            raise StackError(f"cannot start {binary}: {exc}") from None
        self._record(record)
        try:
            if component.ready:
                url = f"http://127.0.0.1:{native.port(name, component.port)}{component.ready}"
                processes.wait_http(url, timeout, alive=lambda: proc.poll() is None)
            else:
                port = native.port(name, component.port)
                processes.wait_redis(port, timeout, alive=lambda: proc.poll() is None)
        except processes.NotReady as exc:
            processes.stop(record)
            proc.poll()
            self._forget(name)
            raise StackError(f"{exc}; its log:\n{_tail(Path(record.log))}") from None
        except BaseException:
            # Interrupted while waiting: do not leave a half-started component behind.
            processes.stop(record)
            proc.poll()
            self._forget(name)
            raise

    def start_process(
        self, service: str, argv: list[str], env: Mapping[str, str], cwd: Path | None = None
    ) -> Any:
        """Start a demo process and record it like a component."""
        proc, record = processes.launch(
            service,
            argv,
            {**env, processes.MARKER: str(self.directory)},
            self.directory / "logs" / f"{service}.log",
            cwd=cwd or self.directory,
        )
        self._record(record)
        return proc

    def stop(self, names: Iterable[str], out: Out = print) -> None:
        # The load first, so that nothing it sends meets a server already gone.
        order = [*reversed(DEMO), *(c.service for c in reversed(COMPONENTS))]
        for name in sorted(set(names), key=lambda n: order.index(n) if n in order else -1):
            record = self.records.get(name)
            if record is None:
                continue
            if processes.stop(record):
                out(f"{name:<13} stopped")
            self._forget(name)
        self._remove_stale_demo_targets()

    def down(self, out: Out = print) -> None:
        """Stop every process this directory recorded (and nothing else)."""
        self.stop(list(self.records), out)

    def _remove_stale_demo_targets(self) -> None:
        # Left by a demo that died without cleaning up: its targets would read as down.
        if not any(name in self.running() for name in DEMO):
            with contextlib.suppress(FileNotFoundError):
                (self.directory / "targets" / DEMO_TARGETS).unlink()

    def status(self, out: Out = print) -> dict[str, str]:
        available = self.available()
        alive = self.running()
        native = self.native(alive)
        states = {}
        for component in self.components():
            name = component.service
            if name in alive:
                states[name] = "running"
                pid = self.records[name].pid
                out(f"{name:<13} running   {self._where(component, native)}  (pid {pid})")
            elif name in available:
                states[name] = "stopped"
                out(f"{name:<13} stopped   ({available[name]})")
            else:
                states[name] = "absent"
                out(f"{name:<13} absent    install: {component.get_it}")
            if name in available:
                out(f"{'':<13} {self._version_line(name, available[name])}")
        for name in DEMO:
            if name in alive:
                states[name] = "running"
                out(f"{name:<13} running   (pid {self.records[name].pid})")
        return states

    def _version_line(self, service: str, binary: str) -> str:
        """The binary's version, and a warning when compose runs another one."""
        have, notes = binary_version(binary), []
        if have is None:
            # Some distribution builds print an empty version (Debian's VictoriaMetrics).
            have = package_version(binary)
            notes.append(f"its package's: {binary} --version says none")
        if have is None:
            return f"version unknown ({binary} --version said none)"
        pinned = pinned_version(self.compose, service)
        if have == pinned:
            notes.insert(0, "as compose pins")
        line = f"version {have}" + (f" ({'; '.join(notes)})" if notes else "")
        if pinned is None or have == pinned:
            return line
        warning = f"{line}; WARNING: compose pins {pinned}, behaviour may differ"
        if service in BUILT:
            return warning + " (compose/build-binaries builds the pinned one)"
        if service in ("loki", "tempo", "grafana"):
            return warning + " (Grafana's releases have the pinned one: docs/stack.md)"
        return warning

    def _where(self, component: Component, native: Native) -> str:
        port = native.port(component.service, component.port)
        if component.service == "redis":
            return f"redis://127.0.0.1:{port}/0"
        if component.service == "collector":
            return f"OTLP {native.url('collector', 4318)} (health :{port})"
        if component.service == "grafana":
            return f"http://127.0.0.1:{port} (admin password in {self.directory}/grafana)"
        return f"http://127.0.0.1:{port}"


#: Components compose/build-binaries builds at the pinned versions.
BUILT = frozenset(("prometheus", "alertmanager", "collector"))
_VERSION = re.compile(r"(\d+\.\d+\.\d+)")


def binary_version(binary: str) -> str | None:
    """``X.Y.Z`` from ``binary --version`` (every component's binary takes that flag)."""
    try:
        result = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    match = _VERSION.search(result.stdout + result.stderr)
    return match.group(1) if match else None


def package_version(binary: str) -> str | None:
    """``X.Y.Z`` of the Debian package that installed ``binary``, if one did."""
    found = shutil.which(binary) or binary
    package = ""
    try:
        # The path as found and as resolved: dpkg knows one of them (merged /usr).
        for path in dict.fromkeys((found, os.path.realpath(found))):
            owner = subprocess.run(
                ["dpkg-query", "-S", path], capture_output=True, text=True, timeout=10
            )
            # The last line names the owner ("diversion by ..." lines come first).
            lines = owner.stdout.strip().splitlines()
            if owner.returncode == 0 and lines:
                package = lines[-1].partition(":")[0].strip()
                break
        if not package or "," in package:
            return None
        version = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", package],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    # Debian's version: [epoch:]upstream[-revision]; the upstream part is compose's tag.
    upstream = version.stdout.rpartition(":")[2] if version.returncode == 0 else ""
    match = _VERSION.match(upstream)
    return match.group(1) if match else None


def pinned_version(compose: Mapping[str, Any], service: str) -> str | None:
    """The version of the image compose runs for ``service`` (its tag, without a ``v``)."""
    image = str(compose["services"].get(service, {}).get("image", ""))
    match = _VERSION.search(image.partition(":")[2])
    return match.group(1) if match else None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def python_command(argv: list[str]) -> list[str]:
    """A compose command run with this interpreter: ``sightline``, ``gunicorn``,
    ``celery`` and ``python`` become ``sys.executable -m ...``, so the demo runs from the
    environment Sightline is installed in whether or not its scripts are on PATH."""
    modules = {"sightline": "sightline.cli", "gunicorn": "gunicorn", "celery": "celery"}
    result: list[str] = []
    for index, arg in enumerate(argv):
        first = index == 0 or argv[index - 1] == "--"
        if first and arg in modules:
            result += [sys.executable, "-m", modules[arg]]
        elif first and arg in ("python", "python3"):
            result.append(sys.executable)
        else:
            result.append(arg)
    return result
