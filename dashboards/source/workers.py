"""Sightline / Workers: background tasks (Celery, RQ, ``sightline.task``): throughput,
failures, duration and wait, the queues' backlog and how busy the workers are.

Task rates, failure ratios, queue depth and utilisation render the PromQL of
``sightline_appliance.queries``, like the terminal view of ``sightline demo``.
"""

from __future__ import annotations

from sightline_appliance import queries as q

from .panels import (
    BACKLOG,
    DRAIN,
    NEUTRAL,
    OLDEST,
    ORANGE,
    QUEUE,
    RED,
    SERVICE,
    TASK_FAILURES,
    UTILISATION,
    WAIT,
    Grid,
    Json,
    W,
    by_regex,
    dashboard,
    histogram_quantile,
    prom,
    service_variable,
    stat,
    timeseries,
    utilisation,
    variable,
    variant,
)


def workers() -> Json:
    grid = Grid()
    by_task = ("job", "task_name")
    grid.row("Now")
    grid.add(
        6,
        4,
        stat(
            "Tasks",
            "Tasks finished per second, whatever their outcome.",
            [prom(variant(q.TASK_RATE, by=("job",)).render(QUEUE), "{{job}}")],
            q.TASK_RATE.unit,
            NEUTRAL,
        ),
        stat(
            "Failed",
            "Share of finished tasks that raised.",
            [prom(variant(q.TASK_FAILURE_RATIO, by=("job",)).render(QUEUE), "{{job}}")],
            q.TASK_FAILURE_RATIO.unit,
            TASK_FAILURES,
        ),
        stat(
            "Backlog",
            "Messages waiting in the selected queues.",
            [prom(variant(q.QUEUE_DEPTH, by=("job",)).render(QUEUE), "{{job}}")],
            q.QUEUE_DEPTH.unit,
            BACKLOG,
        ),
        stat(
            "Task slots in use",
            "Task-seconds run over the task-slot seconds the workers offered.",
            [prom(q.WORKER_UTILISATION.render(SERVICE), "{{job}}")],
            q.WORKER_UTILISATION.unit,
            UTILISATION,
        ),
    )

    grid.row("Tasks")
    grid.add(
        12,
        9,
        timeseries(
            "Task rate by task and outcome",
            "Tasks finished per second by task name and outcome (success, failure, retry, "
            "revoked, rejected).",
            [
                prom(
                    variant(q.TASK_RATE, by=("job", "task_name", "task_outcome")).render(QUEUE),
                    "{{job}} {{task_name}} {{task_outcome}}",
                )
            ],
            q.TASK_RATE.unit,
            stack=True,
            overrides=[
                by_regex(".* failure", color={"fixedColor": RED, "mode": "fixed"}),
                by_regex(".* retry", color={"fixedColor": ORANGE, "mode": "fixed"}),
            ],
        ),
        timeseries(
            "Failure ratio",
            "Share of each task's runs that raised; 0 when none did.",
            [
                prom(
                    variant(q.TASK_FAILURE_RATIO, by=by_task).render(QUEUE), "{{job}} {{task_name}}"
                )
            ],
            q.TASK_FAILURE_RATIO.unit,
            steps=TASK_FAILURES,
        ),
        timeseries(
            "Duration p95",
            "95th percentile of how long each task ran, from start to outcome.",
            [
                prom(
                    histogram_quantile(
                        "0.95", "worker_task_duration_seconds", QUEUE, "job, task_name"
                    ),
                    "{{job}} {{task_name}}",
                )
            ],
            "s",
        ),
        timeseries(
            "Wait p95",
            "95th percentile of how long tasks waited between being published and starting "
            "(tasks from instrumented producers).",
            [prom(q.QUEUE_WAIT_P95.render(QUEUE), "{{job}} {{task_queue}}")],
            q.QUEUE_WAIT_P95.unit,
            steps=WAIT,
        ),
    )

    grid.row("Queues and workers")
    grid.add(
        8,
        8,
        timeseries(
            "Queue depth",
            "Messages waiting in each queue the workers consume, read every few seconds "
            "from the broker.",
            [prom(q.QUEUE_DEPTH.render(QUEUE), "{{job}} {{task_queue}}")],
            q.QUEUE_DEPTH.unit,
        ),
        timeseries(
            "Oldest message age",
            "Age of the oldest waiting message of each queue: how late the next task "
            "already is (Redis and RQ).",
            [
                prom(
                    f"max by (job, task_queue) (worker_queue_oldest_age_seconds{{{QUEUE}}})",
                    "{{job}} {{task_queue}}",
                )
            ],
            "s",
            steps=OLDEST,
        ),
        timeseries(
            "Drain time estimate",
            "Seconds the workers need to work through each queue's backlog at the pace "
            "they finished tasks over the last 5 minutes; empty while they finish none.",
            [
                prom(
                    f"job_task_queue:worker_queue_drain_seconds:estimate5m{{{QUEUE}}}",
                    "{{job}} {{task_queue}}",
                )
            ],
            "s",
            steps=DRAIN,
        ),
    )
    grid.add(
        8,
        8,
        utilisation(
            "Busy ÷ capacity",
            "Task-seconds run over the task-slot seconds the workers offered (their "
            "concurrency over time); near 1 with a growing backlog, add workers.",
            [prom(q.WORKER_UTILISATION.render(SERVICE), "{{job}}")],
            q.WORKER_UTILISATION.unit,
        ),
        timeseries(
            "Published rate",
            "Tasks sent to the broker per second by instrumented producers (the web app's "
            "job, or a worker retrying), by queue and task.",
            [
                prom(
                    "sum by (job, task_queue, task_name) (rate(worker_tasks_published_total"
                    f'{{task_queue=~"$queue"}}[{W}]))',
                    "{{task_name}} from {{job}}",
                )
            ],
            "ops",
            stack=True,
        ),
        timeseries(
            "RQ registries",
            "Jobs in each RQ queue's started (running now) and failed (kept for inspection) "
            "registries.",
            [
                prom(
                    f"max by (job, task_queue, registry) (worker_queue_registry_jobs{{{QUEUE}}})",
                    "{{job}} {{task_queue}} {{registry}}",
                )
            ],
            "short",
        ),
    )
    return dashboard(
        "sightline-workers",
        "Workers",
        "Background tasks (Celery, RQ, custom loops): throughput, failures, latency, "
        "backlog and how busy the workers are.",
        grid,
        [
            service_variable("worker_task_duration_seconds_count"),
            variable(
                "queue",
                "Queue",
                'label_values(worker_task_duration_seconds_count{job=~"$service"}, task_queue)',
                "The queues the selected workers consume.",
            ),
        ],
    )
