"""The bundled stack agrees with itself, checked without Docker.

docker-compose.yml is validated against the compose-spec schema; every address one
component gives another (`<service>:<port>`) is checked against the port that service's
own configuration listens on; Prometheus' and Alertmanager's configs go through promtool
and amtool; Grafana's provisioning is checked against the datasource UIDs dashboards use.
Loki, Tempo and the collector cannot run here, so their configs are checked by reading
them (see docs/stack.md, "What is verified where").
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from .servers import binary

# Checks the stack's files, binaries and processes: not run again by .ci/newest-sdk.
pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
DATASOURCES = COMPOSE_DIR / "grafana" / "provisioning" / "datasources" / "datasources.yml"
PROVIDERS = COMPOSE_DIR / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
TARGETS = COMPOSE_DIR / "prometheus" / "targets"
DASHBOARDS = ROOT / "dashboards"

# Services deliberately without a healthcheck, and why (docs/stack.md says the same).
NO_HEALTHCHECK = {
    "tempo": "distroless 2.10 image: no shell, no HTTP client, no self-probe flag",
    "collector": "image built FROM scratch: nothing but the collector binary",
    "demo-load": "a client with no port of its own",
}
# check-jsonschema with the compose-spec schema it vendors.
SCHEMA_CHECK = (sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec")
# Grafana's built-in pseudo data sources, which are never provisioned.
BUILTIN_DATASOURCES = {"-- Grafana --", "grafana", "-- Mixed --", "-- Dashboard --"}


# -- loading --------------------------------------------------------------------------


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@cache
def compose() -> dict[str, Any]:
    data = load(COMPOSE_FILE)
    assert isinstance(data, dict), f"{COMPOSE_FILE} is not a mapping"
    return data


def services() -> dict[str, dict[str, Any]]:
    return compose()["services"]


def command(name: str) -> list[str]:
    raw = services()[name].get("command", [])
    return shlex.split(raw) if isinstance(raw, str) else [str(arg) for arg in raw]


def flag(name: str, option: str) -> str | None:
    """The value of ``-option=value`` or ``--option=value`` in a service's command."""
    for arg in command(name):
        match = re.fullmatch(rf"--?{re.escape(option)}=(.*)", arg)
        if match:
            return match.group(1)
    return None


def environment(name: str) -> dict[str, str]:
    raw = services()[name].get("environment", {})
    if isinstance(raw, list):
        return dict(item.split("=", 1) for item in raw)
    return {str(key): "" if value is None else str(value) for key, value in raw.items()}


def volumes(name: str) -> Iterator[tuple[str, str]]:
    """(source, container path) of each mount, in the short or the long syntax."""
    for entry in services()[name].get("volumes", []):
        if isinstance(entry, str):
            source, target = entry.split(":")[:2]
        else:
            source, target = str(entry.get("source", "")), str(entry["target"])
        yield source, target


def is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def host_path(name: str, container_path: str) -> Path:
    """The repository path that a service sees at ``container_path`` (through a bind mount)."""
    for source, target in sorted(volumes(name), key=lambda mount: -len(mount[1])):
        if is_bind(source) and (container_path + "/").startswith(target.rstrip("/") + "/"):
            return (COMPOSE_DIR / source / container_path[len(target) :].lstrip("/")).resolve()
    raise AssertionError(f"{name} mounts nothing at {container_path}")


def config_file(name: str) -> Path:
    """The repository file a service's command loads as its configuration."""
    path = flag(name, "config.file") or flag(name, "config")
    assert path, f"{name} names no config file in its command"
    return host_path(name, path)


def published(name: str) -> Iterator[tuple[str, str, int]]:
    """(host ip, host port, container port) of each published port."""
    for entry in services()[name].get("ports", []):
        if isinstance(entry, dict):
            yield str(entry.get("host_ip", "")), str(entry.get("published", "")), entry["target"]
        else:
            parts = str(entry).split("/")[0].rsplit(":", 2)
            ip, host = (parts[0], parts[1]) if len(parts) == 3 else ("", parts[0])
            yield ip, host, int(parts[-1])


def address(value: str) -> tuple[str, int]:
    """Host and port of ``host:port`` or of a URL."""
    split = urlsplit(value if "//" in value else f"//{value}")
    assert split.hostname, f"no host in {value!r}"
    assert split.port, f"no port in {value!r}"
    return split.hostname, split.port


def seconds(duration: str) -> float:
    """A Prometheus-style duration (``5s``, ``1m30s``, ``168h``) in seconds."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    parts = re.findall(r"(\d+)(ms|s|m|h|d|w|y)", str(duration))
    assert parts, f"bad duration {duration}"
    assert "".join(n + u for n, u in parts) == str(duration), f"bad duration {duration}"
    return sum(int(number) * units[unit] for number, unit in parts)


def loki() -> dict[str, Any]:
    return load(config_file("loki"))


def tempo() -> dict[str, Any]:
    return load(config_file("tempo"))


def collector() -> dict[str, Any]:
    return load(config_file("collector"))


def prometheus() -> dict[str, Any]:
    return load(config_file("prometheus"))


def grafana_datasources() -> list[dict[str, Any]]:
    """The data sources as Grafana reads them: ``$VAR`` and ``${VAR}`` in each value from
    its compose environment (Grafana expands them; ``$$`` is a literal ``$``)."""
    variables = environment("grafana")

    def expand(match: re.Match[str]) -> str:
        if match.group() == "$$":
            return "$"
        name = match.group(1) or match.group(2)
        assert name in variables, f"{DATASOURCES.name} reads ${name}, which compose does not set"
        return variables[name]

    def values(node: Any) -> Any:
        if isinstance(node, str):
            return re.sub(r"\$\$|\$\{(\w+)\}|\$(\w+)", expand, node)
        if isinstance(node, dict):
            return {key: values(value) for key, value in node.items()}
        if isinstance(node, list):
            return [values(item) for item in node]
        return node

    return values(load(DATASOURCES))["datasources"]  # type: ignore[no-any-return]


def otlp_endpoints(config: dict[str, Any]) -> dict[str, str]:
    """protocol -> endpoint of an OTLP receiver block (Tempo's and the collector's)."""
    protocols = config["receivers"]["otlp"]["protocols"]
    return {protocol: settings["endpoint"] for protocol, settings in protocols.items()}


@cache
def listening() -> dict[str, frozenset[int]]:
    """The ports each service listens on, read from its own command and config files."""
    ports: dict[str, set[int]] = {name: set() for name in services()}
    defaults = {"prometheus": 9090, "alertmanager": 9093}
    for name, default in defaults.items():
        listen = flag(name, "web.listen-address")
        ports[name].add(address(listen)[1] if listen else default)
    ports["grafana"].add(int(environment("grafana").get("GF_SERVER_HTTP_PORT", 3000)))
    redis = command("redis")
    ports["redis"].add(int(redis[redis.index("--port") + 1]) if "--port" in redis else 6379)

    server = loki()["server"]
    ports["loki"] |= {server["http_listen_port"], server.get("grpc_listen_port", 9095)}
    server = tempo()["server"]
    ports["tempo"] |= {server["http_listen_port"], server.get("grpc_listen_port", 9095)}
    ports["tempo"] |= {address(e)[1] for e in otlp_endpoints(tempo()["distributor"]).values()}
    config = collector()
    ports["collector"] |= {address(e)[1] for e in otlp_endpoints(config).values()}
    for reader in config["service"]["telemetry"]["metrics"]["readers"]:
        ports["collector"].add(reader["pull"]["exporter"]["prometheus"]["port"])
    if "health_check" in config.get("extensions", {}):
        ports["collector"].add(address(config["extensions"]["health_check"]["endpoint"])[1])

    for name in services():
        metrics = environment(name).get("SIGHTLINE_METRICS_ADDR")
        if metrics:
            ports[name].add(address(metrics)[1])
        args = command(name)
        if "gunicorn" in args and "--bind" in args:
            ports[name].add(address(args[args.index("--bind") + 1])[1])
    return {name: frozenset(found) for name, found in ports.items()}


def assert_listens(target: str, where: str) -> None:
    host, port = address(target)
    assert host in services(), f"{where}: {host} is not a compose service"
    assert port in listening()[host], f"{where}: {host} does not listen on {port}"


def require_module(module: str, pip_name: str) -> None:
    if importlib.util.find_spec(module) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{pip_name} is not installed (the test extra pins it)")
        pytest.skip(f"{pip_name} is not installed")


def passes(*command: str) -> None:
    """Run a checker; fail with its output unless it exits 0."""
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def check_compose_schema(path: Path) -> subprocess.CompletedProcess[str]:
    require_module("check_jsonschema", "check-jsonschema")
    return subprocess.run(
        [*SCHEMA_CHECK, str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# -- compose ----------------------------------------------------------------------------


def test_compose_file_matches_the_compose_spec_schema() -> None:
    """docker-compose.yml validates against the compose-spec JSON schema check-jsonschema ships."""
    result = check_compose_schema(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


OBJECTSTORE_FILE = COMPOSE_DIR / "objectstore.yml"


@pytest.mark.parametrize("layers", [("longterm",), ("objectstore",), ("longterm", "objectstore")])
def test_layers_and_the_merged_files_match_the_compose_spec_schema(
    tmp_path: Path, layers: tuple[str, ...]
) -> None:
    """Each layer (longterm.yml, objectstore.yml) validates against the compose-spec
    schema, alone and merged over docker-compose.yml (together too), and every service the
    merged file's services depend on exists."""
    from sightline_appliance.stack.native import load_compose

    files = [COMPOSE_DIR / f"{name}.yml" for name in layers]
    merged = tmp_path / "merged.yml"
    merged.write_text(yaml.safe_dump(load_compose(COMPOSE_FILE, *files)))
    for path in (*files, merged):
        result = check_compose_schema(path)
        assert result.returncode == 0, result.stdout + result.stderr
    services = load(merged)["services"]
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):
            assert dependency in services, (name, dependency)


#: What objectstore.yml changes in each config: (path of keys, main value, S3 value).
STORAGE_KEYS = {
    "loki": [("common", "storage"), ("schema_config",), ("compactor", "delete_request_store")],
    "tempo": [
        ("storage", "trace", "backend"),
        ("storage", "trace", "local"),
        ("storage", "trace", "s3"),
    ],
}


def _without(config: dict[str, Any], paths: list[tuple[str, ...]]) -> dict[str, Any]:
    for path in paths:
        node = config
        for key in path[:-1]:
            node = node[key]
        node.pop(path[-1], None)
    return config


@pytest.mark.parametrize("service", ["loki", "tempo"])
def test_objectstore_configs_differ_from_the_main_ones_only_in_storage(service: str) -> None:
    """loki-s3.yml and tempo-s3.yml are loki.yml and tempo.yml with the storage moved to
    S3 (Loki's chunks and index, its compactor's delete requests; Tempo's blocks), with
    path-style bucket addressing, and nothing else changed."""
    main = load(COMPOSE_DIR / service / f"{service}.yml")
    s3 = load(COMPOSE_DIR / service / f"{service}-s3.yml")
    if service == "loki":
        assert s3["common"]["storage"]["s3"]["s3forcepathstyle"] is True
        assert [c["object_store"] for c in s3["schema_config"]["configs"]] == ["s3"]
        assert s3["compactor"]["delete_request_store"] == "s3"
        main_schema = [{**c, "object_store": "s3"} for c in main["schema_config"]["configs"]]
        assert s3["schema_config"]["configs"] == main_schema
    else:
        assert s3["storage"]["trace"]["backend"] == "s3"
        assert s3["storage"]["trace"]["s3"]["forcepathstyle"] is True
    assert _without(s3, STORAGE_KEYS[service]) == _without(main, STORAGE_KEYS[service])


@pytest.mark.parametrize("service", ["loki", "tempo"])
def test_objectstore_settings_come_from_the_environment_compose_sets(service: str) -> None:
    """The S3 config expands only variables the layer puts in that service's environment
    (and no other dollar sign, comments included: the whole file is expanded), its command
    turns expansion on and reads the file the layer mounts, and every variable the layer
    takes from compose/.env is described in .env.example."""
    from sightline_appliance.stack.native import load_compose

    layer = load(OBJECTSTORE_FILE)["services"][service]
    text = (COMPOSE_DIR / service / f"{service}-s3.yml").read_text()
    used = set(re.findall(r"\$\{(\w+)\}", text))
    assert text.count("$") == len(re.findall(r"\$\{\w+\}", text)), "a stray $ in the file"
    assert used <= set(layer["environment"]), used - set(layer["environment"])
    assert "-config.expand-env=true" in layer["command"]
    config = layer["command"][0].removeprefix("-config.file=")
    assert any(v.split(":")[1] == config for v in layer["volumes"])
    merged = load_compose(COMPOSE_FILE, OBJECTSTORE_FILE)["services"][service]
    assert merged["command"] == layer["command"]
    example = (COMPOSE_DIR / ".env.example").read_text()
    for value in layer["environment"].values():
        (variable,) = re.findall(r"\$\{(\w+)", value)
        assert re.search(rf"^# {variable}=", example, re.M), variable


@pytest.mark.parametrize("service", ["loki", "tempo"])
def test_objectstore_settings_survive_any_characters_a_secret_may_hold(service: str) -> None:
    """Expanded as Loki and Tempo expand them (-config.expand-env: each ${VAR} replaced by
    its text before the YAML is parsed), settings holding YAML's special characters
    (a MinIO secret like `*a: b #c`) parse to exactly the text given, and `insecure` to a
    boolean."""
    text = (COMPOSE_DIR / service / f"{service}-s3.yml").read_text()
    used = set(re.findall(r"\$\{(\w+)\}", text)) - {"SIGHTLINE_S3_INSECURE"}
    values = {name: f"*{name}: x #y&!%@[{{/+=" for name in used}
    values["SIGHTLINE_S3_INSECURE"] = "true"
    config = yaml.safe_load(re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], text))
    storage = config["common"]["storage"] if service == "loki" else config["storage"]["trace"]
    s3 = dict(storage["s3"])
    assert s3.pop("insecure") is True
    s3.pop("s3forcepathstyle" if service == "loki" else "forcepathstyle")
    assert sorted(s3.values()) == sorted(values[name] for name in used)


def test_schema_check_rejects_a_key_the_spec_does_not_define(tmp_path: Path) -> None:
    """The schema check fails on a misspelt service key, so a pass above means something."""
    bad = tmp_path / "docker-compose.yml"
    bad.write_text("name: t\nservices:\n  web:\n    image: nginx:1.27.0\n    portz: ['80']\n")
    result = check_compose_schema(bad)
    assert result.returncode != 0, result.stdout


def test_project_is_named_and_has_no_version_key() -> None:
    """The file uses the current spec: a top-level project name and no obsolete `version:`."""
    assert compose().get("name") == "sightline"
    assert "version" not in compose()


def test_dependencies_name_services_with_conditions_they_support() -> None:
    """Every depends_on names a service, and waits for health only where a healthcheck exists."""
    for name, service in services().items():
        depends = service.get("depends_on", {})
        if isinstance(depends, list):
            depends = {target: {"condition": "service_started"} for target in depends}
        for target, spec in depends.items():
            assert target in services(), f"{name} depends on unknown service {target}"
            condition = spec.get("condition", "service_started")
            healthcheck = services()[target].get("healthcheck", {})
            if condition == "service_healthy":
                unhealthy = f"{name} waits for {target} to be healthy; it has no healthcheck"
                assert healthcheck, unhealthy
                assert not healthcheck.get("disable"), unhealthy
            elif condition == "service_completed_successfully":
                restart = services()[target].get("restart", "no")
                assert restart in ("no", "on-failure"), f"{target} never completes"
            else:
                assert condition == "service_started", f"{name}: unknown condition {condition}"


def test_only_the_documented_services_lack_a_healthcheck() -> None:
    """Each service has a healthcheck unless its image cannot run one (a listed exception)."""
    without = {
        name
        for name, service in services().items()
        if not (service.get("healthcheck") or {}).get("test")
    }
    assert without == set(NO_HEALTHCHECK)
    for name, service in services().items():
        assert service.get("restart") == "unless-stopped", f"{name} is not restarted"


def test_healthchecks_probe_ports_their_service_listens_on() -> None:
    """A healthcheck that names a local port names one its own service listens on."""
    for name, service in services().items():
        test = service.get("healthcheck", {}).get("test", [])
        text = test if isinstance(test, str) else " ".join(test)
        for port in re.findall(r"(?:127\.0\.0\.1|localhost):(\d+)", text):
            assert int(port) in listening()[name], f"{name}'s healthcheck probes port {port}"


def test_bind_mounted_host_paths_exist() -> None:
    """Every file or directory compose bind-mounts exists in the repository."""
    for name in services():
        for source, target in volumes(name):
            if is_bind(source):
                assert (COMPOSE_DIR / source).exists(), f"{name}: {source} ({target}) is missing"


def test_published_ports_are_loopback_only_unique_and_listened_on() -> None:
    """Ports are published on 127.0.0.1 only, once each, to a port the container listens on."""
    seen: dict[str, str] = {}
    for name in services():
        for ip, host, container in published(name):
            assert ip == "127.0.0.1", f"{name} publishes {host} on {ip or 'every interface'}"
            assert host not in seen, f"{name} and {seen.get(host)} both publish {host}"
            seen[host] = name
            assert container in listening()[name], f"{name} listens on no port {container}"
    assert seen, "nothing is published"


def test_images_are_pinned_to_exact_versions() -> None:
    """Every pulled image and the Dockerfile's base name an exact version, never `latest`."""
    exact = re.compile(r"[\w./-]+:v?\d+\.\d+\.\d+[\w.-]*(@sha256:[0-9a-f]{64})?")
    for name, service in services().items():
        if "build" not in service:
            image = service.get("image", "")
            assert exact.fullmatch(image), f"{name}: image {image!r} is not pinned"
    bases = re.findall(r"^FROM\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert bases, "the Dockerfile has no FROM"
    for base in bases:
        assert exact.fullmatch(base), f"Dockerfile base {base!r} is not pinned"


def test_demo_services_share_one_image_built_from_the_root_dockerfile() -> None:
    """demo-app, demo-worker and demo-load build the repository's Dockerfile under one tag."""
    demo = {name: s for name, s in services().items() if name.startswith("demo-")}
    assert set(demo) == {"demo-app", "demo-worker", "demo-load"}
    assert len({service["image"] for service in demo.values()}) == 1
    for name, service in demo.items():
        build = service["build"]
        context = COMPOSE_DIR / build["context"]
        assert context.resolve() == ROOT, f"{name} builds from {context}"
        assert (context / build.get("dockerfile", "Dockerfile")).resolve() == ROOT / "Dockerfile"


def test_data_lives_in_declared_named_volumes() -> None:
    """Named volumes are declared, and each data directory a component writes is inside one."""
    declared = set(compose().get("volumes") or {})
    named: dict[str, list[str]] = {}
    for name in services():
        for source, target in volumes(name):
            if not is_bind(source):
                assert source in declared, f"{name} uses undeclared volume {source}"
                named.setdefault(name, []).append(target)
    data_dirs = {
        "prometheus": [flag("prometheus", "storage.tsdb.path")],
        "alertmanager": [flag("alertmanager", "storage.path")],
        "grafana": ["/var/lib/grafana"],
        "loki": [loki()["common"]["path_prefix"], loki()["compactor"]["working_directory"]],
        "tempo": [
            tempo()["storage"]["trace"]["wal"]["path"],
            tempo()["storage"]["trace"]["local"]["path"],
            tempo()["metrics_generator"]["storage"]["path"],
        ],
    }
    for name, paths in data_dirs.items():
        for path in paths:
            assert path, f"{name} names no data directory"
            assert any(
                (path + "/").startswith(target.rstrip("/") + "/") for target in named.get(name, [])
            ), f"{name} writes {path} outside its named volumes"


def test_demo_app_has_cpu_and_memory_limits() -> None:
    """The demo app runs under CPU and memory limits, so its saturation panels show a limit."""
    service = services()["demo-app"]
    limits = service.get("deploy", {}).get("resources", {}).get("limits", {})
    cpus = limits.get("cpus", service.get("cpus"))
    memory = limits.get("memory", service.get("mem_limit"))
    assert cpus, "no cpu limit"
    assert 0 < float(cpus) <= 2, f"cpu limit {cpus!r}"
    assert memory, "no memory limit"
    assert re.fullmatch(r"\d+[kmgKMG]?[bB]?", str(memory)), f"memory limit {memory!r}"


def test_grafana_admin_password_is_required_from_the_environment() -> None:
    """The admin password is no literal: compose refuses to start until .env (ignored) sets it."""
    value = environment("grafana")["GF_SECURITY_ADMIN_PASSWORD"]
    match = re.fullmatch(r"\$\{(\w+):\?[^}]+\}", value)
    assert match, f"admin password {value!r} is not a required variable"
    example = (COMPOSE_DIR / ".env.example").read_text()
    assert re.search(rf"^{match.group(1)}=$", example, re.MULTILINE), ".env.example lacks it"
    ignored = (COMPOSE_DIR / ".gitignore").read_text().split()
    assert ".env" in ignored, "compose/.env is not git-ignored"


def test_grafana_visitors_can_only_view_and_nothing_phones_home() -> None:
    """Anonymous access is Viewer at most, sign-up is off, and analytics and update checks too."""
    env = environment("grafana")
    if env.get("GF_AUTH_ANONYMOUS_ENABLED", "false").lower() == "true":
        assert env.get("GF_AUTH_ANONYMOUS_ORG_ROLE", "Viewer") == "Viewer"
    assert env.get("GF_USERS_ALLOW_SIGN_UP") == "false"
    for key in (
        "GF_ANALYTICS_REPORTING_ENABLED",
        "GF_ANALYTICS_CHECK_FOR_UPDATES",
        "GF_ANALYTICS_CHECK_FOR_PLUGIN_UPDATES",
    ):
        assert env.get(key) == "false", f"{key} is not false"


# -- Prometheus and Alertmanager --------------------------------------------------------


def test_prometheus_config_rules_and_targets_pass_promtool(tmp_path: Path) -> None:
    """promtool accepts prometheus.yml with its rule files and targets files, as mounted."""
    text = config_file("prometheus").read_text()
    mounts = sorted(volumes("prometheus"), key=lambda mount: -len(mount[1]))
    for source, target in mounts:
        if is_bind(source):
            text = text.replace(target, str(host_path("prometheus", target)))
    assert "/etc/prometheus" not in text, "prometheus.yml names a path compose does not mount"
    config = tmp_path / "prometheus.yml"
    config.write_text(text)
    passes(binary("promtool"), "check", "config", str(config))


def test_alertmanager_config_passes_amtool() -> None:
    """amtool accepts the Alertmanager config compose mounts."""
    passes(binary("amtool"), "check-config", str(config_file("alertmanager")))


def test_prometheus_scrapes_and_alerts_to_ports_that_listen() -> None:
    """Every static scrape target and Alertmanager in prometheus.yml is a service's real port."""
    config = prometheus()
    for job in config["scrape_configs"]:
        for group in job.get("static_configs", []):
            for target in group["targets"]:
                assert_listens(target, f"scrape job {job['job_name']}")
    for manager in config["alerting"]["alertmanagers"]:
        for group in manager["static_configs"]:
            for target in group["targets"]:
                assert_listens(target, "alerting")
    scraped = {
        address(target)[0]
        for job in config["scrape_configs"]
        for group in job.get("static_configs", [])
        for target in group["targets"]
    }
    assert {"loki", "tempo", "collector"} <= scraped


def test_targets_files_name_services_or_the_host() -> None:
    """Each file_sd target is a compose service on a port it listens on, or the Docker host."""
    extra_hosts = services()["prometheus"].get("extra_hosts", [])
    for path in sorted(TARGETS.glob("*.yml")):
        for group in load(path):
            for target in group["targets"]:
                if address(target)[0] == "host.docker.internal":
                    assert "host.docker.internal:host-gateway" in extra_hosts
                else:
                    assert_listens(target, path.name)


def test_demo_targets_match_each_demo_service_and_its_metrics_port() -> None:
    """demo.yml scrapes demo-app and demo-worker on their metrics port, as their own service."""
    jobs = {}
    for group in load(TARGETS / "demo.yml"):
        for target in group["targets"]:
            jobs[address(target)] = group["labels"]["job"]
    for name in ("demo-app", "demo-worker"):
        env = environment(name)
        port = address(env["SIGHTLINE_METRICS_ADDR"])[1]
        assert jobs.get((name, port)) == env["SIGHTLINE_SERVICE"], f"{name}:{port} in demo.yml"


def test_prometheus_accepts_tempos_remote_writes_with_exemplars() -> None:
    """Tempo remote-writes to Prometheus' port, which runs the receiver and keeps exemplars."""
    writes = tempo()["metrics_generator"]["storage"]["remote_write"]
    assert writes
    for write in writes:
        assert_listens(write["url"], "tempo remote_write")
        assert address(write["url"])[0] == "prometheus"
        assert urlsplit(write["url"]).path == "/api/v1/write"
        assert write.get("send_exemplars") is True
    args = command("prometheus")
    assert "--web.enable-remote-write-receiver" in args
    features = ",".join(flag_ for flag_ in args if flag_.startswith("--enable-feature="))
    assert "exemplar-storage" in features


# -- collector, Tempo, Loki -------------------------------------------------------------


def test_collector_sends_traces_to_tempos_otlp_grpc_receiver() -> None:
    """The traces pipeline exports OTLP/gRPC, without TLS, to the port Tempo's receiver binds."""
    config = collector()
    exporters = config["service"]["pipelines"]["traces"]["exporters"]
    tempo_grpc = address(otlp_endpoints(tempo()["distributor"])["grpc"])[1]
    grpc = [e for e in exporters if e.split("/")[0] == "otlp_grpc"]
    assert grpc, "no otlp_grpc exporter in the traces pipeline"
    for exporter in grpc:
        settings = config["exporters"][exporter]
        assert address(settings["endpoint"]) == ("tempo", tempo_grpc)
        assert settings["tls"]["insecure"] is True


def test_collector_sends_logs_to_lokis_otlp_endpoint() -> None:
    """The logs pipeline exports OTLP/HTTP to Loki's native /otlp endpoint on its HTTP port."""
    config = collector()
    exporters = config["service"]["pipelines"]["logs"]["exporters"]
    assert exporters
    for exporter in exporters:
        assert exporter.split("/")[0] == "otlp_http"
        endpoint = config["exporters"][exporter]["endpoint"]
        assert address(endpoint) == ("loki", loki()["server"]["http_listen_port"])
        assert urlsplit(endpoint).path == "/otlp"


def test_every_collector_exporter_reaches_a_listening_port() -> None:
    """Each exporter endpoint the collector defines is a compose service's real port."""
    for name, settings in collector()["exporters"].items():
        if settings and "endpoint" in settings:
            assert_listens(settings["endpoint"], f"collector exporter {name}")


def test_receivers_listen_on_every_container_interface() -> None:
    """Tempo's and the collector's receivers bind 0.0.0.0 (Tempo's default is localhost)."""
    endpoints = [
        *otlp_endpoints(tempo()["distributor"]).values(),
        *otlp_endpoints(collector()).values(),
        collector()["extensions"]["health_check"]["endpoint"],
    ]
    for endpoint in endpoints:
        assert address(endpoint)[0] == "0.0.0.0", endpoint
    for reader in collector()["service"]["telemetry"]["metrics"]["readers"]:
        assert reader["pull"]["exporter"]["prometheus"]["host"] == "0.0.0.0"


def test_demo_services_send_to_the_collector_loki_and_redis() -> None:
    """Demo OTLP goes to the collector's HTTP receiver, logs to Loki, tasks to the redis port."""
    collector_http = address(otlp_endpoints(collector())["http"])[1]
    for name in ("demo-app", "demo-worker"):
        env = environment(name)
        otlp = env["OTEL_EXPORTER_OTLP_ENDPOINT"]
        assert urlsplit(otlp).scheme == "http"
        assert address(otlp) == ("collector", collector_http), f"{name} sends OTLP to {otlp}"
        assert address(env["SIGHTLINE_LOKI_URL"]) == ("loki", loki()["server"]["http_listen_port"])
        assert_listens(env["SIGHTLINE_DEMO_BROKER"], f"{name} broker")
        assert env["SIGHTLINE_SERVICE"]


def test_tail_sampling_keeps_errors_slow_traces_and_a_sample_of_the_rest() -> None:
    """Tail sampling has an error policy, a latency threshold and a probabilistic baseline."""
    config = collector()
    sampling = config["processors"]["tail_sampling"]
    assert seconds(sampling["decision_wait"]) > 0
    policies = {policy["type"]: policy for policy in sampling["policies"]}
    assert "ERROR" in policies["status_code"]["status_code"]["status_codes"]
    assert policies["latency"]["latency"]["threshold_ms"] > 0
    assert 0 < policies["probabilistic"]["probabilistic"]["sampling_percentage"] < 100
    assert "tail_sampling" in config["service"]["pipelines"]["traces"]["processors"]


def test_collector_pipelines_limit_memory_first_and_use_current_names() -> None:
    """Pipelines start with memory_limiter, use defined components and no deprecated names."""
    config = collector()
    for exporter in config["exporters"]:
        assert exporter.split("/")[0] not in ("otlp", "otlphttp"), f"deprecated name {exporter}"
    for extension in config["service"].get("extensions", []):
        assert extension in config["extensions"]
    for signal, pipeline in config["service"]["pipelines"].items():
        assert pipeline["processors"][0].split("/")[0] == "memory_limiter", signal
        for kind in ("receivers", "processors", "exporters"):
            for component in pipeline[kind]:
                assert component in config[kind], f"{signal} uses undefined {component}"


def test_loki_keeps_structured_metadata_and_deletes_old_logs() -> None:
    """Loki indexes with TSDB schema v13 (structured metadata); its compactor applies retention."""
    config = loki()
    schema = config["schema_config"]["configs"][-1]
    assert (schema["store"], schema["schema"], schema["index"]["period"]) == ("tsdb", "v13", "24h")
    assert config["limits_config"].get("allow_structured_metadata", True) is True
    assert seconds(config["limits_config"]["retention_period"]) >= 86400
    assert config["compactor"]["retention_enabled"] is True
    assert config["compactor"]["delete_request_store"] == schema["object_store"]
    assert config["analytics"]["reporting_enabled"] is False


def test_tempo_generates_span_metrics_and_the_service_graph_and_expires_traces() -> None:
    """Tempo's generator runs both processors, block retention is set and usage reports are off."""
    config = tempo()
    processors = config["overrides"]["defaults"]["metrics_generator"]["processors"]
    assert {"span-metrics", "service-graphs"} <= set(processors)
    assert seconds(config["compactor"]["compaction"]["block_retention"]) >= 86400
    assert config["usage_report"]["reporting_enabled"] is False


# -- Grafana ------------------------------------------------------------------------------


def values_of(node: Any, wanted: str) -> Iterator[Any]:
    """Every value of the key ``wanted``, at any depth of a parsed document."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == wanted:
                yield value
            yield from values_of(value, wanted)
    elif isinstance(node, list):
        for item in node:
            yield from values_of(item, wanted)


def strings(node: Any) -> Iterator[str]:
    """Every string value in a parsed YAML or JSON document."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def test_grafana_datasource_urls_point_at_listening_ports() -> None:
    """Each provisioned data source URL is a compose service on a port its config binds."""
    for source in grafana_datasources():
        assert_listens(source["url"], f"datasource {source['uid']}")
    urls = {source["uid"]: address(source["url"]) for source in grafana_datasources()}
    assert urls["loki"] == ("loki", loki()["server"]["http_listen_port"])
    assert urls["tempo"] == ("tempo", tempo()["server"]["http_listen_port"])


def test_datasources_have_the_fixed_uids_and_every_link_resolves() -> None:
    """The four fixed UIDs exist and every datasourceUid in the file names one of them."""
    sources = grafana_datasources()
    uids = [source["uid"] for source in sources]
    assert sorted(uids) == ["alertmanager", "loki", "prometheus", "tempo"]
    linked = list(values_of(load(DATASOURCES), "datasourceUid"))
    assert len(linked) >= 6, "expected the exemplar, trace and log links"
    for uid in linked:
        assert uid in uids, f"datasourceUid {uid} is not provisioned"
    tempo_source = next(source for source in sources if source["uid"] == "tempo")
    assert tempo_source["jsonData"]["nodeGraph"]["enabled"] is True
    assert tempo_source["jsonData"]["serviceMap"]["datasourceUid"] == "prometheus"


def test_grafana_macros_are_escaped_from_environment_expansion() -> None:
    """Each `${__x}` or `$__x` macro is written with `$$`, so Grafana does not read a variable."""
    macros = [
        macro
        for value in strings(load(DATASOURCES))
        for macro in re.findall(r"\${1,2}\{?__\w", value)
    ]
    assert macros, "expected the trace/log link macros"
    for macro in macros:
        assert macro.startswith("$$"), f"{macro} would be expanded as an environment variable"


def test_prometheus_datasource_interval_equals_the_scrape_interval() -> None:
    """Grafana's timeInterval equals Prometheus' scrape_interval, so $__rate_interval is right."""
    source = next(s for s in grafana_datasources() if s["uid"] == "prometheus")
    interval = source["jsonData"]["timeInterval"]
    assert seconds(interval) == seconds(prometheus()["global"]["scrape_interval"])


def test_dashboard_provider_reads_the_directory_compose_mounts() -> None:
    """The file provider's path is where compose mounts dashboards/, in the Sightline folder."""
    providers = load(PROVIDERS)["providers"]
    assert len(providers) == 1
    provider = providers[0]
    assert (provider["type"], provider["folder"], provider["folderUid"]) == (
        "file",
        "Sightline",
        "sightline",
    )
    assert host_path("grafana", provider["options"]["path"]) == DASHBOARDS
    assert provider["options"]["foldersFromFilesStructure"] is False
    assert provider["allowUiUpdates"] is False
    assert host_path("grafana", "/etc/grafana/provisioning/dashboards") == PROVIDERS.parent


def test_dashboards_use_only_provisioned_datasource_uids() -> None:
    """Every datasource a dashboard JSON names is provisioned (builtins and variables aside)."""
    sources = grafana_datasources()
    known = {source["uid"] for source in sources} | {source["name"] for source in sources}
    for path in sorted(DASHBOARDS.rglob("*.json")):
        for ref in values_of(json.loads(path.read_text()), "datasource"):
            uid = ref.get("uid") if isinstance(ref, dict) else ref
            if uid is None or uid in BUILTIN_DATASOURCES or str(uid).startswith("$"):
                continue
            assert uid in known, f"{path.name} uses datasource {uid!r}, which is not provisioned"
