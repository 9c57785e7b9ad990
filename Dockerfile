# The demo image: the Sightline agent with the appliance's demo shop, its Celery worker
# and the load generator. compose/docker-compose.yml builds it once as
# sightline-demo:local and runs it three times with different commands.
FROM python:3.12.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY agent ./agent
# The appliance carries the stack's files through links to these directories.
COPY appliance ./appliance
COPY alerts ./alerts
COPY collector ./collector
COPY compose ./compose
COPY dashboards ./dashboards
RUN pip install . ./appliance \
    && useradd --create-home --uid 10001 --shell /usr/sbin/nologin sightline

USER sightline
WORKDIR /home/sightline

# 8000: the shop (gunicorn); 9464: the agent's /metrics.
EXPOSE 8000 9464
CMD ["sightline", "run", "--", "gunicorn", "--bind", "0.0.0.0:8000", "sightline_appliance.demo.shop:app"]
