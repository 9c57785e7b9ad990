"""Packaging: the agent's wheel holds the agent and `sightline run` alone; the appliance's
wheel holds its commands and the stack's files, at the agent's version."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AGENT = ROOT / "agent" / "sightline"
APPLIANCE = ROOT / "appliance" / "sightline_appliance"


def build(project: Path, out: Path) -> zipfile.ZipFile:
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(project)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    [wheel] = out.glob("*.whl")
    return zipfile.ZipFile(wheel)


def modules(package: Path) -> set[str]:
    return {
        f"{package.name}/{path.relative_to(package)}"
        for path in package.rglob("*.py")
        if "stackfiles" not in path.parts
    }


def entry_points(wheel: zipfile.ZipFile) -> str:
    [name] = [n for n in wheel.namelist() if n.endswith(".dist-info/entry_points.txt")]
    return wheel.read(name).decode()


def test_the_agents_wheel_holds_the_agent_alone(tmp_path: Path) -> None:
    """`pip wheel .` builds the agent: every module of agent/sightline, py.typed and the
    `sightline` command, and nothing of the appliance (no stack, demo, commands or files)."""
    wheel = build(ROOT, tmp_path)
    names = set(wheel.namelist())
    packaged = {n for n in names if n.startswith("sightline/")}
    assert packaged == modules(AGENT) | {"sightline/py.typed"}
    assert not any(n.startswith("sightline_appliance/") for n in names)
    assert "sightline = sightline.cli:main" in entry_points(wheel)
    assert "sightline.commands" not in entry_points(wheel)


def test_the_appliances_wheel_holds_its_commands_and_the_stacks_files(tmp_path: Path) -> None:
    """`pip wheel appliance` builds the appliance: its modules, the files compose mounts
    (followed through the package's links), and the entry point adding its commands."""
    wheel = build(ROOT / "appliance", tmp_path)
    names = set(wheel.namelist())
    assert modules(APPLIANCE) <= names
    assert not any(n.startswith("sightline/") for n in names)
    for shipped in (
        "compose/docker-compose.yml",
        "alerts/http.rules.yml",
        "dashboards/overview.json",
        "collector/config.yml",
    ):
        assert (ROOT / shipped).is_file(), shipped
        assert f"sightline_appliance/stackfiles/{shipped}" in names
    points = entry_points(wheel)
    assert "[sightline.commands]" in points
    assert "appliance = sightline_appliance.cli:register" in points


def test_the_appliance_is_released_at_the_agents_version() -> None:
    """The appliance's version and its pin of the agent are the agent's version."""
    from sightline import __version__

    text = (ROOT / "appliance" / "pyproject.toml").read_text()
    assert re.findall(r'^version = "(.*)"$', text, re.M) == [__version__]
    assert re.findall(r'"sightline==(.*)"', text) == [__version__]


@pytest.mark.parametrize("command", ["stack", "doctor", "hints"])
def test_an_appliance_command_without_the_appliance_says_how_to_get_it(
    command: str, tmp_path: Path
) -> None:
    """With only the agent importable, `sightline stack` (or doctor, hints) fails with one
    line naming the package to install, and `sightline run` still works."""
    code = (
        "import sys, importlib.metadata as m\n"
        "m.entry_points = lambda **kw: []  # no distribution adds commands\n"
        "from sightline import cli\n"
        f"sys.exit(cli.main([{command!r}]))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "pip install sightline-appliance" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
