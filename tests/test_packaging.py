"""Packaging: a non-editable build carries the package, its types marker and the command."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contents(tmp_path: Path) -> None:
    """`pip wheel .` builds a wheel with every module, py.typed and the console script."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    [wheel] = tmp_path.glob("sightline-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {
        "sightline/" + str(p.relative_to(ROOT / "agent" / "sightline"))
        for p in (ROOT / "agent" / "sightline").rglob("*.py")
    }
    assert modules <= names
    assert "sightline/py.typed" in names
    [entry_points] = [n for n in names if n.endswith("entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "sightline = sightline.cli:main" in text
