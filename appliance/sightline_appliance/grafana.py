"""``sightline dashboards push``: the dashboards, into a folder of a Grafana that exists.

    GRAFANA_URL=https://grafana.example.com GRAFANA_TOKEN=glsa_... \\
        sightline dashboards push [--folder Sightline] [--datasource loki=UID ...] \\
        [--dry-run] [--force]

Every dashboard of ``dashboards/`` goes into one folder (found by title, created if
missing), with its Prometheus, Loki and Tempo references pointed at data sources that
exist there: the one named with ``--datasource KIND=UID``, else the only data source of
that type, else the default one among several. Nothing is written until every data source
is settled. Grafana is driven through ``grafana-client`` (the ``grafana`` extra), imported
only here.

Idempotence and edits made in Grafana rest on Grafana's version history. Each save that
Sightline makes carries, as its version message, a digest of exactly what it sent (the
dashboard with its data sources mapped): ``sightline-sha256:<hex>``. Before writing a
dashboard, the push reads its current version (``GET /api/dashboards/uid/:uid``) and that
version's history entry (``GET /api/dashboards/uid/:uid/versions/:version``):

- no dashboard with that UID: **create** it;
- its current version carries no such message: someone saved it since (the UI, another
  tool, a restore of an older version) or Sightline never did: **refused**, unless
  ``--force``;
- the message's digest is that of what would be sent now, in the right folder:
  **unchanged**, and nothing is written;
- otherwise (the dashboards changed, another data source, moved out of the folder):
  **update**.

Every save names the version it read and asks Grafana not to overwrite (``overwrite``
false), so an edit made between the check and the save is refused by Grafana itself
(412 version-mismatch) rather than lost; ``--force`` saves with ``overwrite`` true. The
check never compares the JSON Grafana hands back with the JSON sent (Grafana may add or
migrate fields), only what Sightline recorded when it saved, which Grafana keeps as is.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sightline._version import __version__

Json = dict[str, Any]
Out = Callable[[str], object]
#: A service account token, or a user and password (basic auth).
Auth = str | tuple[str, str]

# The files Grafana provisions in the stack, where `_stack.native.FILES` finds them (a
# source checkout resolves the package's symlinks to the repository; a wheel carries
# copies); not imported from there, which needs PyYAML.
DASHBOARDS = (Path(__file__).resolve().parent / "stackfiles" / "dashboards").resolve()
FOLDER = "Sightline"
TIMEOUT = 10.0
INSTALL = "pip install 'sightline-appliance[grafana]'"
#: Grafana's own data sources (`-- Grafana --`, `-- Mixed --`, `-- Dashboard --`): no backend.
BUILT_IN = frozenset({"grafana", "datasource"})
#: Without these the dashboards show nothing: missing is an error, not a warning.
REQUIRED = frozenset({"prometheus"})
MARKER = re.compile(r"sightline-sha256:([0-9a-f]{64})")
# How the dashboards' Explore links encode their pane (dashboards/source/panels.py).
_EXPLORE_SAFE = "${}_."

CREATE, UPDATE, UNCHANGED, REFUSED, OVERWRITE = (
    "create",
    "update",
    "unchanged",
    "refused",
    "overwrite",
)
_DONE = {CREATE: "created", UPDATE: "updated", OVERWRITE: "overwritten"}


class PushError(Exception):
    """Why the push stopped: printed as is, exit code 2."""


class Rejected(Exception):
    """Grafana answered a request with a 4xx other than 401 and 403."""

    def __init__(self, status: int, message: str, reason: str = "") -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message
        self.reason = reason  # the answer's "status", e.g. version-mismatch


# -- the command


def command(
    url: str | None,
    token: str | None,
    user: str | None,
    password: str | None,
    folder: str,
    datasources: Sequence[str],
    dry_run: bool,
    force: bool,
    environ: Mapping[str, str],
    out: Out,
    err: Out | None = None,
) -> int:
    """``sightline dashboards push``: flags first, then ``GRAFANA_*`` variables. The
    report goes to ``out``, what stops the push to ``err`` (default ``out``)."""
    try:
        where = grafana_url(url or environ.get("GRAFANA_URL", ""))
        auth = credentials(token, user, password, environ)
        chosen = parse_datasources(datasources)
    except PushError as exc:
        (err or out)(f"sightline: {exc}")
        return 2
    return push(where, auth, folder, chosen, dry_run, force, out, err)


def grafana_url(url: str) -> str:
    if not url:
        raise PushError("no Grafana URL: pass --url or set GRAFANA_URL")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PushError(f"--url: expected http(s)://HOST[:PORT][/PATH], got {url!r}")
    if parts.username or parts.password:
        raise PushError("--url: put credentials in GRAFANA_TOKEN or GRAFANA_USER/PASSWORD")
    # grafana-client appends "api" to the path as it is: a sub-path needs its slash.
    path = parts.path.rstrip("/") + "/"
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def credentials(
    token: str | None, user: str | None, password: str | None, environ: Mapping[str, str]
) -> Auth:
    """The flags' credentials, else the environment's: a token, or a user and password."""
    if token and user:
        raise PushError("give --token or --user, not both")
    if token:
        return token
    if user:
        return (user, _password(password, environ))
    if environ.get("GRAFANA_TOKEN"):
        return environ["GRAFANA_TOKEN"]
    if environ.get("GRAFANA_USER"):
        return (environ["GRAFANA_USER"], _password(password, environ))
    raise PushError(
        "no credentials: set GRAFANA_TOKEN (a service account token; or --token), "
        "or GRAFANA_USER and GRAFANA_PASSWORD (or --user and --password)"
    )


def _password(password: str | None, environ: Mapping[str, str]) -> str:
    password = password or environ.get("GRAFANA_PASSWORD")
    if not password:
        raise PushError("a user needs a password: set GRAFANA_PASSWORD (or --password)")
    return password


def parse_datasources(specs: Sequence[str]) -> dict[str, str]:
    chosen: dict[str, str] = {}
    for spec in specs:
        kind, _, uid = spec.partition("=")
        if not (kind.strip() and uid.strip()):
            raise PushError(f"--datasource: expected KIND=UID (e.g. loki=P8E80F9AEF), got {spec!r}")
        chosen[kind.strip()] = uid.strip()
    return chosen


# -- the push


def push(
    url: str,
    auth: Auth,
    folder: str,
    datasource_map: Mapping[str, str],
    dry_run: bool,
    force: bool,
    out: Out,
    err: Out | None = None,
    directory: Path = DASHBOARDS,
    timeout: float = TIMEOUT,
) -> int:
    """Push every dashboard of ``directory`` into ``folder``; 0 done or nothing to do, 1
    some refused (edited in Grafana), 2 errors. With ``dry_run`` nothing is written."""
    secrets = [auth] if isinstance(auth, str) else [auth[1]]
    try:
        dashboards = load(directory)
        used = sorted(kinds(dashboards))
        unused = sorted(set(datasource_map) - set(used))
        if unused:
            raise PushError(
                f"--datasource {unused[0]}: no dashboard uses that kind (they use "
                f"{', '.join(used)})"
            )
        with Grafana(url, auth, timeout, secrets) as grafana:
            return _push(grafana, dashboards, folder, datasource_map, dry_run, force, out)
    except PushError as exc:
        (err or out)(f"sightline: {exc}")
        return 2


def _push(
    grafana: Grafana,
    dashboards: list[Json],
    folder: str,
    datasource_map: Mapping[str, str],
    dry_run: bool,
    force: bool,
    out: Out,
) -> int:
    version = grafana.version()
    available = grafana.datasources()
    choices = [choose(kind, available, datasource_map) for kind in sorted(kinds(dashboards))]
    out(f"Grafana {version} at {grafana.url}")
    for choice in choices:
        out(f"  {choice.kind}: {choice.describe()}")
        if choice.uid is None and not choice.error:
            out(f"    warning: {broken_panels(dashboards, choice.kind)}")
    errors = [choice.error for choice in choices if choice.error]
    if errors:
        raise PushError("; ".join(errors))
    uids = {choice.kind: choice.uid for choice in choices if choice.uid is not None}

    folder_uid = grafana.folder(folder)
    if folder_uid is None:
        if dry_run:
            out(f'folder "{folder}": would create it')
        else:
            folder_uid = grafana.create_folder(folder)
            out(f'folder "{folder}": created')
    counts: dict[str, int] = {}
    for dashboard in dashboards:
        sent = remap(dashboard, uids)
        digest = content_digest(sent)
        plan = grafana.plan(sent["uid"], digest, folder_uid)
        if plan.action == REFUSED and force:
            plan = Plan(OVERWRITE, plan.reason, plan.version)
        action, detail = plan.action, plan.reason
        if not dry_run and action in _DONE and folder_uid is not None:
            try:
                grafana.save(sent, folder_uid, digest, plan.version, force)
                action = _DONE[action]
            except Rejected as exc:
                action, detail = _rejected(exc)
        elif dry_run and action in _DONE:
            action = f"would {action}"
        counts[action] = counts.get(action, 0) + 1
        line = f"  {action:<16} {sent['uid']:<24} {sent['title']}"
        out(f"{line}: {detail}" if detail else line)
    return _summary(counts, len(dashboards), dry_run, force, out)


def _rejected(exc: Rejected) -> tuple[str, str]:
    if exc.status == 412 and exc.reason == "version-mismatch":
        return REFUSED, "edited in Grafana during this push; --force overwrites it"
    return "error", f"Grafana refused it ({exc.status}): {exc.message}"


def _summary(counts: Mapping[str, int], total: int, dry_run: bool, force: bool, out: Out) -> int:
    parts = ", ".join(f"{n} {action}" for action, n in counts.items())
    out(f"{total} dashboards: {parts}")
    if dry_run:
        out("dry run: nothing was written")
    elif set(counts) == {UNCHANGED}:
        out("nothing to write: Grafana has these dashboards as Sightline pushed them")
    if counts.get(REFUSED) and not force:
        out("refused dashboards were edited in Grafana: --force overwrites them")
    if counts.get("error"):
        return 2
    return 1 if counts.get(REFUSED) else 0


# -- the dashboards


def load(directory: Path) -> list[Json]:
    dashboards = [json.loads(path.read_text()) for path in sorted(directory.glob("*.json"))]
    if not dashboards:
        raise PushError(f"no dashboards in {directory}")
    return dashboards


def references(node: Any) -> Iterator[Json]:
    """Every data source reference in ``node`` (panels, targets, variables, annotations,
    and the queries inside Explore links) that names a backend, not Grafana itself or a
    ``${variable}``."""
    if isinstance(node, dict):
        ref = node.get("datasource")
        if isinstance(ref, dict) and _is_backend(ref):
            yield ref
        for value in node.values():
            yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)
    elif isinstance(node, str) and node.startswith("/explore?"):
        panes = _explore_panes(node)
        if panes is not None:
            yield from references(panes)


def _is_backend(ref: Json) -> bool:
    uid = ref.get("uid")
    return (
        isinstance(ref.get("type"), str)
        and ref["type"] not in BUILT_IN
        and isinstance(uid, str)
        and not uid.startswith("$")
    )


def kinds(dashboards: Sequence[Json]) -> set[str]:
    return {ref["type"] for dashboard in dashboards for ref in references(dashboard)}


def remap(node: Any, uids: Mapping[str, str]) -> Any:
    """A copy of ``node`` whose references of each kind in ``uids`` (kind: UID) point at
    that UID, Explore links included; other references are left as they are."""
    if isinstance(node, dict):
        copy = {key: remap(value, uids) for key, value in node.items()}
        ref = node.get("datasource")
        if isinstance(ref, dict) and _is_backend(ref) and ref["type"] in uids:
            copy["datasource"] = {**ref, "uid": uids[ref["type"]]}
        elif isinstance(ref, str):  # an Explore pane names its data source by UID alone
            for query in node.get("queries", ()):
                inner = query.get("datasource") if isinstance(query, dict) else None
                if isinstance(inner, dict) and inner.get("uid") == ref and inner["type"] in uids:
                    copy["datasource"] = uids[inner["type"]]
        return copy
    if isinstance(node, list):
        return [remap(value, uids) for value in node]
    if isinstance(node, str) and node.startswith("/explore?"):
        return _remap_explore(node, uids)
    return node


def _explore_panes(link: str) -> Any:
    for param in link.partition("?")[2].split("&"):
        name, _, value = param.partition("=")
        if name == "panes":
            try:
                return json.loads(urllib.parse.unquote(value))
            except ValueError:
                return None
    return None


def _remap_explore(link: str, uids: Mapping[str, str]) -> str:
    path, _, query = link.partition("?")
    params = []
    for param in query.split("&"):
        panes = _explore_panes(link) if param.startswith("panes=") else None
        if panes is not None:
            encoded = json.dumps(remap(panes, uids), separators=(",", ":"))
            param = f"panes={urllib.parse.quote(encoded, safe=_EXPLORE_SAFE)}"
        params.append(param)
    return f"{path}?{'&'.join(params)}"


def content_digest(dashboard: Json) -> str:
    """The digest recorded with each save: of the dashboard as sent, key order aside, and
    without ``id`` and ``version``, which are Grafana's bookkeeping."""
    content = {key: value for key, value in dashboard.items() if key not in ("id", "version")}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def broken_panels(dashboards: Sequence[Json], kind: str) -> str:
    titles = [
        f"{dashboard['title']}: {panel.get('title') or panel.get('type')}"
        for dashboard in dashboards
        for panel in _panels(dashboard.get("panels", []))
        if any(ref["type"] == kind for ref in references(panel))
    ]
    return (
        f"{len(titles)} panels use {kind} and will be broken (no data, or links that lead "
        f"nowhere): {'; '.join(titles)}. Add a {kind} data source and push again, or pass "
        f"--datasource {kind}=UID"
    )


def _panels(panels: Sequence[Json]) -> Iterator[Json]:
    for panel in panels:
        if panel.get("type") == "row":
            yield from _panels(panel.get("panels", []))
        else:
            yield panel


# -- data sources


@dataclass(frozen=True)
class Choice:
    """The data source in Grafana that the references of one kind will point at."""

    kind: str
    uid: str | None  # None: none found (an error if ``error``, else a warning)
    how: str
    error: str = ""

    def describe(self) -> str:
        if self.error:
            return f"error: {self.error}"
        return self.how if self.uid is None else f"{self.how} (uid {self.uid})"


def choose(kind: str, available: Sequence[Json], explicit: Mapping[str, str]) -> Choice:
    """``--datasource KIND=UID`` if given (it must exist and be of that type), else the one
    data source of the type, else the default one among several."""
    flag = f"--datasource {kind}=UID"
    if kind in explicit:
        uid = explicit[kind]
        found = [ds for ds in available if ds.get("uid") == uid]
        if not found:
            return Choice(kind, None, "", f"--datasource {kind}={uid}: no data source has that UID")
        if found[0].get("type") != kind:
            return Choice(
                kind,
                None,
                "",
                f"--datasource {kind}={uid}: {found[0].get('name')!r} is a "
                f"{found[0].get('type')} data source, not {kind}",
            )
        return Choice(kind, uid, f"{found[0].get('name')!r}, from --datasource")
    same = [ds for ds in available if ds.get("type") == kind]
    if len(same) == 1:
        return Choice(kind, same[0]["uid"], f"{same[0].get('name')!r}, the only {kind}")
    default = [ds for ds in same if ds.get("isDefault")]
    if default:
        return Choice(kind, default[0]["uid"], f"{default[0].get('name')!r}, the default {kind}")
    if same:
        names = ", ".join(f"{ds.get('name')!r} (uid {ds.get('uid')})" for ds in same)
        return Choice(
            kind, None, "", f"{len(same)} {kind} data sources ({names}): pick with {flag}"
        )
    if kind in REQUIRED:
        return Choice(kind, None, "", f"Grafana has no {kind} data source: add one, or {flag}")
    return Choice(kind, None, f"missing: Grafana has no {kind} data source")


# -- Grafana


@dataclass(frozen=True)
class Plan:
    action: str  # CREATE, UPDATE, UNCHANGED, REFUSED, OVERWRITE
    reason: str = ""
    version: int | None = None  # the version in Grafana, which a save must name


class Grafana:
    """The calls a push makes, through grafana-client, with its failures turned into
    :class:`PushError` (naming the fix) or :class:`Rejected`."""

    def __init__(self, url: str, auth: Auth, timeout: float, secrets: Sequence[str]) -> None:
        try:
            from grafana_client import client as errors
            from grafana_client.api import GrafanaApi
        except ImportError as exc:
            raise PushError(f"grafana-client is missing: {INSTALL}") from exc
        self.url = url
        self._errors = errors
        self._token = isinstance(auth, str)
        self._secrets = [secret for secret in secrets if secret]
        api: Any = GrafanaApi.from_url(url, credential=auth, timeout=timeout)
        self._api = api

    def __enter__(self) -> Grafana:
        return self

    def __exit__(self, *exc: object) -> None:
        self._api.client.s.close()  # grafana-client never closes its session

    def version(self) -> str:
        info = self._call("read its build information", "", self._api.health.check)
        if not isinstance(info, dict):
            raise PushError(f"{self.url} does not answer as Grafana does: is it Grafana's URL?")
        return str(info.get("version", "?"))

    def datasources(self) -> list[Json]:
        need = (
            "datasources:read, which the Admin role has (with RBAC, also the fixed role "
            "fixed:datasources:reader)"
        )
        found = self._call("list the data sources", need, self._api.datasource.list_datasources)
        return [ds for ds in found if isinstance(ds, dict)]

    def folder(self, title: str) -> str | None:
        need = "folders:read (the Viewer role has it)"
        for folder in self._call("list the folders", need, self._api.folder.get_all_folders):
            if folder.get("title") == title:
                return str(folder["uid"])
        return None

    def create_folder(self, title: str) -> str:
        need = "folders:create (the Editor role has it)"
        created = self._call("create a folder", need, self._api.folder.create_folder, title)
        return str(created["uid"])

    def plan(self, uid: str, digest: str, folder_uid: str | None) -> Plan:
        need = "dashboards:read"
        try:
            found = self._call("read dashboards", need, self._api.dashboard.get_dashboard, uid)
        except Rejected as exc:
            if exc.status == 404:
                return Plan(CREATE)
            raise PushError(f"reading dashboard {uid}: Grafana answered {exc}") from exc
        version = found["dashboard"].get("version")
        try:
            entry = self._call(
                "read dashboard versions",
                "dashboards:read",
                self._api.dashboard_versions.get_dashboard_version_by_uid,
                uid,
                version,
            )
        except Rejected:
            entry = {}
        pushed = MARKER.search(str(entry.get("message") or ""))
        if pushed is None:
            by = entry.get("createdBy") or "someone"
            said = f' ("{entry["message"]}")' if entry.get("message") else ""
            why = f"edited in Grafana: version {version} was saved by {by}{said}, not by sightline"
            return Plan(REFUSED, why, version)
        if found.get("meta", {}).get("folderUid") != folder_uid:
            return Plan(UPDATE, "moves it into the folder", version)
        if pushed.group(1) == digest:
            return Plan(UNCHANGED)
        return Plan(UPDATE, "", version)

    def save(
        self, dashboard: Json, folder_uid: str, digest: str, version: int | None, force: bool
    ) -> None:
        body = {k: v for k, v in dashboard.items() if k not in ("id", "version")}
        body["id"] = None
        if version is not None:
            body["version"] = version
        payload = {
            "dashboard": body,
            "folderUid": folder_uid,
            "message": f"sightline {__version__} dashboards push, sightline-sha256:{digest}",
            "overwrite": force,
        }
        need = "dashboards:create and dashboards:write in the folder (the Editor role has them)"
        self._call("save dashboards", need, self._api.dashboard.update_dashboard, payload)

    def _call(self, what: str, need: str, method: Callable[..., Any], *args: Any) -> Any:
        errors = self._errors
        try:
            return method(*args)
        except errors.GrafanaUnauthorizedError as exc:
            fix = "--token / GRAFANA_TOKEN" if self._token else "--user/--password"
            raise PushError(
                f"Grafana at {self.url} refused the credentials (401): check {fix}"
            ) from exc
        except errors.GrafanaClientError as exc:
            message = self._message(exc.response)
            if exc.status_code == 403:
                raise PushError(
                    f"Grafana refused to let these credentials {what} (403 {message}): "
                    f"they need {need}"
                ) from exc
            reason = exc.response.get("status", "") if isinstance(exc.response, dict) else ""
            raise Rejected(exc.status_code, message, str(reason)) from exc
        except errors.GrafanaException as exc:
            raise PushError(
                f"Grafana at {self.url} failed to {what}: {self._scrub(str(exc))}"
            ) from exc
        except ValueError as exc:  # JSON that does not decode: not Grafana's API
            raise PushError(
                f"{self.url} does not answer as Grafana does: is it Grafana's URL?"
            ) from exc
        except OSError as exc:  # requests' errors included
            if "Timeout" in type(exc).__name__:
                raise PushError(f"Grafana at {self.url} did not answer within the timeout") from exc
            raise PushError(f"cannot reach Grafana at {self.url}: {self._reason(exc)}") from exc

    def _message(self, response: Any) -> str:
        if isinstance(response, dict):
            return self._scrub(str(response.get("message", response)))
        return self._scrub(str(response))[:200]

    def _reason(self, exc: BaseException) -> str:
        while exc.__cause__ is not None or exc.__context__ is not None:
            exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
        return self._scrub(str(exc) or type(exc).__name__)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text
