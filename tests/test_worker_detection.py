"""Which processes are a server's workers: marked where gunicorn starts them, whichever
hook or module calls init(), never merely for being forked; and one storage with
PROMETHEUS_MULTIPROC_DIR, leaving no files behind."""

from __future__ import annotations

import os
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .helpers import free_port, wait_until
from .servers import gunicorn

pytest.importorskip("gunicorn")
pytest.importorskip("flask")

HOOKS = "tests/apps/gunicorn_hooks.py"


def scrape(port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


def one(page: dict[str, list[tuple[dict[str, str], float]]], name: str) -> float | None:
    values = [value for _, value in page.get(name, [])]
    return values[0] if len(values) == 1 else None


def get(url: str) -> int:
    with urllib.request.urlopen(url, timeout=10) as response:
        return int(response.status)


@pytest.fixture
def metrics_port() -> int:
    return free_port()


@pytest.mark.parametrize(
    ("app", "hook"),
    [
        ("tests.apps.hooks_app:app", "on_starting"),
        ("tests.apps.hooks_app:app", "post_fork"),
        ("tests.apps.hooks_app:app", "post_worker_init"),
        ("tests.apps.flask_app:application", ""),  # init() in the app module
        ("tests.apps.django_site.wsgi:application", ""),  # init() in settings.py
    ],
)
def test_every_place_init_runs_gives_one_merged_endpoint(
    app: str, hook: str, tmp_path: Path, metrics_port: int
) -> None:
    """init() from gunicorn's on_starting, post_fork or post_worker_init hook, from the app
    module or from Django's settings.py: 2 workers, one merged page, every request counted
    once, both workers live."""
    if "django" in app:
        pytest.importorskip("django")
    env = {
        "SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "SIGHTLINE_TEST_HOOK": hook,
        "TMPDIR": str(tmp_path),
        "SIGHTLINE_TRACES": "false",
    }
    route = "/api/users/7/" if "django" in app else "/users/7"
    with gunicorn(app, env, ["--workers", "2", "-c", HOOKS], tmp_path) as base:
        for _ in range(40):
            assert get(base + route) == 200

        def settled() -> bool:
            page = scrape(metrics_port)
            return one(page, "server_workers_live") == 2 and total(page, route) == 40

        assert wait_until(settled, timeout=15), scrape(metrics_port).get("server_workers_live")
        pages = [scrape(metrics_port) for _ in range(6)]
    for page in pages:
        assert one(page, "server_workers_configured") == 2
        assert one(page, "server_workers_live") == 2
        assert total(page, route) == 40
    # One directory, the server's: not one per worker.
    assert len(list(tmp_path.glob(f"sightline-{os.getuid()}/*"))) == 1


def total(page: dict[str, list[tuple[dict[str, str], float]]], route: str) -> float:
    """Requests counted on the users route, whichever framework names its template (all
    the test sends; the readiness probe's /health is left out)."""
    return sum(
        value
        for labels, value in page.get("http_server_request_duration_seconds_count", [])
        if "users" in labels.get("http_route", "")
    )


def test_a_helper_forked_by_a_worker_is_not_a_worker(tmp_path: Path, metrics_port: int) -> None:
    """A process a worker forks is not counted as a worker, and does not repeat the
    worker's counts: with 1 worker, live workers stay 1 while helpers run."""
    env = {
        "SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "SIGHTLINE_TEST_HOOK": "post_fork",
        "TMPDIR": str(tmp_path),
        "SIGHTLINE_TRACES": "false",
        "HELPER_SECONDS": "5",
    }
    with gunicorn(
        "tests.apps.hooks_app:app", env, ["--workers", "1", "-c", HOOKS], tmp_path
    ) as base:
        for _ in range(10):
            assert get(base + "/users/1") == 200
        for _ in range(3):
            assert get(base + "/fork") == 200
        assert wait_until(lambda: total(scrape(metrics_port), "/users/1") == 10, timeout=10)
        pages = []
        for _ in range(6):  # over 3 s of the helpers' 5: each would have written snapshots
            pages.append(scrape(metrics_port))
            time.sleep(0.5)
    for page in pages:
        assert one(page, "server_workers_live") == 1
        assert one(page, "server_workers_configured") == 1
        assert total(page, "/users/1") == 10
        assert len(page.get("process_resident_memory_bytes", [])) == 1


def test_prometheus_multiproc_dir_keeps_one_storage_and_no_stray_files(
    tmp_path: Path, metrics_port: int
) -> None:
    """With PROMETHEUS_MULTIPROC_DIR set, counts over recycled workers stay exact, only
    Sightline's store holds them (no prometheus-client .db files appear for metrics made
    after init), and none of its files are left once the server has stopped."""
    folder = tmp_path / "multiproc"
    folder.mkdir()
    # Files of a process long gone, as a crashed earlier run leaves them.
    (folder / "counter_999999.db").write_bytes(b"\0" * 16)
    env = {
        "SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "PROMETHEUS_MULTIPROC_DIR": str(folder),
        "TMPDIR": str(tmp_path),
        "SIGHTLINE_TRACES": "false",
    }
    args = ["--workers", "2", "--max-requests", "15"]
    with gunicorn("tests.apps.flask_app:application", env, args, tmp_path) as base:
        for _ in range(100):
            assert get(base + "/users/3") == 200
        assert wait_until(lambda: total(scrape(metrics_port), "/users/3") == 100, timeout=15)
        during = sorted(p.name for p in folder.glob("*.db"))
    assert during == [], during
    assert sorted(p.name for p in folder.iterdir()) == ["sightline"]
