"""A Flask app whose requests end in a known way (fine, failed, slow), so a test can say
which of its traces the Collector's tail sampling must keep."""

from __future__ import annotations

import time

import sightline

sightline.init(service="sampling-probe")

from flask import Flask  # noqa: E402 (created after init on purpose)

app = Flask(__name__)


@app.route("/health")
def health() -> str:
    return "ok"


@app.route("/fine")
def fine() -> str:
    return "fine"


@app.route("/fail")
def fail() -> str:
    raise RuntimeError("the view failed")


@app.route("/slow/<int:ms>")
def slow(ms: int) -> str:
    time.sleep(ms / 1000)
    return "slow"
