"""The shop's background work: Celery tasks on two queues.

``orders`` gets inventory updates and invoices (a few per checkout, one slow report now and
then); ``emails`` gets receipts. The worker runs them with ``--concurrency 2``, so a burst
of checkouts outruns it and the queue backs up: queue depth, wait and drain show up on the
Workers dashboard. A small share of inventory updates fails, and a timeout is retried once.
"""

from __future__ import annotations

import logging
import os
import random
import time

import sightline
from celery import Celery
from kombu import Queue  # type: ignore[attr-defined]

sightline.init(service=os.environ.get("SIGHTLINE_SERVICE", "shop-worker"))

BROKER = os.environ.get("SIGHTLINE_DEMO_BROKER", "redis://127.0.0.1:6379/0")

app = Celery("shop", broker=BROKER)
if BROKER.startswith("filesystem://"):
    # Without Redis (`sightline demo` on a machine that has none), messages are files in
    # one shared directory: kombu's filesystem transport, fine for a demo's few per second.
    folder = os.environ.get("SIGHTLINE_DEMO_BROKER_DIR", "broker")
    os.makedirs(folder, exist_ok=True)
    app.conf.broker_transport_options = {
        "data_folder_in": folder,
        "data_folder_out": folder,
        "polling_interval": 0.1,
    }
app.conf.update(
    task_queues=(Queue("orders"), Queue("emails")),  # type: ignore[no-untyped-call]
    task_default_queue="orders",
    task_routes={"shop.send_receipt": {"queue": "emails"}},
    task_ignore_result=True,
    worker_prefetch_multiplier=1,  # waiting messages stay in the broker, where depth is read
    task_acks_late=True,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

log = logging.getLogger("shop.tasks")
log.setLevel(logging.INFO)


class InventoryTimeout(Exception):
    pass


@app.task(name="shop.update_inventory", bind=True, max_retries=1, default_retry_delay=1)
def update_inventory(self: object, order_id: int, items: int) -> None:
    time.sleep(random.uniform(0.05, 0.25) * items)
    roll = random.random()
    if roll < 0.03:
        log.error("inventory service rejected order %s", order_id)
        raise RuntimeError(f"inventory rejected order {order_id}")
    if roll < 0.06:
        log.warning("inventory timeout for order %s, retrying", order_id)
        raise update_inventory.retry(exc=InventoryTimeout(order_id))
    log.info("inventory updated for order %s (%s items)", order_id, items)


@app.task(name="shop.send_invoice")
def send_invoice(order_id: int) -> None:
    time.sleep(random.uniform(0.05, 0.15))
    log.info("invoice sent for order %s", order_id)


@app.task(name="shop.send_receipt")
def send_receipt(order_id: int, email: str) -> None:
    time.sleep(random.uniform(0.02, 0.08))
    log.info("receipt for order %s sent to %s", order_id, email)


@app.task(name="shop.daily_report")
def daily_report() -> None:
    time.sleep(random.uniform(1.0, 2.0))
    log.info("report built")
