"""A Flask app that never calls init() itself: the gunicorn config (gunicorn_hooks.py)
does, from the hook the test names. ``/fork`` forks a helper process that lives a while,
as an app forking a subprocess does."""

from __future__ import annotations

import os
import time

from flask import Flask

app = Flask(__name__)


@app.route("/health")
def health() -> str:
    return "ok"


@app.route("/users/<int:uid>")
def user(uid: int) -> dict[str, int]:
    return {"uid": uid}


@app.route("/fork")
def fork() -> dict[str, int]:
    pid = os.fork()
    if pid == 0:  # the helper: alive for a while, then gone without running any cleanup
        time.sleep(float(os.environ.get("HELPER_SECONDS", "4")))
        os._exit(0)
    return {"helper": pid}
