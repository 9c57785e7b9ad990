"""The `sightline` console script."""

from __future__ import annotations

import shutil
import subprocess
import sys

import sightline


def run(*args: str) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("sightline")
    command = [exe] if exe else [sys.executable, "-m", "sightline.cli"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)


def test_version() -> None:
    """`sightline --version` prints the package version."""
    result = run("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"sightline {sightline.__version__}"


def test_help() -> None:
    """`sightline --help` explains the one-line set-up."""
    result = run("--help")
    assert result.returncode == 0
    assert "sightline.init(" in result.stdout
