"""README.md's steps, run as written."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from sightline_appliance.stack import Stack, processes

from .servers import ROOT

# Checks the stack's files, binaries and processes: not run again by .ci/newest-sdk.
pytestmark = pytest.mark.stack


def no_docker_block() -> str:
    """The shell block under README's "Without Docker" paragraph: the one that makes the
    virtual environment and runs the demo."""
    blocks = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    found = [b for b in blocks if "python3 -m venv" in b and "sightline demo" in b]
    assert len(found) == 1, "README.md has no single no-Docker block"
    return found[0]


def checkout_copy(directory: Path) -> Path:
    """The repository's tracked files as they are now (uncommitted edits included), in a
    fresh directory: what a user has after cloning."""
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for name in filter(None, (entry.decode() for entry in listed)):
        source, dest = ROOT / name, directory / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if source.is_symlink():
            dest.symlink_to(os.readlink(source))
        elif source.exists():
            shutil.copy2(source, dest)
    return directory


@pytest.mark.timeout(600)
def test_readme_no_docker_steps_run_the_demo_in_a_fresh_checkout(tmp_path: Path) -> None:
    """README's no-Docker block, taken from README.md, runs in a fresh copy of the
    checkout: Debian's packages, a virtual environment made with the machine's python3,
    then its last line, the demo, given `--duration 30`, exits 0 having shown requests
    for every route of the shop and tasks on both of its queues."""
    if os.getuid() != 0 and shutil.which("sudo") is None:
        if os.environ.get("CI"):
            pytest.fail("the README's steps need root or sudo")
        pytest.skip("the README's steps need root or sudo")
    *setup, last = no_docker_block().strip().splitlines()
    assert last.strip() == ".venv/bin/sightline demo", last
    checkout = checkout_copy(tmp_path / "checkout")
    state = tmp_path / "state"
    script = "set -e\n" + "\n".join(setup) + f"\n{last.strip()} --duration 30\n"
    env = {**os.environ, "XDG_STATE_HOME": str(state), "DEBIAN_FRONTEND": "noninteractive"}
    env.pop("VIRTUAL_ENV", None)
    # The machine's own python3, not the one running the tests.
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "").split(os.pathsep) if not p.startswith(str(ROOT))
    )
    try:
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=checkout,
            env=env,
            capture_output=True,
            text=True,
            timeout=540,
        )
    finally:
        directory = state / "sightline" / "stack"
        if directory.exists():
            Stack(directory).down(out=lambda line: None)
            for proc in processes.ours(directory.resolve()):
                proc.kill()
    out = result.stdout
    assert result.returncode == 0, out[-3000:] + result.stderr[-3000:]
    frame = out.rsplit("Sightline demo ·", 1)[-1]  # the last view drawn
    routes = dict(re.findall(r"^shop +(/\S*) +(\d+\.\d) ", frame, re.M))
    for route in ("/products", "/products/<int:product_id>", "/search", "/checkout"):
        assert float(routes.get(route, 0)) > 0, frame
    assert float(routes.get("/cart/<int:cart_id>/items", 0)) > 0, frame
    queues = dict(
        re.findall(r"^shop-worker +(orders|emails) +\d+ +(?:-|\d+ ms) +(\d+\.\d) ", frame, re.M)
    )
    assert set(queues) == {"orders", "emails"}, frame
    assert all(float(rate) > 0 for rate in queues.values()), frame
    assert (checkout / ".venv" / "bin" / "sightline").exists()
