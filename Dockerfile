# syntax=docker/dockerfile:1
# One image for the worker, Flower and one-off commands:
#   docker run IMAGE                        -> webhook-step-worker worker
#   docker run IMAGE check-config           -> any sub-command of webhook-step-worker
#   docker run --entrypoint celery IMAGE -A worker.app flower
#
# The base image is pinned by its exact tag. To pin the digest as well, look it up
# with 'docker buildx imagetools inspect python:3.11.14-slim-bookworm' and build with
# --build-arg PYTHON_IMAGE=python:3.11.14-slim-bookworm@sha256:<digest>.
ARG PYTHON_IMAGE=python:3.11.14-slim-bookworm

# Build stage: a virtual environment with the pinned dependencies and the project.
FROM ${PYTHON_IMAGE} AS build

# pip compiles every module to bytecode at install time, so a read-only root file
# system at run time costs no start-up time.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependencies first, so a change in the code reuses this layer.
COPY requirements.lock ./
RUN pip install --require-hashes --no-deps -r requirements.lock

COPY pyproject.toml README.md ./
COPY worker ./worker
# The lock already holds every dependency; --no-deps keeps pip from adding others.
# pip itself is not needed at run time, so it leaves the environment last.
RUN pip install --no-deps . \
    && pip check \
    && pip uninstall --yes pip

# Runtime stage: the virtual environment on a clean base, without pip or compilers.
FROM ${PYTHON_IMAGE} AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    WEBHOOK_WORKER_CONFIG_DIR=/etc/webhook-step-worker/tenants \
    WEBHOOK_WORKER_HEALTH_FILE=/tmp/webhook-step-worker.health \
    WEBHOOK_WORKER_LOG_FORMAT=json

# A fixed numeric id, so Kubernetes' runAsNonRoot can verify it without /etc/passwd.
RUN groupadd --system --gid 10001 worker \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin worker \
    && mkdir -p /etc/webhook-step-worker/tenants

COPY --from=build /opt/venv /opt/venv

USER 10001:10001
WORKDIR /app

# 9808: Prometheus metrics of the worker; 5555: Flower, when the image runs Flower.
EXPOSE 9808 5555

# Liveness: exits 0 while this container's worker pinged its broker within
# WEBHOOK_WORKER_HEALTH_MAX_AGE_S. Containers that run Flower or a one-off command
# must override or disable it (deploy/docker-compose.yml does).
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["webhook-step-worker", "health"]

# SIGTERM starts Celery's warm shutdown: running calls finish (at most the longest
# connector timeout, 120 s), so give the container a longer stop grace period.
STOPSIGNAL SIGTERM
ENTRYPOINT ["webhook-step-worker"]
CMD ["worker"]
