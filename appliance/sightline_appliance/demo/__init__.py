"""The demo workload: a small shop to watch Sightline work.

- ``shop``: a Flask API (run it under gunicorn with several workers) with path
  parameters, a slow search, a small error rate and a checkout that enqueues Celery tasks;
- ``tasks``: the Celery app those tasks run in;
- ``load``: a load generator with a steady baseline and periodic bursts past capacity;
- ``run``: ``sightline demo``, which starts all of it on the native stack and shows the
  golden signals in the terminal (``view``).

Compose runs the same modules as services (see ``compose/docker-compose.yml``).
"""
