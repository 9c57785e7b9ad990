"""One HTTP request that enqueues a Celery task and an RQ job: one trace end to end."""

from __future__ import annotations

from pathlib import Path

import pytest
import sightline
from prometheus_client import CollectorRegistry

from .helpers import call_wsgi, free_port
from .receivers import Backend
from .servers import celery_worker, rq_worker

celery = pytest.importorskip("celery")
rq = pytest.importorskip("rq")
redis_client = pytest.importorskip("redis")
flask = pytest.importorskip("flask")


def test_request_task_and_job_share_one_trace(
    broker: str, backend: Backend, tmp_path: Path, registry: CollectorRegistry
) -> None:
    """The request span, both producer spans, the Celery task's and the RQ job's spans
    carry one trace id; the log lines the task and the job write carry it too."""
    sightline.init(service="web", registry=registry, metrics_addr="off", otlp_endpoint=backend.url)
    tasks = celery.Celery("web", broker=broker)
    tasks.conf.task_default_queue = "work"
    jobs = rq.Queue("work", connection=redis_client.Redis.from_url(broker))
    web = flask.Flask("web")

    @web.route("/checkout")
    def checkout() -> str:
        tasks.send_task("tasks.add", args=(1, 2))
        jobs.enqueue("tests.apps.rq_jobs.add", 3, 4)
        return "queued"

    status, _ = call_wsgi(web, "/checkout")
    assert status.startswith("200")

    def env(**extra: str) -> dict[str, str]:
        return {
            "BROKER_URL": broker,
            "SIGHTLINE_METRICS_ADDR": f"127.0.0.1:{free_port()}",
            "OTEL_EXPORTER_OTLP_ENDPOINT": backend.url,
            "OTEL_BSP_SCHEDULE_DELAY": "200",
            "SIGHTLINE_LOKI_URL": backend.url,
            "TMPDIR": str(tmp_path),
            **extra,
        }

    def logged(line: str) -> bool:
        return any(line in entry[2] for entry in backend.log_entries())

    with (
        celery_worker(env(), tmp_path / "celery.log"),
        rq_worker(env(SIGHTLINE_SERVICE="jobs"), broker, tmp_path / "rq.log"),
    ):
        assert backend.wait_for(lambda: logged("adding 1 and 2"), timeout=60)
        assert backend.wait_for(lambda: logged("adding 3 and 4"), timeout=60)
        names = ("process tasks.add", "process tests.apps.rq_jobs.add")
        assert backend.wait_for(
            lambda: set(names) <= {s.name for _, s in backend.spans()}, timeout=30
        )
    sightline.shutdown()
    spans = {s.name: s for _, s in backend.spans()}
    request = spans["GET /checkout"]
    chain = [
        spans["publish tasks.add"],
        spans["process tasks.add"],
        spans["publish tests.apps.rq_jobs.add"],
        spans["process tests.apps.rq_jobs.add"],
    ]
    assert {span.trace_id for span in chain} == {request.trace_id}
    for line in ("adding 1 and 2", "adding 3 and 4"):
        [entry] = [e for e in backend.log_entries() if line in e[2]]
        assert entry[3]["trace_id"] == request.trace_id.hex()
