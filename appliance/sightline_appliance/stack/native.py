"""Loopback configurations derived from the compose files.

Compose is the one source of truth for every component: its command, its environment,
the files it mounts and the addresses it talks to. Running without Docker, each
component gets the same files with three mechanical rewrites:

- ``<service>:<port>`` (a compose service name and a port it listens on) becomes
  ``127.0.0.1:<native port>``, and so does ``0.0.0.0:<port>`` (or ``localhost:<port>``)
  in the service's own files;
- a container path the service mounts becomes the host path: the repository's file or
  directory for read-only content (``alerts/``, ``dashboards/``), a rewritten copy under
  the state directory for config that names addresses, a directory under the state
  directory for a named volume;
- Prometheus scrape jobs and Alertmanagers naming a service that is not running here are
  left out, so an absent component is not an alert.

A native port is the compose port unless another service already took it, then the next
free number: deterministic for a given compose file, and overridable (``--port``).

For tests of the alerts end to end, ``SIGHTLINE_STACK_TIME_SCALE=N`` divides every
``for:`` of the rule copies, Prometheus' scrape and evaluation intervals and
Alertmanager's grouping and repeat timings by N (none below one second). The rules'
range windows (``[5m]``, ``[1h]``) stay as shipped: they are what the rules mean.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import yaml

# Where the files live: a source checkout resolves the package's symlinks to the
# repository; a wheel carries copies.
FILES = (Path(__file__).resolve().parent.parent / "stackfiles").resolve()
COMPOSE_DIR = (FILES / "compose").resolve()
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
#: The long-term storage layer (``--longterm``): VictoriaMetrics and vmalert.
LONGTERM_FILE = COMPOSE_DIR / "longterm.yml"

_CONFIG_SUFFIXES = {".yml", ".yaml", ".json", ".ini", ".conf"}
#: Test-only: divide the stack's waiting times by this (module docstring).
TIME_SCALE_ENV = "SIGHTLINE_STACK_TIME_SCALE"
_ANY = r"(?:0\.0\.0\.0|localhost|127\.0\.0\.1)"


DEMO_TARGETS = "sightline-demo.yml"  # written by `sightline demo` into targets/

_TARGETS_README = """\
# Scrape targets

Prometheus ({prometheus}) reads every `*.yml` file in this directory
({directory}) as a list of scrape targets. Other files, like this README, are ignored.

## Add your own app

Run the app with Sightline (`sightline.init(service="checkout")`, or
`sightline run --service checkout -- gunicorn app:app`) and drop one file per service
here, named after it, for example `checkout.yml`:

```yaml
- targets: ["127.0.0.1:9464"]
  labels:
    job: checkout
```

- **`job` is the service name**: dashboards and alerts group by it, so use the same name
  as `SIGHTLINE_SERVICE` (or `service=` in `init()`).
- **The address** is the app's metrics port (`SIGHTLINE_METRICS_ADDR`, 9464 by default)
  on this machine: `127.0.0.1:9464`. Two services on one machine need two ports (set
  `SIGHTLINE_METRICS_ADDR=127.0.0.1:9465` for the second); an app on another machine is
  `host:9464`, listening on an address this machine reaches.
- **Several processes or hosts** of one service go in the same file:
  `targets: ["127.0.0.1:9464", "10.0.0.6:9464"]`. The workers of one gunicorn or Celery
  master share one port: one target.
- **Every target here is a service** to the alerts and scaling hints: Prometheus labels
  it `sightline="service"` (the `apps` job's relabelling), a label you will see on its
  series.

Prometheus notices new, changed and deleted files within seconds, without a restart. The
new job shows on {prometheus}/targets.

`{demo}` is written here by `sightline demo` while the demo runs (the shop and its
worker) and removed when it stops: leave it alone, and do not name a file of yours so.
"""


def load_compose(path: Path = COMPOSE_FILE, *layers: Path) -> dict[str, Any]:
    """The compose file, with ``layers`` (``-f`` files) merged over it in order."""
    data: dict[str, Any] = yaml.safe_load(path.read_text())
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise ValueError(f"{path}: no services")
    for layer in layers:
        try:
            extra = yaml.safe_load(layer.read_text())
        except yaml.YAMLError as exc:  # compose's own tags (!reset, !override) among them
            raise ValueError(f"{layer}: not YAML this merge reads: {exc}") from None
        if not isinstance(extra, dict):
            raise ValueError(f"{layer}: not a compose file")
        try:
            data = merge_compose(data, extra)
        except ValueError as exc:
            raise ValueError(f"{layer}: {exc}") from None
    return data


def merge_compose(base: Mapping[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    """``layer`` over ``base`` as ``docker compose -f base -f layer`` merges them: a
    service's ``command`` (and any other single value) is replaced; its ``environment``
    and ``depends_on`` are merged by key and its ``volumes`` by container path; services
    and top-level volumes are added. Any other list or mapping a layer gives a service
    that already has it (``ports``, ``healthcheck``: compose merges each its own way) is
    refused rather than merged differently, and so are top-level keys other than
    ``services``, ``volumes``, ``name`` and ``x-`` fields (``networks``, ``secrets``,
    ``configs``), which would otherwise be dropped, and so is a new service with neither
    ``image`` nor ``build``."""
    # `version` is obsolete (compose ignores it); `name` names the compose project.
    known = ("services", "volumes", "name", "version")
    unknown = sorted(k for k in layer if k not in known and not str(k).startswith("x-"))
    if unknown:
        raise ValueError(
            f"{', '.join(map(str, unknown))}: a layer may not add them here (only services, "
            "volumes, name and x- extension fields)"
        )
    merged = dict(base)
    services = {name: dict(service or {}) for name, service in base["services"].items()}
    for name, extra in (layer.get("services") or {}).items():
        if name not in services and not {"image", "build"} & set(extra or {}):
            # Compose refuses it too, when it starts the service.
            raise ValueError(f"services.{name}: a service a layer adds needs an image or build")
        service = services.setdefault(name, {})
        for key, value in (extra or {}).items():
            if key == "environment":
                service[key] = {**environment(service), **environment({key: value})}
            elif key == "depends_on":
                before = service.get(key) or {}
                if isinstance(before, list):
                    before = {dependency: {} for dependency in before}
                after = value if isinstance(value, dict) else {v: {} for v in value}
                service[key] = {**before, **after}
            elif key == "volumes":
                targets = {mount.target for mount in mounts({key: value})}
                kept = [
                    entry
                    for entry, mount in zip(service.get(key, []), mounts(service), strict=True)
                    if mount.target not in targets
                ]
                service[key] = [*kept, *value]
            elif (
                key in service
                and key not in ("command", "entrypoint")
                and (isinstance(value, (list, dict)))
            ):
                raise ValueError(
                    f"services.{name}.{key}: a layer may not change it here (only command, "
                    "entrypoint, environment, depends_on, volumes and single values)"
                )
            else:
                service[key] = value
    merged["services"] = services
    if layer.get("name"):
        merged["name"] = layer["name"]
    if layer.get("volumes"):
        merged["volumes"] = {**(base.get("volumes") or {}), **layer["volumes"]}
    return merged


@dataclass(frozen=True)
class Mount:
    source: str  # as written: a relative host path or a volume name
    target: str  # the path inside the container
    named: bool  # a named volume rather than a bind mount
    scratch: bool = False  # a tmpfs: natively, a data directory emptied at each start


def mounts(service: Mapping[str, Any]) -> list[Mount]:
    """A service's mounts, short or long syntax. One with no source (an anonymous volume,
    ``/data`` or ``type: volume`` with no ``source``, or a ``type: tmpfs``) is a volume of
    the service's own, named after its target: natively, a data directory like a named
    volume's, never a host path. Long syntax says by its ``type`` which kind it is."""
    found = []
    for entry in service.get("volumes", ()):
        kind = ""
        if isinstance(entry, str):
            parts = entry.split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
        else:
            kind = str(entry.get("type") or "")
            source, target = str(entry.get("source") or ""), str(entry["target"])
            if kind not in ("", "bind", "volume", "tmpfs"):
                raise ValueError(f"volumes: a {kind} mount at {target} cannot be made natively")
            if kind == "tmpfs":
                source = ""
        if not source:
            # Quoted, so that /a-b and /a/b are two volumes.
            source = "anonymous-" + (quote(target.strip("/"), safe="") or "root")
            kind = kind or "volume"
        named = kind == "volume" or (kind != "bind" and not source.startswith((".", "/", "~")))
        found.append(Mount(source, target, named, scratch=kind == "tmpfs"))
    return found


def command(service: Mapping[str, Any]) -> list[str]:
    raw = service.get("command", [])
    return shlex.split(raw) if isinstance(raw, str) else [str(arg) for arg in raw]


def environment(service: Mapping[str, Any]) -> dict[str, str]:
    raw = service.get("environment", {})
    if isinstance(raw, list):
        pairs = (item.split("=", 1) for item in raw)
        return {key: value for key, value in pairs}
    return {str(key): "" if value is None else str(value) for key, value in raw.items()}


_INTERPOLATION = re.compile(r"\$\$|\$\{(\w+)(?:(:?[-?])([^}]*))?\}")


def interpolate(value: str, variables: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR:?message}`` and ``$$``."""

    def one(match: re.Match[str]) -> str:
        name, operator, argument = match.groups()
        if name is None:
            return "$"
        present = variables.get(name)
        if present or (present is not None and operator in ("-", "?")):
            return present
        if operator and operator.endswith("-"):
            return argument
        if operator and operator.endswith("?"):
            raise ValueError(f"{name} is not set: {argument}")
        return ""

    return _INTERPOLATION.sub(one, value)


class Native:
    """The loopback version of every compose service, rooted at a state directory."""

    def __init__(
        self,
        directory: Path,
        running: Iterable[str],
        ports: Mapping[str, int] | None = None,
        compose: Mapping[str, Any] | None = None,
        listening: Mapping[str, list[int]] | None = None,
        time_scale: float = 1.0,
    ) -> None:
        self.directory = directory
        self.time_scale = time_scale
        self.compose = dict(compose or load_compose())
        self.services: dict[str, dict[str, Any]] = self.compose["services"]
        self.running = set(running)
        self.listening = listening or listen_ports(self.services)
        self.ports = assign_ports(self.services, self.listening, ports or {})

    # -- addresses --------------------------------------------------------------------

    def port(self, service: str, port: int) -> int:
        return self.ports[f"{service}:{port}"]

    def url(self, service: str, port: int, path: str = "") -> str:
        return f"http://127.0.0.1:{self.port(service, port)}{path}"

    def rewrite(self, text: str, service: str) -> str:
        """``text`` as ``service`` sees it natively: loopback addresses, host paths.

        One pass over the text, so nothing a substitution wrote is substituted again.
        """
        paths = self.paths(service) if service in self.services else {}
        names = "|".join(re.escape(n) for n in sorted(self.services, key=len, reverse=True))
        targets = "|".join(re.escape(t) for t in sorted(paths, key=len, reverse=True))
        pattern = rf"(?<![\w.-])(?:(?P<host>{names}|{_ANY}):(?P<port>\d+)(?![\d]|\.\d)"
        if targets:
            pattern += rf"|(?P<path>{targets})(?=$|[/\s\"',:\]]))"
        else:
            pattern += ")"

        def one(match: re.Match[str]) -> str:
            if match.groupdict().get("path"):
                return str(paths[match.group("path")])
            host = match.group("host")
            owner = host if host in self.services else service
            key = f"{owner}:{match.group('port')}"
            return f"127.0.0.1:{self.ports[key]}" if key in self.ports else match.group(0)

        return re.sub(pattern, one, text)

    # -- files ------------------------------------------------------------------------

    def paths(self, service: str) -> dict[str, Path]:
        """Container path -> host path, for every mount of ``service``."""
        found: dict[str, Path] = {}
        for mount in mounts(self.services[service]):
            if mount.named:
                found[mount.target] = self.directory / service / mount.source
                continue
            source = (COMPOSE_DIR / mount.source).resolve()
            if mount.target == "/etc/prometheus/targets":
                found[mount.target] = self.directory / "targets"
            elif (
                (source.is_file() and source.suffix in _CONFIG_SUFFIXES)
                or (
                    source.is_dir()
                    and source.is_relative_to(COMPOSE_DIR)
                    and any(path.suffix in _CONFIG_SUFFIXES for path in source.rglob("*"))
                )
                or (
                    # Rules, whose `for:` the time scale shortens.
                    self.time_scale != 1
                    and source.is_dir()
                    and any(path.name.endswith(".rules.yml") for path in source.iterdir())
                )
            ):
                # Config that may name addresses: a rewritten copy. (A directory of
                # secrets, with no config files, is used where it is, modes intact.)
                found[mount.target] = self.directory / service / "config" / source.name
            else:
                found[mount.target] = source
        return found

    def write_configs(self, service: str) -> None:
        """Write the rewritten copies ``service`` mounts, and create its data dirs."""
        for mount in mounts(self.services[service]):
            host = self.paths(service)[mount.target]
            if mount.named:
                if mount.scratch:
                    shutil.rmtree(host, ignore_errors=True)
                host.mkdir(parents=True, exist_ok=True)
                continue
            source = (COMPOSE_DIR / mount.source).resolve()
            if host == source:
                continue
            if mount.target == "/etc/prometheus/targets":
                host.mkdir(parents=True, exist_ok=True)
                (host / "README.md").write_text(self.targets_readme(host))
                continue
            files = [source] if source.is_file() else sorted(source.rglob("*"))
            for path in files:
                if not path.is_file():
                    continue
                dest = host if source.is_file() else host / path.relative_to(source)
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_text(self.derive(path, service))

    def derive(self, path: Path, service: str) -> str:
        text = path.read_text()
        if service == "prometheus" and path.name in ("prometheus.yml", "longterm.yml"):
            config = self.prune_prometheus(yaml.safe_load(text))
            if self.time_scale != 1:
                _scale_keys(
                    config.get("global", {}),
                    ("scrape_interval", "scrape_timeout", "evaluation_interval"),
                    self.time_scale,
                )
                for write in config.get("remote_write", []):
                    queue = write.setdefault("queue_config", {})
                    queue.setdefault("batch_send_deadline", "5s")  # Prometheus' default
                    _scale_keys(queue, ("batch_send_deadline",), self.time_scale)
            text = yaml.safe_dump(config, sort_keys=False)
        elif service in _RULERS and path.name.endswith(".rules.yml") and self.time_scale != 1:
            scale = self.time_scale
            text = _FOR.sub(lambda m: m.group(1) + scaled(m.group(2), scale), text)
        elif service == "alertmanager" and path.name == "alertmanager.yml" and self.time_scale != 1:
            config = yaml.safe_load(text)
            _scale_keys(config.get("global", {}), ("resolve_timeout",), self.time_scale)
            routes = [config.get("route", {})]
            while routes:
                route = routes.pop()
                timings = ("group_wait", "group_interval", "repeat_interval")
                _scale_keys(route, timings, self.time_scale)
                routes.extend(route.get("routes", []))
            text = yaml.safe_dump(config, sort_keys=False)
        elif service in _SERVER_PORTS and path.suffix in (".yml", ".yaml"):
            config = yaml.safe_load(text)
            if isinstance(config, dict) and isinstance(config.get("server"), dict):
                text = yaml.safe_dump(self.listen_on_loopback(config, service), sort_keys=False)
        elif service == "collector" and path.suffix in (".yml", ".yaml"):
            config = yaml.safe_load(text)
            if isinstance(config, dict):
                text = yaml.safe_dump(self.collector_telemetry(config), sort_keys=False)
        return self.rewrite(text, service)

    def collector_telemetry(self, config: dict[str, Any]) -> dict[str, Any]:
        """The Collector's own metrics endpoint is a host and a port on separate keys, and
        its memory limit, a share of the container's memory in compose, would be a share
        of the whole machine's here: give it compose's 512 MiB in absolute terms."""
        for name, processor in config.get("processors", {}).items():
            if name.split("/")[0] == "memory_limiter" and isinstance(processor, dict):
                processor.pop("limit_percentage", None)
                processor.pop("spike_limit_percentage", None)
                processor.update(limit_mib=400, spike_limit_mib=100)
        telemetry = config.get("service", {}).get("telemetry", {}).get("metrics", {})
        for reader in telemetry.get("readers", []):
            exporter = reader.get("pull", {}).get("exporter", {}).get("prometheus")
            if isinstance(exporter, dict) and "port" in exporter:
                port = int(exporter["port"])
                exporter["host"] = "127.0.0.1"
                exporter["port"] = self.ports.get(f"collector:{port}", port)
        return config

    def listen_on_loopback(self, config: dict[str, Any], service: str) -> dict[str, Any]:
        """Loki's and Tempo's ``server`` block gives bare port numbers, not addresses."""
        server = config["server"]
        for key, default in _SERVER_PORTS[service].items():
            port = int(server.get(key, default))
            server[key] = self.ports.get(f"{service}:{port}", port)
            server[key.replace("_port", "_address")] = "127.0.0.1"
        if service == "loki":
            config.setdefault("common", {})["instance_addr"] = "127.0.0.1"
        else:
            # Tempo's ring gossip would otherwise listen on every interface, and its ring
            # members would advertise an interface address nothing listens on.
            config.setdefault("memberlist", {})["bind_addr"] = ["127.0.0.1"]
            ingester = config.setdefault("ingester", {}).setdefault("lifecycler", {})
            ingester["address"] = "127.0.0.1"
            config.setdefault("metrics_generator", {}).setdefault("ring", {})["instance_addr"] = (
                "127.0.0.1"
            )
        return config

    def prune_prometheus(self, config: dict[str, Any]) -> dict[str, Any]:
        """Drop scrape jobs and Alertmanagers of services not running here."""

        def present(target: str) -> bool:
            host = target.rsplit(":", 1)[0]
            return host not in self.services or host in self.running

        jobs = []
        for job in config.get("scrape_configs", []):
            statics = job.get("static_configs")
            if statics:
                for group in statics:
                    group["targets"] = [t for t in group.get("targets", []) if present(t)]
                job["static_configs"] = [g for g in statics if g["targets"]]
                if not job["static_configs"] and not any(k.endswith("_sd_configs") for k in job):
                    continue
            jobs.append(job)
        config["scrape_configs"] = jobs
        managers = []
        for manager in config.get("alerting", {}).get("alertmanagers", []):
            for group in manager.get("static_configs", []):
                group["targets"] = [t for t in group.get("targets", []) if present(t)]
            if any(g["targets"] for g in manager.get("static_configs", [])):
                managers.append(manager)
        if "alerting" in config:
            config["alerting"]["alertmanagers"] = managers
        return config

    def targets_readme(self, directory: Path) -> str:
        """How to add an app to the native stack's scrape targets (compose's README is
        about containers: host.docker.internal, a mounted directory)."""
        prometheus = f"http://127.0.0.1:{self.port('prometheus', 9090)}"
        return _TARGETS_README.format(directory=directory, prometheus=prometheus, demo=DEMO_TARGETS)

    def demo_targets(self) -> str:
        """The demo's file_sd targets, rewritten (written by ``sightline demo``)."""
        return self.rewrite((COMPOSE_DIR / "prometheus" / "targets" / "demo.yml").read_text(), "")

    def command(self, service: str) -> list[str]:
        args = [self.rewrite(arg, service) for arg in command(self.services[service])]
        if self.time_scale != 1:
            for index, arg in enumerate(args):
                flag, sep, value = arg.partition("=")
                if sep and flag.lstrip("-") in _SCALED_FLAGS:
                    args[index] = f"{flag}={scaled(value, self.time_scale)}"
        return args

    def environment(self, service: str, variables: Mapping[str, str]) -> dict[str, str]:
        return {
            key: self.rewrite(interpolate(value, variables), service)
            for key, value in environment(self.services[service]).items()
        }


#: Services evaluating alerts/*.rules.yml, whose ``for:`` the time scale divides.
_RULERS = ("prometheus", "vmalert")
#: Command-line durations the time scale divides: vmalert's evaluation interval, as
#: Prometheus' own, and how long VictoriaMetrics hides new points from queries.
_SCALED_FLAGS = ("evaluationInterval", "search.latencyOffset")
_FOR = re.compile(r"^(\s*for:\s*)(\S+)[ \t]*$", re.MULTILINE)
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def seconds(duration: str) -> float:
    """A Prometheus duration (``1h30m``, ``15m``, ``500ms``) in seconds."""
    parts = _DURATION.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise ValueError(f"not a Prometheus duration: {duration!r}")
    return sum(int(number) * _UNITS[unit] for number, unit in parts)


def scaled(duration: str, scale: float) -> str:
    """``duration`` divided by ``scale``, in whole seconds, at least one (``0s`` stays)."""
    value = seconds(duration)
    return "0s" if value == 0 else f"{max(1, round(value / scale))}s"


def _scale_keys(config: dict[str, Any], keys: Iterable[str], scale: float) -> None:
    for key in keys:
        if isinstance(config.get(key), str):
            config[key] = scaled(config[key], scale)


# The bare listen ports (and their defaults) in Loki's and Tempo's `server` block.
_SERVER_PORTS = {
    "loki": {"http_listen_port": 3100, "grpc_listen_port": 9095},
    "tempo": {"http_listen_port": 3200, "grpc_listen_port": 9095},
}
# A port is not followed by a dot and a digit: `grafana:13.2.0` is an image tag.
_ADDRESS = re.compile(r"(?<![\w.-])([a-z][\w-]*):(\d{2,5})(?![\d]|\.\d)")
_LISTEN = re.compile(rf"(?<![\w.-]){_ANY}:(\d{{2,5}})(?![\d]|\.\d)")


def listen_ports(services: Mapping[str, Mapping[str, Any]]) -> dict[str, list[int]]:
    """Every port each service listens on: what compose exposes or publishes, what other
    services' settings address it at, and what its own files bind."""
    found: dict[str, set[int]] = {name: set() for name in services}
    texts: list[tuple[str, str]] = []
    for name, service in services.items():
        for entry in service.get("expose", ()):
            found[name].add(int(str(entry).split("/")[0]))
        found[name].update(_published(service))
        settings = {key: value for key, value in service.items() if key not in ("image", "build")}
        texts.append((name, yaml.safe_dump(settings)))
        for mount in mounts(service):
            source = (COMPOSE_DIR / mount.source).resolve()
            if mount.named or not source.exists():
                continue
            for path in [source] if source.is_file() else sorted(source.rglob("*")):
                if path.is_file() and path.suffix in _CONFIG_SUFFIXES:
                    texts.append((name, path.read_text()))
    for owner, text in texts:
        for host, port in _ADDRESS.findall(text):
            if host in found:
                found[host].add(int(port))
        for port in _LISTEN.findall(text):
            found[owner].add(int(port))
    return {name: sorted(ports) for name, ports in found.items()}


def assign_ports(
    services: Mapping[str, Any], ports: Mapping[str, list[int]], overrides: Mapping[str, int]
) -> dict[str, int]:
    """Native port per ``service:port``: the overrides, then published ports keep their
    numbers where they can (users know them), then internal ones, in compose order."""
    taken = set(overrides.values())
    assigned = {key: port for key, port in overrides.items()}
    published = {f"{name}:{port}" for name in services for port in _published(services[name])}
    for first in (True, False):
        for name in services:
            for port in ports[name]:
                key = f"{name}:{port}"
                if key in assigned or (key in published) != first:
                    continue
                native = port
                while native in taken:
                    native += 1
                taken.add(native)
                assigned[key] = native
    return assigned


def _published(service: Mapping[str, Any]) -> list[int]:
    found = []
    for entry in service.get("ports", ()):
        target = entry.get("target") if isinstance(entry, dict) else str(entry).split(":")[-1]
        found.append(int(str(target).split("/")[0]))
    return found
