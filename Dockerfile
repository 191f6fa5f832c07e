# The worker image: one Celery worker process per container; scale with replicas.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    WEBHOOK_WORKER_CONFIG_DIR=/etc/webhook-step-worker/tenants \
    WEBHOOK_WORKER_LOG_FORMAT=json

WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker ./worker
RUN pip install . && useradd --system --uid 10001 worker \
    && mkdir -p /etc/webhook-step-worker/tenants

USER worker
# Celery's warm shutdown on SIGTERM lets running jobs finish.
STOPSIGNAL SIGTERM
ENTRYPOINT ["webhook-step-worker"]
CMD ["worker"]
