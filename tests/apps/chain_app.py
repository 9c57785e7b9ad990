"""Two copies of this app call each other over HTTP in the tracing tests."""

from __future__ import annotations

import logging
import os

import sightline

sightline.init()  # everything from the environment

import requests  # noqa: E402
from flask import Flask  # noqa: E402

app = Flask(__name__)
log = logging.getLogger("shop.chain")
log.setLevel(logging.INFO)  # the app's own lines; the root keeps its level


@app.route("/health")
def health() -> str:
    return "ok"


@app.route("/users/<int:uid>")
def user(uid: int) -> str:
    log.info("served user", extra={"uid": uid})
    return f"user {uid}"


@app.route("/call")
def call() -> str:
    downstream = os.environ["DOWNSTREAM"]
    response = requests.get(f"{downstream}/users/5", timeout=5)
    log.info("called downstream", extra={"status": response.status_code})
    return response.text
