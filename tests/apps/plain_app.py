"""A Flask app that knows nothing of Sightline: `sightline run` instruments it."""

from __future__ import annotations

import logging

from flask import Flask

app = Flask(__name__)
log = logging.getLogger("plain")


@app.route("/health")
def health() -> str:
    return "ok"


@app.route("/users/<int:uid>")
def user(uid: int) -> dict[str, int]:
    log.warning("looked up user", extra={"uid": uid})
    return {"uid": uid}
