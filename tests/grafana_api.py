"""A loopback stand-in for the part of Grafana's HTTP API that ``sightline dashboards push``
uses, strict about what it is sent. It is not Grafana (which is AGPL and cannot run here):
it implements these endpoints from Grafana's HTTP API documentation and the rules of
Grafana's dashboard store, keeps its state in memory and records every request.

- ``GET /api/health``: the version, answered without credentials (grafana-client's
  health check);
- ``GET /api/folders``, ``POST /api/folders`` (``title`` required; a title or UID taken
  answers 409);
- ``GET /api/datasources`` (the Admin role only, as ``datasources:read`` is by default);
- ``GET /api/dashboards/uid/:uid`` (``dashboard`` and ``meta``, 404 when absent);
- ``POST /api/dashboards/db``: ``dashboard`` with a ``title``, a ``uid`` of at most 40
  letters, digits, ``-`` and ``_``, an ``id`` that is null or exists; ``folderUid`` (or
  the older ``folderId``) naming a folder that exists; ``overwrite`` a boolean,
  ``message`` a string. Saving over an existing dashboard with a ``version`` other than
  its current one answers 412 ``version-mismatch`` unless ``overwrite``; another
  dashboard with the same title in the folder, 412 ``name-exists``. Each save makes a
  new version (1 for a new dashboard) and a history entry with its message;
- ``GET /api/dashboards/uid/:uid/versions`` (newest first, in Grafana 12's
  ``{"versions": [...]}`` shape) and ``.../versions/:version`` (with ``data``).

Stricter than Grafana on purpose: keys it does not know in a save or a folder are
refused (400), and with ``overwrite`` a title taken by another dashboard is still 412
(Grafana would replace that dashboard). Credentials are a service account token
(``Bearer``) or a user's basic auth, each with an org role; anything else is 401, and an
action above the role 403.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .helpers import free_port

Json = dict[str, Any]
ROLES = ("Viewer", "Editor", "Admin")
UID = re.compile(r"^[a-zA-Z0-9\-_]+$")
SAVE_KEYS = {"dashboard", "folderId", "folderUid", "message", "overwrite", "isFolder"}
FOLDER_KEYS = {"title", "uid", "parentUid", "description"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    body: Any  # decoded JSON, or None
    login: str  # who made it ("" when refused as unauthenticated)


@dataclass
class Stored:
    id: int
    dashboard: Json
    folder_uid: str
    versions: list[Json] = field(default_factory=list)


class Answer(Exception):
    def __init__(self, status: int, body: Json) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


class FakeGrafana:
    """Grafana's API as a push sees it; ``requests`` holds every request, in order."""

    def __init__(
        self,
        datasources: list[Json] | None = None,
        tokens: dict[str, tuple[str, str]] | None = None,
        users: dict[str, tuple[str, str]] | None = None,
        version: str = "11.3.0",
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.version = version
        self.datasources = datasources if datasources is not None else []
        # token: (login, role); user: (password, role)
        self.tokens = tokens if tokens is not None else {"glsa_test": ("sa-1-sightline", "Admin")}
        self.users = users if users is not None else {"alice": ("wonderland", "Editor")}
        self.requests: list[Request] = []
        self.folders: dict[str, Json] = {}
        self.dashboards: dict[str, Stored] = {}
        # Called with each save's body before it is handled: a user saving at that moment.
        self.before_save: Callable[[Json], None] | None = None
        self._ids = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- lifecycle

    def __enter__(self) -> FakeGrafana:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                fake._serve(self)

            def do_POST(self) -> None:
                fake._serve(self)

            def do_PUT(self) -> None:
                fake._serve(self)

            def do_DELETE(self) -> None:
                fake._serve(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- what happened

    def writes(self) -> list[Request]:
        return [r for r in self.requests if r.method != "GET"]

    def stored(self, uid: str) -> Json:
        return self.dashboards[uid].dashboard

    def save_as(self, login: str, uid: str, title: str, message: str) -> None:
        """Save dashboard ``uid`` retitled, as ``login`` would from the UI, without a request
        (for use inside ``before_save``, which runs while a request is being handled)."""
        stored = self.dashboards[uid]
        dashboard = {**stored.dashboard, "title": title}
        self._save(
            {"dashboard": dashboard, "folderUid": stored.folder_uid, "message": message}, login
        )

    # -- serving

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        url = urllib.parse.urlsplit(handler.path)
        query = urllib.parse.parse_qs(url.query)
        with self._lock:
            login, role = self._identify(handler.headers.get("Authorization", ""))
            body: Any = None
            try:
                # Grafana answers its health check to anyone.
                if not login and url.path != "/api/health":
                    raise Answer(401, {"message": "Unauthorized"})
                if handler.command in ("POST", "PUT") or raw:
                    body = self._json(handler, raw)
                status, answer = self._route(handler.command, url.path, query, body, login, role)
            except Answer as exc:
                status, answer = exc.status, exc.body
            self.requests.append(Request(handler.command, url.path, query, body, login))
        data = json.dumps(answer).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _identify(self, authorization: str) -> tuple[str, str]:
        scheme, _, credential = authorization.partition(" ")
        if scheme == "Bearer" and credential in self.tokens:
            return self.tokens[credential]
        if scheme == "Basic":
            user, _, password = base64.b64decode(credential).decode().partition(":")
            if user in self.users and self.users[user][0] == password:
                return user, self.users[user][1]
        return "", ""

    @staticmethod
    def _json(handler: BaseHTTPRequestHandler, raw: bytes) -> Any:
        if handler.command in ("POST", "PUT"):
            kind = handler.headers.get("Content-Type", "")
            if not kind.startswith("application/json"):
                raise Answer(400, {"message": f"expected a JSON body, got {kind!r}"})
        try:
            return json.loads(raw)
        except ValueError:
            raise Answer(400, {"message": "bad request data"}) from None

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, login: str, role: str
    ) -> tuple[int, Any]:
        parts = path.strip("/").split("/")
        if method == "GET" and path == "/api/health":
            return 200, {"commit": "fake", "database": "ok", "version": self.version}
        if path == "/api/folders":
            if method == "GET":
                folders = [
                    {"id": f["id"], "uid": f["uid"], "title": f["title"]}
                    for f in self.folders.values()
                ]
                return 200, folders
            if method == "POST":
                self._need(role, "Editor", "folders:create")
                return 200, self._create_folder(body, login)
        if method == "GET" and path == "/api/datasources":
            self._need(role, "Admin", "datasources:read")
            return 200, self.datasources
        if parts[:3] == ["api", "dashboards", "uid"] and method == "GET":
            if len(parts) == 4:
                return 200, self._get_dashboard(parts[3])
            if len(parts) == 5 and parts[4] == "versions":
                return 200, self._versions(parts[3], query)
            if len(parts) == 6 and parts[4] == "versions":
                return 200, self._version(parts[3], parts[5])
        if method == "POST" and path == "/api/dashboards/db":
            self._need(role, "Editor", "dashboards:write")
            if self.before_save is not None:
                self.before_save(body)
            return 200, self._save(body, login)
        raise Answer(404, {"message": "Not found"})

    @staticmethod
    def _need(role: str, least: str, action: str) -> None:
        if ROLES.index(role) < ROLES.index(least):
            raise Answer(
                403,
                {
                    "message": "You'll need additional permissions to perform this action. "
                    f"Permissions needed: {action}"
                },
            )

    # -- folders

    def _create_folder(self, body: Any, login: str) -> Json:
        if not isinstance(body, dict) or set(body) - FOLDER_KEYS:
            raise Answer(400, {"message": f"unexpected folder payload {body!r}"})
        title = body.get("title")
        if not isinstance(title, str) or not title.strip():
            raise Answer(400, {"message": "folder title cannot be empty"})
        uid = body.get("uid") or f"f{self._next_id():06d}"
        if not isinstance(uid, str) or len(uid) > 40 or not UID.match(uid):
            raise Answer(400, {"message": "uid contains illegal characters or is too long"})
        if uid in self.folders or any(f["title"] == title for f in self.folders.values()):
            raise Answer(409, {"message": "a folder with the same name or uid already exists"})
        folder = {
            "id": self._next_id(),
            "uid": uid,
            "title": title,
            "version": 1,
            "createdBy": login,
        }
        self.folders[uid] = folder
        return {**folder, "url": f"/dashboards/f/{uid}/"}

    # -- dashboards

    def _get_dashboard(self, uid: str) -> Json:
        stored = self._find(uid)
        folder = self.folders[stored.folder_uid]
        return {
            "dashboard": json.loads(json.dumps(stored.dashboard)),
            "meta": {
                "type": "db",
                "canSave": True,
                "provisioned": False,
                "slug": _slug(stored.dashboard["title"]),
                "url": f"/d/{uid}/{_slug(stored.dashboard['title'])}",
                "version": stored.dashboard["version"],
                "folderId": folder["id"],
                "folderUid": folder["uid"],
                "folderTitle": folder["title"],
                "updatedBy": stored.versions[-1]["createdBy"],
            },
        }

    def _find(self, uid: str) -> Stored:
        if uid not in self.dashboards:
            raise Answer(404, {"message": "Dashboard not found"})
        return self.dashboards[uid]

    def _versions(self, uid: str, query: dict[str, list[str]]) -> Json:
        limit = int(query.get("limit", ["1000"])[0])
        entries = [{k: v for k, v in e.items() if k != "data"} for e in self._find(uid).versions]
        return {"continueToken": "", "versions": entries[::-1][:limit]}

    def _version(self, uid: str, version: str) -> Json:
        for entry in self._find(uid).versions:
            if str(entry["version"]) == version:
                return entry
        raise Answer(404, {"message": "Dashboard version not found"})

    def _save(self, body: Any, login: str) -> Json:
        if not isinstance(body, dict) or set(body) - SAVE_KEYS:
            raise Answer(400, {"message": f"unexpected keys {sorted(set(body) - SAVE_KEYS)}"})
        dashboard = body.get("dashboard")
        overwrite = body.get("overwrite", False)
        message = body.get("message", "")
        if not isinstance(dashboard, dict):
            raise Answer(400, {"message": "dashboard is required"})
        if not isinstance(overwrite, bool) or not isinstance(message, str):
            raise Answer(400, {"message": "bad request data: overwrite or message"})
        title = dashboard.get("title")
        if not isinstance(title, str) or not title.strip():
            raise Answer(400, {"message": "Dashboard title cannot be empty"})
        uid = dashboard.get("uid")
        if uid is not None and (not isinstance(uid, str) or len(uid) > 40 or not UID.match(uid)):
            raise Answer(400, {"message": "uid contains illegal characters or is too long"})
        folder_uid = self._folder_of(body)
        existing = self._existing(dashboard)
        version = dashboard.get("version")
        if existing is not None and version != existing.dashboard["version"] and not overwrite:
            raise Answer(
                412,
                {
                    "message": "The dashboard has been changed by someone else",
                    "status": "version-mismatch",
                },
            )
        for other_uid, other in self.dashboards.items():
            if (
                other_uid != uid
                and other.folder_uid == folder_uid
                and other.dashboard["title"] == title
            ):
                raise Answer(
                    412,
                    {
                        "message": "A dashboard with the same name in the folder already exists",
                        "status": "name-exists",
                    },
                )
        if existing is None:
            uid = uid or f"d{self._next_id():06d}"
            existing = Stored(self._next_id(), {}, folder_uid)
            self.dashboards[uid] = existing
            new_version = 1
        else:
            new_version = existing.dashboard["version"] + 1
        saved = json.loads(
            json.dumps({**dashboard, "id": existing.id, "uid": uid, "version": new_version})
        )
        existing.dashboard = saved
        existing.folder_uid = folder_uid
        existing.versions.append(
            {
                "id": self._next_id(),
                "dashboardId": existing.id,
                "uid": uid,
                "parentVersion": new_version - 1,
                "restoredFrom": 0,
                "version": new_version,
                "created": "2026-12-04T00:00:00Z",
                "createdBy": login,
                "message": message,
                "data": saved,
            }
        )
        return {
            "id": existing.id,
            "uid": uid,
            "url": f"/d/{uid}/{_slug(title)}",
            "status": "success",
            "version": new_version,
            "slug": _slug(title),
            "folderUid": folder_uid,
        }

    def _folder_of(self, body: Json) -> str:
        folder_uid = body.get("folderUid")
        if folder_uid is not None:
            if not isinstance(folder_uid, str) or folder_uid not in self.folders:
                raise Answer(400, {"message": "folder not found"})
            return folder_uid
        folder_id = body.get("folderId")
        for folder in self.folders.values():
            if folder["id"] == folder_id:
                return str(folder["uid"])
        # Saving into the root ("General") is valid Grafana, but a push never means to.
        raise Answer(400, {"message": "this stand-in needs folderUid or folderId of a folder"})

    def _existing(self, dashboard: Json) -> Stored | None:
        id_, uid = dashboard.get("id"), dashboard.get("uid")
        if id_ is not None and not isinstance(id_, int):
            raise Answer(400, {"message": "bad request data: id"})
        by_id = next((s for s in self.dashboards.values() if id_ and s.id == id_), None)
        if id_ and by_id is None:
            raise Answer(404, {"message": "Dashboard not found"})
        by_uid = self.dashboards.get(uid) if uid else None
        if by_id is not None and by_uid is not None and by_id is not by_uid:
            raise Answer(400, {"message": "A dashboard with the same uid already exists"})
        return by_id or by_uid

    def _next_id(self) -> int:
        self._ids += 1
        return self._ids


def _slug(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")
