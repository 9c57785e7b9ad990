"""The stack's native binaries (compose/build-binaries): built at exactly the versions
compose pins, the Collector holding exactly the components its configuration uses."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from .servers import binary

# Checks the stack's files, binaries and processes: not run again by .ci/newest-sdk.
pytestmark = pytest.mark.stack

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "compose" / "docker-compose.yml"
MANIFEST = ROOT / "collector" / "builder.yaml"
CONFIG = ROOT / "collector" / "config.yml"
IMAGES = {
    "prometheus": "prom/prometheus",
    "promtool": "prom/prometheus",
    "alertmanager": "prom/alertmanager",
    "amtool": "prom/alertmanager",
    "otelcol-sightline": "otel/opentelemetry-collector-contrib",
}


def pinned(image: str) -> str:
    """The version compose runs of ``image``, without a leading v."""
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    tags = [
        service["image"].partition(":")[2]
        for service in services.values()
        if service.get("image", "").partition(":")[0] == image
    ]
    assert len(set(tags)) == 1, (image, tags)
    return tags[0].removeprefix("v")


def built(name: str) -> Path:
    """A binary build-binaries made; a failure under CI, else a skip."""
    return Path(binary(name, flavour="pinned"))


@pytest.mark.parametrize("name", list(IMAGES))
def test_each_binary_is_the_version_compose_pins(name: str) -> None:
    """Each built binary's --version is exactly the version of the image compose runs."""
    result = subprocess.run(
        [built(name), "--version"], capture_output=True, text=True, timeout=30, check=True
    )
    output = result.stdout + result.stderr
    match = re.search(r"version (\d+\.\d+\.\d+)", output)
    assert match is not None, output
    assert match.group(1) == pinned(IMAGES[name])


def test_the_manifest_builds_the_release_compose_runs() -> None:
    """collector/builder.yaml builds the Collector release compose pins, and every module
    it takes is of that one release (core and contrib move together)."""
    manifest = yaml.safe_load(MANIFEST.read_text())
    version = pinned("otel/opentelemetry-collector-contrib")
    assert manifest["dist"]["version"] == version
    modules = [
        item["gomod"]
        for kind in ("extensions", "receivers", "processors", "exporters")
        for item in manifest.get(kind, [])
    ]
    assert modules
    for module in modules:
        assert module.endswith(f" v{version}"), module


def used_components() -> dict[str, set[str]]:
    """The component types collector/config.yml configures, by kind (``otlp_grpc/tempo``
    is an ``otlp_grpc``)."""
    config = yaml.safe_load(CONFIG.read_text())
    return {
        kind: {name.split("/", 1)[0] for name in config.get(kind, {})}
        for kind in ("extensions", "receivers", "processors", "exporters")
    }


def test_the_collector_holds_exactly_the_components_its_configuration_uses() -> None:
    """The built Collector's components are exactly those collector/config.yml names, and
    it accepts that configuration."""
    collector = built("otelcol-sightline")
    listed = yaml.safe_load(
        subprocess.run(
            [collector, "components"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    )
    have = {kind: {item["name"] for item in listed.get(kind) or []} for kind in used_components()}
    assert have == used_components()
    subprocess.run([collector, "validate", "--config", CONFIG], timeout=30, check=True)


def test_a_second_run_reuses_what_was_built(tmp_path: Path) -> None:
    """build-binaries keeps each version it built: run again on the same directory, it
    builds nothing and prints the directory last."""
    folder = built("prometheus").resolve().parent.parent
    result = subprocess.run(
        ["bash", ROOT / "compose" / "build-binaries", folder],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert "building" not in result.stderr, result.stderr
    assert result.stdout.strip().splitlines()[-1] == str(folder)
