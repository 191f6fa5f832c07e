"""Prometheus metrics of the worker: metric objects, counting hooks, the server.

prometheus_client decides where metric values live when it is first imported:
in the memory of one process, or in files under ``PROMETHEUS_MULTIPROC_DIR``
that every process of a prefork pool writes and the main process sums when
Prometheus scrapes it. Celery imports the task modules before its
``worker_init`` signal, so this module imports prometheus_client only inside
functions. ``prepare_multiprocess`` sets the folder in the main process before
the pool forks, and makes prometheus_client choose again when another package
imported it first (Celery's command line loads Flower's plugin, which does).
``start_metrics_server`` serves ``/metrics`` from the main process. A process
that calls neither (``run-step``, unit tests) counts in memory and serves
nothing.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from worker.errors import (
    BlockedAddress,
    InvalidResponseBody,
    WebhookError,
    WebhookRedirected,
    WebhookTimeout,
)
from worker.results import ActionStatus

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    from worker.metrics_server import MetricsServer
    from worker.settings import WorkerSettings
    from worker.tenants import ConnectorSettings

log = structlog.get_logger(__name__)

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The connector label of steps that call their inline Host: a URL as a label
# value would leak into dashboards and give every URL its own time series.
INLINE_CONNECTOR = "inline"
CALL_OUTCOMES = (
    "ok",
    "timeout",
    "unavailable",
    "rejected",
    "redirected",
    "invalid_body",
    "blocked",
)
# Seconds: from a loopback response in a few milliseconds up to the largest
# connector TimeOut of 120 s.
CALL_DURATION_BUCKETS_S = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
# The dead-letter kinds that docs/reliability.md lists. They start at 0, so
# rate() works from the first scrape. A kind missing here is still counted.
DEAD_LETTER_KINDS = (
    "not_decodable",
    "unknown_message",
    "unknown_task",
    "invalid_task",
    "no_job_id",
    "bad_arguments",
    "too_large",
    "unexpected_error",
)


@dataclass(frozen=True)
class StepMetrics:
    """The worker's counters and histogram, and the registry of this process."""

    registry: CollectorRegistry
    calls: Counter
    call_duration: Histogram
    retries: Counter
    results: Counter
    dead_letters: Counter
    circuit_open: Counter
    throttled: Counter


_lock = threading.Lock()
_metrics: StepMetrics | None = None
_server: MetricsServer | None = None
# A folder that prepare_multiprocess created and stop_metrics_server removes.
_temporary_dir: Path | None = None
_record_failures = 0


def step_metrics() -> StepMetrics:
    """Return this process's metric objects, creating them on first use."""
    global _metrics
    current = _metrics
    if current is not None:
        return current
    with _lock:
        if _metrics is None:
            _metrics = _create_metrics()
        return _metrics


def _create_metrics() -> StepMetrics:
    from prometheus_client import CollectorRegistry, Counter, Histogram

    registry = CollectorRegistry()
    metrics = StepMetrics(
        registry=registry,
        calls=Counter(
            "webhook_step_calls_total",
            "Webhook calls (HTTP attempts) by connector and outcome.",
            ["connector", "outcome"],
            registry=registry,
        ),
        call_duration=Histogram(
            "webhook_step_call_duration_seconds",
            "Duration of one webhook call: building the request, the HTTP "
            "exchange and reading the answer.",
            ["connector"],
            buckets=CALL_DURATION_BUCKETS_S,
            registry=registry,
        ),
        retries=Counter(
            "webhook_step_retries_total",
            "Retries scheduled after a failed webhook call, by connector.",
            ["connector"],
            registry=registry,
        ),
        results=Counter(
            "webhook_step_results_total",
            "Results published to the result stream, by ActionStatus; a "
            "redelivered job whose result exists is not counted again.",
            ["action_status"],
            registry=registry,
        ),
        dead_letters=Counter(
            "webhook_step_dead_letters_total",
            "Messages written to the dead-letter stream, by kind.",
            ["kind"],
            registry=registry,
        ),
        circuit_open=Counter(
            "webhook_step_circuit_open_total",
            "Attempts that failed without a request because the connector's "
            "circuit breaker was open or half-open, by connector.",
            ["connector"],
            registry=registry,
        ),
        throttled=Counter(
            "webhook_step_throttled_total",
            "Jobs rescheduled without a request because a connector limit was "
            "reached, by connector and limit (rate or concurrency).",
            ["connector", "limit"],
            registry=registry,
        ),
    )
    for status in ActionStatus:
        metrics.results.labels(action_status=str(status))
    for kind in DEAD_LETTER_KINDS:
        metrics.dead_letters.labels(kind=kind)
    return metrics


def connector_label(connector: ConnectorSettings | None) -> str:
    """Return the ``connector`` label: the ConnectorId or Name, or "inline"."""
    return connector.label if connector is not None else INLINE_CONNECTOR


def call_outcome(error: WebhookError | None) -> str:
    """Return the ``outcome`` label of a call that failed with ``error``, or "ok"."""
    if error is None:
        return "ok"
    if isinstance(error, BlockedAddress):
        return "blocked"
    if isinstance(error, InvalidResponseBody):
        return "invalid_body"
    if isinstance(error, WebhookTimeout):
        return "timeout"
    if isinstance(error, WebhookRedirected):
        return "redirected"
    # WebhookUnavailable is retryable, and WebhookRejected is final.
    return "unavailable" if error.retryable else "rejected"


def record_attempt(
    connector: ConnectorSettings | None, outcome: object, duration_s: float
) -> None:
    """Count one webhook call and observe its duration.

    ``outcome`` is what ``StepRunner._attempt`` returned: a WebhookError when
    the call failed, anything else when it succeeded.
    """
    error = outcome if isinstance(outcome, WebhookError) else None
    label = connector_label(connector)

    def update(metrics: StepMetrics) -> None:
        metrics.calls.labels(connector=label, outcome=call_outcome(error)).inc()
        metrics.call_duration.labels(connector=label).observe(duration_s)

    _record(update)


def record_retry(connector: ConnectorSettings | None) -> None:
    label = connector_label(connector)
    _record(lambda metrics: metrics.retries.labels(connector=label).inc())


def record_circuit_open(connector: ConnectorSettings | None) -> None:
    label = connector_label(connector)
    _record(lambda metrics: metrics.circuit_open.labels(connector=label).inc())


def record_throttled(connector: ConnectorSettings | None, limit: str) -> None:
    """Count one job that MaxRequestsPerSecond or MaxConcurrentRequests stopped."""
    label = connector_label(connector)
    _record(
        lambda metrics: metrics.throttled.labels(connector=label, limit=limit).inc()
    )


def record_result(action_status: str) -> None:
    """Count one result that this delivery published."""
    _record(lambda metrics: metrics.results.labels(action_status=action_status).inc())


def record_dead_letter(kind: str) -> None:
    _record(lambda metrics: metrics.dead_letters.labels(kind=kind).inc())


def _record(update: Callable[[StepMetrics], None]) -> None:
    """Apply ``update`` to the metrics, logging instead of raising on failure.

    A metric that cannot be written, for example because the metrics folder's
    disk is full, must not fail the job that is being counted.
    """
    global _record_failures
    try:
        update(step_metrics())
    except Exception as error:
        with _lock:
            _record_failures += 1
            failures = _record_failures
        # Log the first failure and every 1000th, so a broken folder cannot
        # flood the log.
        if failures == 1 or failures % 1000 == 0:
            log.error(
                "metrics.record_failed",
                error=f"{type(error).__name__}: {error}",
                failures=failures,
                action="the job goes on; check WEBHOOK_WORKER_METRICS_DIR",
            )


def prepare_multiprocess(directory: Path | None) -> Path:
    """Switch metric values to files that all pool processes share; return the folder.

    Call it in the worker's main process before the pool forks. ``directory``
    is created if needed and emptied of the metric files of an earlier run,
    because prometheus_client would add their counts to this run's. None
    creates a temporary folder, which ``stop_metrics_server`` removes.
    """
    global _temporary_dir
    if _metrics is not None and MULTIPROCESS_ENV not in os.environ:
        log.warning(
            "metrics.multiprocess_unavailable",
            detail="the metrics were created before the metrics folder was set, "
            "so calls counted in prefork pool processes are not served",
        )
    if directory is None:
        path = Path(tempfile.mkdtemp(prefix="webhook-step-worker-metrics-"))
        _temporary_dir = path
    else:
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob("*.db"):
            stale.unlink()
        path = directory
    os.environ[MULTIPROCESS_ENV] = str(path)
    if "prometheus_client" in sys.modules:
        # Celery's command line loads the plugins of installed packages, and
        # Flower's imports prometheus_client before the worker runs any code
        # of this project. prometheus_client chose in-memory values at that
        # import, so choose again for the metrics created from now on.
        # NOTE: values.ValueClass and get_value_class are not documented API of
        # prometheus_client; checked with 0.26.
        from prometheus_client import values

        values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    # Create the metrics now, so the labels that start at 0 are in the files
    # before the first job.
    step_metrics()
    return path


def start_metrics_server(settings: WorkerSettings) -> None:
    """Serve ``/metrics`` from this process on METRICS_HOST:METRICS_PORT.

    Call it in the worker's main process, after ``prepare_multiprocess``. Does
    nothing when the port is 0 or the server runs already. A port that cannot
    be bound is logged as an error, and the worker goes on without metrics.
    """
    global _server
    if settings.metrics_port == 0:
        return
    directory = os.environ.get(MULTIPROCESS_ENV)
    if directory is None:
        directory = str(prepare_multiprocess(settings.metrics_dir))
    with _lock:
        if _server is not None:
            return
        from worker.metrics_server import MetricsServer

        try:
            _server = MetricsServer.start(settings, Path(directory))
        except OSError as error:
            log.error(
                "metrics.server_failed",
                host=settings.metrics_host,
                port=settings.metrics_port,
                error=str(error),
                action="the worker runs without a metrics endpoint; free the port "
                "or set WEBHOOK_WORKER_METRICS_PORT",
            )
            return
    log.info(
        "metrics.serving",
        host=settings.metrics_host,
        port=settings.metrics_port,
        multiprocess_dir=directory,
    )


def stop_metrics_server() -> None:
    """Stop the server and remove the temporary metrics folder, once."""
    global _server, _temporary_dir
    with _lock:
        server, _server = _server, None
        folder, _temporary_dir = _temporary_dir, None
    if server is not None:
        server.stop()
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
