"""The shop API: a Flask app with the shapes that matter for observability.

Routes with path parameters (``/products/<int:product_id>``), a slow search that burns
CPU, a checkout that enqueues Celery work and fails now and then (payment errors: a
share ``SHOP_CHECKOUT_FAILURES`` of checkouts, 1 % by default, within the shop's 99.5 %
availability objective), and a 404 for unknown products.

Faults on demand, to show the error-budget alerts: a request carrying
``X-Demo-Fault: outage`` fails with a 500 (the load generator's ``--outage`` sends them),
a checkout carrying ``X-Demo-Fault: payment`` finds the payment provider down (502).

Run it under gunicorn with several workers::

    gunicorn --workers 4 --threads 2 --bind 127.0.0.1:8000 sightline_appliance.demo.shop:app

The one Sightline line is the ``init()`` below; everything else is a plain Flask app.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import random
import time
from typing import Any

import sightline
from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

sightline.init(service=os.environ.get("SIGHTLINE_SERVICE", "shop"))

from . import tasks  # noqa: E402 (after init, as an app would: its workers are traced)

app = Flask("shop")
log = logging.getLogger("shop")
log.setLevel(logging.INFO)  # orders are logged at INFO; the root keeps its level

PRODUCTS: dict[int, dict[str, Any]] = {
    i: {"id": i, "name": f"product {i}", "price": round(5 + (i * 7.3) % 95, 2)}
    for i in range(1, 201)
}
_orders = itertools.count(1)


def _share(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    try:
        value = float(raw) if raw else default
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise ValueError(f"{name}={raw!r}: expected a share from 0 to 1")
    return value


CHECKOUT_FAILURES = _share("SHOP_CHECKOUT_FAILURES", 0.01)


def _work(ms: float) -> None:
    """Burn about ``ms`` of CPU, as template rendering or serialisation would."""
    deadline = time.perf_counter() + ms / 1000
    data = b"shop"
    while time.perf_counter() < deadline:
        data = hashlib.sha256(data).digest()


@app.before_request
def outage() -> ResponseReturnValue | None:
    if request.headers.get("X-Demo-Fault") == "outage":
        log.error("outage: %s %s failed (X-Demo-Fault)", request.method, request.path)
        return {"error": "outage"}, 500
    return None


@app.get("/health")
def health() -> ResponseReturnValue:
    return {"status": "ok"}


@app.get("/products")
def products() -> ResponseReturnValue:
    _work(2)
    time.sleep(random.uniform(0.005, 0.02))  # the database
    page = request.args.get("page", "1")
    start = (int(page) - 1) * 20 if page.isdigit() else 0
    return jsonify(list(PRODUCTS.values())[start : start + 20])


@app.get("/products/<int:product_id>")
def product(product_id: int) -> ResponseReturnValue:
    time.sleep(random.uniform(0.003, 0.015))
    found = PRODUCTS.get(product_id)
    if found is None:
        return {"error": "no such product"}, 404
    return found


@app.get("/search")
def search() -> ResponseReturnValue:
    # The slow path: a full scan with ranking, heavier for longer queries.
    query = request.args.get("q", "")
    _work(random.uniform(20, 60) + 5 * len(query))
    time.sleep(random.uniform(0.05, 0.3))
    hits = [p for p in PRODUCTS.values() if query and query in p["name"]][:10]
    return {"query": query, "hits": hits}


@app.post("/cart/<int:cart_id>/items")
def add_to_cart(cart_id: int) -> ResponseReturnValue:
    time.sleep(random.uniform(0.005, 0.02))
    body = request.get_json(silent=True) or {}
    return {"cart": cart_id, "product": body.get("product_id"), "added": True}, 201


@app.post("/checkout")
def checkout() -> ResponseReturnValue:
    order_id = next(_orders) + os.getpid() * 1_000_000
    items = random.randint(1, 4)
    time.sleep(random.uniform(0.02, 0.06))  # the payment provider
    failure = random.random() / CHECKOUT_FAILURES if CHECKOUT_FAILURES else 1.0
    if failure < 0.8 or request.headers.get("X-Demo-Fault") == "payment":
        log.error("payment declined by provider for order %s", order_id)
        return {"error": "payment failed"}, 502
    if failure < 1.0:
        raise RuntimeError(f"order {order_id}: inventory reservation lost")
    tasks.update_inventory.delay(order_id, items)
    tasks.send_invoice.delay(order_id)
    tasks.send_receipt.delay(order_id, f"customer{order_id % 1000}@example.com")
    if random.random() < 0.02:
        tasks.daily_report.delay()
    log.info("order %s placed with %s items", order_id, items)
    return {"order": order_id, "items": items}, 201
