"""`sightline dashboards push` against a loopback stand-in for Grafana's HTTP API
(tests/grafana_api.py): the folder, the data sources, idempotence, edits made in Grafana,
dry runs and the errors a user meets."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import sys
import urllib.parse
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from sightline_appliance import grafana as _grafana

from .grafana_api import FakeGrafana
from .helpers import free_port

pytest.importorskip("grafana_client")

TOKEN = "glsa_test"
FILES = sorted(_grafana.DASHBOARDS.glob("*.json"))
UIDS = [json.loads(path.read_text())["uid"] for path in FILES]


def datasource(id_: int, uid: str, kind: str, name: str, default: bool = False) -> dict[str, Any]:
    """A data source as ``GET /api/datasources`` lists it."""
    return {
        "id": id_,
        "uid": uid,
        "orgId": 1,
        "name": name,
        "type": kind,
        "typeName": kind.capitalize(),
        "access": "proxy",
        "url": f"http://{kind}.internal",
        "isDefault": default,
        "readOnly": False,
    }


MIMIR = datasource(1, "mimir-main", "prometheus", "Mimir", default=True)
LOKI = datasource(2, "logs-eu", "loki", "Logs")
TEMPO = datasource(3, "traces-eu", "tempo", "Traces")


@pytest.fixture
def grafana() -> Iterator[FakeGrafana]:
    users = {"alice": ("wonderland", "Editor"), "admin": ("hunter22", "Admin")}
    with FakeGrafana([MIMIR, LOKI, TEMPO], users=users) as fake:
        yield fake


def push(fake: FakeGrafana, *datasources: str, **options: Any) -> tuple[int, list[str]]:
    """Run the command as the CLI does; the exit code and the lines it printed, which never
    hold a secret."""
    lines: list[str] = []
    kwargs: dict[str, Any] = {
        "url": fake.url,
        "token": TOKEN,
        "user": None,
        "password": None,
        "folder": "Sightline",
        "dry_run": False,
        "force": False,
        "environ": {},
    }
    kwargs.update(options)
    code = _grafana.command(datasources=list(datasources), out=lines.append, **kwargs)
    text = "\n".join(lines)
    for secret in (TOKEN, "wonderland", "hunter22", options.get("token") or TOKEN):
        assert secret not in text
    return code, lines


def line_of(lines: list[str], uid: str) -> str:
    return next(line for line in lines if f" {uid} " in line)


def edit_as_alice(fake: FakeGrafana, uid: str, message: str) -> None:
    """What a user's save in the UI sends: the dashboard read, changed, at its version."""
    auth = "Basic " + base64.b64encode(b"alice:wonderland").decode()
    request = urllib.request.Request(
        f"{fake.url}/api/dashboards/uid/{uid}", headers={"Authorization": auth}
    )
    with urllib.request.urlopen(request, timeout=5) as answer:
        found = json.load(answer)
    found["dashboard"]["title"] += " (mine)"
    body = {
        "dashboard": found["dashboard"],
        "folderUid": found["meta"]["folderUid"],
        "message": message,
        "overwrite": False,
    }
    save = urllib.request.Request(
        f"{fake.url}/api/dashboards/db",
        data=json.dumps(body).encode(),
        headers={"Authorization": auth, "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(save, timeout=5) as answer:
        assert json.load(answer)["status"] == "success"


def datasource_refs(node: Any) -> Iterator[tuple[str, str]]:
    """(type, uid) of every data source reference, read without the code under test:
    panels, targets, variables, annotations, and the panes inside Explore links."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "datasource" and isinstance(value, dict):
                yield value["type"], value["uid"]
            elif key == "datasource" and isinstance(value, str):
                yield "pane", value
            else:
                yield from datasource_refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from datasource_refs(value)
    elif isinstance(node, str) and "/explore?" in node:
        panes = urllib.parse.parse_qs(urllib.parse.urlsplit(node).query)["panes"][0]
        yield from datasource_refs(json.loads(panes))


def test_first_push_creates_the_folder_and_every_dashboard_with_its_data_sources_mapped(
    grafana: FakeGrafana,
) -> None:
    """A first push creates the folder and every dashboard in it, and every data source
    reference in what Grafana stores (panels, targets, variables, Explore links) names a
    data source that exists there."""
    code, lines = push(grafana)

    assert code == 0, lines
    assert [folder["title"] for folder in grafana.folders.values()] == ["Sightline"]
    folder_uid = next(iter(grafana.folders))
    saves = [r for r in grafana.writes() if r.path == "/api/dashboards/db"]
    assert sorted(r.body["dashboard"]["uid"] for r in saves) == sorted(UIDS)
    existing = {ds["uid"] for ds in (MIMIR, LOKI, TEMPO)}
    for uid in UIDS:
        stored = grafana.stored(uid)
        assert grafana.dashboards[uid].folder_uid == folder_uid
        refs = set(datasource_refs(stored))
        assert {uid for kind, uid in refs if kind != "grafana"} <= existing, refs
        assert ("prometheus", "mimir-main") in refs
        assert "created" in line_of(lines, uid)
    overview = set(datasource_refs(grafana.stored("sightline-overview")))
    assert {("loki", "logs-eu"), ("tempo", "traces-eu"), ("pane", "logs-eu")} <= overview
    for save in saves:
        sent = save.body["dashboard"]
        assert save.body["overwrite"] is False
        assert save.body["folderUid"] == folder_uid
        mine = json.dumps(
            {k: v for k, v in sent.items() if k not in ("id", "version")},
            sort_keys=True,
            separators=(",", ":"),
        )
        assert (
            f"sightline-sha256:{hashlib.sha256(mine.encode()).hexdigest()}" in save.body["message"]
        )
    assert lines[-1] == f"{len(UIDS)} dashboards: {len(UIDS)} created"


def test_second_push_changes_nothing_and_says_so(grafana: FakeGrafana) -> None:
    """Pushing the same dashboards again makes no write request and reports each one
    unchanged."""
    assert push(grafana)[0] == 0
    before = len(grafana.requests)

    code, lines = push(grafana)

    assert code == 0, lines
    assert [r for r in grafana.requests[before:] if r.method != "GET"] == []
    for uid in UIDS:
        assert "unchanged" in line_of(lines, uid)
    assert "nothing to write" in lines[-1]


def test_an_edit_made_in_grafana_is_refused_without_force_and_overwritten_with_it(
    grafana: FakeGrafana,
) -> None:
    """A dashboard a user saved in Grafana after the push is not overwritten (exit 1, the
    line says who and what); --force overwrites it, and the push after that is unchanged."""
    assert push(grafana)[0] == 0
    edit_as_alice(grafana, "sightline-health", "tweak thresholds")
    before = len(grafana.requests)

    code, lines = push(grafana)

    assert code == 1, lines
    refused = line_of(lines, "sightline-health")
    assert "refused" in refused
    assert "alice" in refused
    assert "tweak thresholds" in refused
    assert [r for r in grafana.requests[before:] if r.method != "GET"] == []
    assert grafana.stored("sightline-health")["title"].endswith("(mine)")
    assert any("--force" in line for line in lines)

    code, lines = push(grafana, force=True)

    assert code == 0, lines
    assert "overwritten" in line_of(lines, "sightline-health")
    assert grafana.stored("sightline-health")["title"] == "Sightline / Agent health"
    assert grafana.stored("sightline-health")["version"] == 3
    saves = [r for r in grafana.writes() if r.path == "/api/dashboards/db"]
    assert saves[-1].body["overwrite"] is True
    assert push(grafana)[0] == 0


def test_an_edit_made_while_the_push_runs_is_refused_by_grafana_and_kept(
    grafana: FakeGrafana,
) -> None:
    """A user saving a dashboard between the push's check and its save is not overwritten:
    the save names the version it read, Grafana answers 412 and the line says refused."""
    assert push(grafana)[0] == 0
    grafana.datasources.append(datasource(4, "vm", "prometheus", "VictoriaMetrics"))

    def alice_saves_first(body: dict[str, Any]) -> None:
        if body["dashboard"]["uid"] == "sightline-overview":
            grafana.before_save = None
            grafana.save_as("alice", "sightline-overview", "Overview (alice's)", "mine")

    grafana.before_save = alice_saves_first
    code, lines = push(grafana, "prometheus=vm")

    assert code == 1, lines
    assert "edited in Grafana during this push" in line_of(lines, "sightline-overview")
    assert grafana.stored("sightline-overview")["title"] == "Overview (alice's)"
    assert "updated" in line_of(lines, "sightline-health")


def test_dry_run_writes_nothing_and_says_what_would_change(grafana: FakeGrafana) -> None:
    """--dry-run on an empty Grafana says each dashboard and the folder would be created,
    and after a push and an edit it says which would be updated, unchanged or refused;
    neither run makes a write request."""
    code, lines = push(grafana, dry_run=True)

    assert code == 0, lines
    assert grafana.writes() == []
    assert grafana.folders == {}
    assert 'folder "Sightline": would create it' in lines
    assert all("would create" in line_of(lines, uid) for uid in UIDS)
    assert lines[-1] == "dry run: nothing was written"

    assert push(grafana)[0] == 0
    edit_as_alice(grafana, "sightline-workers", "")
    grafana.datasources.append(datasource(4, "vm", "prometheus", "VictoriaMetrics"))
    writes = len(grafana.writes())

    code, lines = push(grafana, "prometheus=vm", dry_run=True)

    assert code == 1, lines
    assert len(grafana.writes()) == writes
    assert "refused" in line_of(lines, "sightline-workers")
    assert "would update" in line_of(lines, "sightline-overview")


def test_several_data_sources_of_a_type_without_a_default_is_an_error_naming_them(
    grafana: FakeGrafana,
) -> None:
    """Two Prometheus data sources and neither the default: exit 2 naming both and the
    flag that picks one, before anything is written."""
    grafana.datasources[:] = [
        datasource(1, "prom-a", "prometheus", "Prom A"),
        datasource(2, "prom-b", "prometheus", "Prom B"),
        LOKI,
        TEMPO,
    ]

    code, lines = push(grafana)

    assert code == 2
    text = "\n".join(lines)
    assert "'Prom A' (uid prom-a)" in text
    assert "'Prom B' (uid prom-b)" in text
    assert "--datasource prometheus=UID" in text
    assert grafana.writes() == []


def test_the_default_data_source_is_chosen_among_several_and_the_flag_wins(
    grafana: FakeGrafana,
) -> None:
    """Among two Prometheus data sources the default one is used; --datasource
    prometheus=UID points the dashboards at the other."""
    grafana.datasources.append(datasource(4, "vm", "prometheus", "VictoriaMetrics"))

    assert push(grafana)[0] == 0
    assert ("prometheus", "mimir-main") in set(
        datasource_refs(grafana.stored("sightline-overview"))
    )

    code, lines = push(grafana, "prometheus=vm")

    assert code == 0, lines
    refs = {uid for kind, uid in datasource_refs(grafana.stored("sightline-overview"))}
    assert "vm" in refs
    assert "mimir-main" not in refs
    assert "updated" in line_of(lines, "sightline-overview")


@pytest.mark.parametrize(
    ("flag", "says"),
    [
        ("prometheus=nope", "--datasource prometheus=nope: no data source has that UID"),
        ("prometheus=logs-eu", "'Logs' is a loki data source, not prometheus"),
        ("mysql=abc", "--datasource mysql: no dashboard uses that kind"),
        ("prometheus", "expected KIND=UID"),
    ],
)
def test_a_wrong_datasource_flag_is_an_error_naming_it(
    grafana: FakeGrafana, flag: str, says: str
) -> None:
    """--datasource naming no data source, one of another type, a kind no dashboard uses,
    or no UID at all: exit 2 saying so, nothing written."""
    code, lines = push(grafana, flag)

    assert code == 2
    assert says in "\n".join(lines)
    assert grafana.writes() == []


def test_missing_prometheus_is_an_error_and_missing_loki_or_tempo_a_warning(
    grafana: FakeGrafana,
) -> None:
    """With no Prometheus data source nothing is pushed (exit 2); with Prometheus alone the
    dashboards are pushed and a warning names the Loki and Tempo panels that will be
    broken and the flag that fixes them."""
    grafana.datasources[:] = [LOKI, TEMPO]
    code, lines = push(grafana)
    assert code == 2
    assert "Grafana has no prometheus data source" in "\n".join(lines)
    assert grafana.writes() == []

    grafana.datasources[:] = [MIMIR]
    code, lines = push(grafana)

    assert code == 0, lines
    warnings = [line for line in lines if "warning:" in line]
    assert len(warnings) == 2
    assert "panels use loki and will be broken" in warnings[0]
    assert "Sightline / Overview: Errors in the logs" in warnings[0]
    assert "--datasource tempo=UID" in warnings[1]
    refs = set(datasource_refs(grafana.stored("sightline-overview")))
    assert ("prometheus", "mimir-main") in refs
    assert ("loki", "loki") in refs


def test_a_refused_token_is_a_clear_error(grafana: FakeGrafana) -> None:
    """A token or password Grafana refuses (401): exit 2 naming the flag to check, and the
    secret is not printed."""
    code, lines = push(grafana, token="glsa_wrong")
    assert code == 2
    assert "refused the credentials (401): check --token / GRAFANA_TOKEN" in lines[-1]
    assert "glsa_wrong" not in "\n".join(lines)

    code, lines = push(grafana, token=None, user="admin", password="wrong-pw")
    assert code == 2
    assert "check --user/--password" in lines[-1]
    assert "wrong-pw" not in lines[-1]


def test_credentials_without_permission_to_list_data_sources_name_it(
    grafana: FakeGrafana,
) -> None:
    """An Editor may not list data sources (403): exit 2 naming the permission and the
    role that has it, nothing written."""
    code, lines = push(grafana, token=None, user="alice", password="wonderland")

    assert code == 2
    assert "(403" in lines[-1]
    assert "datasources:read" in lines[-1]
    assert "Admin" in lines[-1]
    assert grafana.writes() == []


def test_an_unreachable_grafana_is_a_clear_error() -> None:
    """A URL where nothing listens: exit 2 saying Grafana cannot be reached there, and why."""
    url = f"http://127.0.0.1:{free_port()}"
    lines: list[str] = []

    code = _grafana.command(url, TOKEN, None, None, "Sightline", [], False, False, {}, lines.append)

    assert code == 2
    assert lines[-1].startswith(f"sightline: cannot reach Grafana at {url}/: ")
    assert re.search(r"refused|Errno", lines[-1]), lines


def test_url_and_credentials_come_from_the_environment(grafana: FakeGrafana) -> None:
    """GRAFANA_URL with GRAFANA_USER/GRAFANA_PASSWORD push like the flags; a user without a
    password, a token and a user together, or no credentials at all are errors."""
    environ = {"GRAFANA_URL": grafana.url, "GRAFANA_USER": "admin", "GRAFANA_PASSWORD": "hunter22"}
    code, lines = push(grafana, url=None, token=None, environ=environ)
    assert code == 0, lines
    assert {r.login for r in grafana.writes()} == {"admin"}

    cases: list[tuple[dict[str, Any], str]] = [
        ({"token": None, "environ": {"GRAFANA_USER": "admin"}}, "needs a password"),
        ({"user": "admin"}, "--token or --user, not both"),
        ({"token": None}, "no credentials"),
        ({"url": None}, "no Grafana URL"),
    ]
    for options, says in cases:
        code, lines = push(grafana, **options)
        assert code == 2, (options, lines)
        assert says in lines[-1], (options, lines)


def test_without_grafana_client_the_error_names_the_extra(
    grafana: FakeGrafana, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without grafana-client installed, the push exits 2 naming the extra to install."""
    for name in ("grafana_client", "grafana_client.api", "grafana_client.client"):
        monkeypatch.setitem(sys.modules, name, None)

    code, lines = push(grafana)

    assert code == 2
    assert "pip install 'sightline-appliance[grafana]'" in lines[-1]


def test_mapping_data_sources_leaves_everything_else_as_it_was() -> None:
    """Mapping every kind to its own UID gives each dashboard back byte for byte (the
    Explore links re-encoded as dashboards/build.py wrote them); mapping to other UIDs
    changes only the references."""
    identity = {"prometheus": "prometheus", "loki": "loki", "tempo": "tempo"}
    for path in FILES:
        dashboard = json.loads(path.read_text())
        assert json.dumps(_grafana.remap(dashboard, identity)) == json.dumps(dashboard)

        mapped = _grafana.remap(dashboard, {"prometheus": "P", "loki": "L", "tempo": "T"})
        assert _grafana.remap(mapped, identity) == dashboard
        assert {uid for _, uid in datasource_refs(mapped)} <= {"P", "L", "T", "-- Grafana --"}


def test_the_stand_in_refuses_what_grafana_refuses(grafana: FakeGrafana) -> None:
    """The stand-in answers a save over a newer version 412 version-mismatch unless
    overwrite, and 400 to a save without a folder, with unknown keys or without a title."""
    assert push(grafana)[0] == 0
    folder = next(iter(grafana.folders))
    stale = {**grafana.stored("sightline-health"), "version": 0}

    def save(body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(
            f"{grafana.url}/api/dashboards/db",
            data=json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status, json.load(answer)
        except urllib.error.HTTPError as exc:
            return exc.code, json.load(exc)

    status, answer = save({"dashboard": stale, "folderUid": folder, "overwrite": False})
    assert (status, answer["status"]) == (412, "version-mismatch")
    assert save({"dashboard": stale, "folderUid": folder, "overwrite": True})[0] == 200
    assert save({"dashboard": stale, "overwrite": True})[0] == 400
    assert save({"dashboard": stale, "folderUid": folder, "overwrite": True, "x": 1})[0] == 400
    assert save({"dashboard": {"uid": "x"}, "folderUid": folder})[0] == 400
