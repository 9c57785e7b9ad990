"""Documentation is a contract: every setting and every metric appears in docs/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import sightline
from prometheus_client import CollectorRegistry
from sightline._settings import CHECKED, SPECS

from .helpers import call_wsgi

# Checks the stack's files, binaries and processes: not run again by .ci/newest-sdk.
pytestmark = pytest.mark.stack

DOCS = Path(__file__).resolve().parent.parent / "docs"


def table_cells(page: str, column: int) -> set[str]:
    """Backticked names in one column of every Markdown table row of a docs page."""
    cells = set()
    for line in (DOCS / page).read_text().splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            parts = line.split("|")
            if len(parts) > column + 1:
                cells.update(re.findall(r"`([^`]+)`", parts[column + 1]))
    return cells


def test_every_setting_is_in_the_configuration_table() -> None:
    """Each setting's keyword and every variable that sets it is in docs/configuration.md."""
    keywords = table_cells("configuration.md", 0)
    variables = table_cells("configuration.md", 1)
    for name, spec in SPECS.items():
        assert name in keywords, f"setting {name} is missing from docs/configuration.md"
        for var in spec.env:
            assert var in variables, f"{var} is missing from docs/configuration.md"


def test_every_checked_variable_and_range_is_documented() -> None:
    """Each variable checked for other libraries is in docs/configuration.md, and each
    numeric setting's row shows the range the code enforces."""
    variables = table_cells("configuration.md", 0)
    for var in CHECKED:
        assert var in variables, f"{var} is missing from docs/configuration.md"
    rows = {
        re.findall(r"`([^`]+)`", line.split("|")[1])[0]: line
        for line in (DOCS / "configuration.md").read_text().splitlines()
        if line.startswith("| `")
    }
    for name, spec in SPECS.items():
        bounds = getattr(spec.parse, "range", None)
        if bounds is not None:
            assert f"| {bounds} |" in rows[name], f"{name}: range {bounds} not documented"


def test_every_exposed_metric_is_documented(registry: CollectorRegistry) -> None:
    """Every metric family Sightline exposes, with the default registry's, is in docs/metrics.md."""
    flask = pytest.importorskip("flask")
    documented = table_cells("metrics.md", 0)
    sightline.init(service="t", registry=registry, metrics_addr="off", worker_capacity=2)
    app = flask.Flask("t")
    call_wsgi(app, "/", headers={"X-Request-Start": "t=1"})
    exposed = set()
    for family in registry.collect():
        # Family names too: a labelled counter exposes no sample until its first increment.
        exposed.add(family.name + "_total" if family.type == "counter" else family.name)
        if family.type == "info":
            exposed.add(family.name + "_info")
            exposed.discard(family.name)
    missing = sorted(exposed - documented)
    assert not missing, f"undocumented metrics: {missing}"


def test_merged_view_families_are_documented(tmp_path: Path) -> None:
    """The families a multi-process scrape adds (server_workers_*, the snapshots' age)
    are in docs/metrics.md."""
    import os

    from sightline._multiprocess import Server, Snapshots, aggregate_registry
    from sightline._store import Store

    server = Server("gunicorn", os.getpid(), workers=2)
    store = Store.open(tmp_path.parent, tmp_path.name)
    merged = aggregate_registry(Snapshots(store, "test", CollectorRegistry(), server))
    added = {family.name for family in merged.collect()}
    assert added == {
        "server_workers_configured",
        "server_workers_live",
        "server_workers_busy",
        "sightline_snapshot_age_seconds",
    }
    assert added <= table_cells("metrics.md", 0)


def test_links_between_pages_resolve() -> None:
    """Every relative link in README.md and docs/ points at a file that exists."""
    pages = [DOCS.parent / "README.md", *DOCS.glob("*.md")]
    for page in pages:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
