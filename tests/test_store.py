"""The snapshot store: a private directory that another local user can neither redirect,
read, nor plant files in, and that never follows a link."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter
from sightline import _multiprocess
from sightline._multiprocess import Server, Snapshots, aggregate_registry
from sightline._store import Refused, Store

from .helpers import free_port, scrape, total, wait_until
from .servers import gunicorn

NOBODY = 65534
as_root = pytest.mark.skipif(
    os.geteuid() != 0 and not os.environ.get("CI"), reason="needs root to act as another user"
)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A temporary directory as /tmp is, which every user can reach: everyone may create
    entries in it, and remove only their own (sticky bit)."""
    shared = Path(tempfile.mkdtemp(prefix="sightline-test-", dir="/tmp"))
    shared.chmod(0o1777)
    yield shared
    shutil.rmtree(shared, ignore_errors=True)


def made_by_nobody(path: Path) -> None:
    """Another local user (uid 65534) creates the directory ``path``, mode 777."""
    assert os.geteuid() == 0, "CI runs as root; this test needs it"
    command = ["mkdir", "-m", "777", str(path)]
    subprocess.run(command, check=True, user=NOBODY, group=NOBODY, cwd="/", timeout=30)
    assert path.stat().st_uid == NOBODY


def this_server() -> Server:
    return Server("gunicorn", os.getpid(), workers=2)


@as_root
def test_a_directory_another_user_made_is_refused(
    shared_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The base directory made in advance by another user (mode 777, as in the attack) is
    refused: nothing is created in it and the reason names its owner."""
    base = shared_tmp / f"sightline-{os.geteuid()}"
    made_by_nobody(base)
    monkeypatch.setenv("TMPDIR", str(shared_tmp))
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    with pytest.raises(Refused) as refused:
        _multiprocess.open_store(this_server())
    assert refused.value.reason == "directory_owner"
    assert "owned by uid 65534" in str(refused.value)
    assert os.listdir(base) == []


def test_a_directory_others_can_write_is_refused(tmp_path: Path) -> None:
    """A directory of this user's that others can write is refused."""
    (tmp_path / "open").mkdir(mode=0o700)
    (tmp_path / "open").chmod(0o777)
    with pytest.raises(Refused) as refused:
        Store.open(tmp_path, "open")
    assert refused.value.reason == "directory_mode"


def test_a_link_in_place_of_the_directory_is_refused(tmp_path: Path) -> None:
    """A symbolic link where the directory should be is refused, not followed."""
    (tmp_path / "elsewhere").mkdir(mode=0o700)
    (tmp_path / "store").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(Refused) as refused:
        Store.open(tmp_path, "store")
    assert refused.value.reason == "not_a_directory"


def test_a_new_store_and_its_files_are_private(tmp_path: Path) -> None:
    """The store is created 0700 and its snapshot and totals files 0600."""
    store = Store.open(tmp_path, "store")
    registry = CollectorRegistry()
    Counter("jobs", "Jobs.", registry=registry).inc()
    snapshots = Snapshots(store, "test", registry, None)
    snapshots.write()
    _multiprocess.Merge(snapshots).run()
    assert stat.S_IMODE((tmp_path / "store").stat().st_mode) == 0o700
    for name in os.listdir(tmp_path / "store"):
        path = tmp_path / "store" / name
        if path.is_file():
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, name


def test_links_planted_in_the_store_are_never_followed(tmp_path: Path) -> None:
    """Links named like this process's snapshot and like the totals, pointing at a file
    to overwrite, are replaced or skipped: the target is never written or read."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    store = Store.open(tmp_path, "store")
    registry = CollectorRegistry()
    Counter("jobs", "Jobs.", registry=registry).inc(3)
    snapshots = Snapshots(store, "test", registry, None)
    (tmp_path / "store" / snapshots.name).symlink_to(victim)
    (tmp_path / "store" / "totals.json").symlink_to(victim)
    found = scrape_registry(aggregate_registry(snapshots))
    assert found[("jobs_total", ())] == 3
    assert victim.read_text() == "precious"
    assert not (tmp_path / "store" / snapshots.name).is_symlink()
    assert json.loads((tmp_path / "store" / snapshots.name).read_text())["process"]


@as_root
def test_a_server_refuses_the_attackers_directory_and_says_so(
    tmp_path: Path, shared_tmp: Path
) -> None:
    """The attack end to end: another user pre-creates the base directory (777) before a
    root gunicorn starts. Nothing of the server's is written there, the error names the
    directory and the fix, and each worker still serves its own metrics, counting why."""
    base = shared_tmp / f"sightline-{os.geteuid()}"
    made_by_nobody(base)
    metrics_port = free_port()
    env = {
        "SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "SIGHTLINE_TRACES": "false",
        "TMPDIR": str(shared_tmp),
    }
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with gunicorn("tests.apps.flask_app:application", env, ["--workers", "2"], tmp_path):
        found = wait_until(lambda: scrape(url), timeout=20)
        assert total(found, "sightline_snapshot_errors_total", reason="directory_owner") == 1
        assert not [key for key in found if key[0] == "server_workers_live"]  # not merged
    log = (tmp_path / "gunicorn.log").read_text()
    assert "not merged" in log
    assert str(base) in log
    assert "PROMETHEUS_MULTIPROC_DIR" in log
    assert os.listdir(base) == []


def scrape_registry(
    registry: CollectorRegistry,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(generate_latest(registry).decode())
        for s in family.samples
    }
