"""The worker's ``/metrics`` endpoint and the gauges it reads at scrape time.

``worker.metrics.start_metrics_server`` imports this module after
``prepare_multiprocess`` has set the metrics folder. The server runs in the
worker's main process, which also runs Celery's consumer, so the countdown
gauge counts every job that the worker keeps on a countdown.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from wsgiref.simple_server import WSGIServer

import redis
import structlog
from celery.worker import state as worker_state
from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from worker.redis_client import redis_from_url
from worker.settings import WorkerSettings

log = structlog.get_logger(__name__)

# kombu's Redis transport keeps a message of priority p > 0 in the list
# "<queue>\x06\x16<p>", p one of the priority steps 3, 6 and 9 (kombu 5.7,
# kombu/transport/redis.py, PRIORITY_STEPS and Channel.sep).
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)
REDIS_TIMEOUT_S = 2.0


def countdown_jobs() -> int | None:
    """Count the jobs that Celery's consumer in this process keeps until their ETA.

    Returns None on a Celery without ``scheduled_requests``: 5.7 has it, 5.4
    does not.
    """
    # Celery 5.7 adds a request to scheduled_requests when it sets a timer for
    # its ETA, and removes it when the timer hands the request to the pool.
    scheduled = getattr(worker_state, "scheduled_requests", None)
    return None if scheduled is None else len(scheduled)


class WorkerStateCollector(Collector):
    """Gauges read when Prometheus scrapes: queue length and jobs on a countdown."""

    def __init__(self, settings: WorkerSettings) -> None:
        self.client = redis_from_url(
            settings.broker_url,
            settings,
            socket_timeout=REDIS_TIMEOUT_S,
            socket_connect_timeout=REDIS_TIMEOUT_S,
        )
        queue = settings.queue
        self.keys = [
            queue,
            *(f"{queue}{_PRIORITY_SEPARATOR}{step}" for step in _PRIORITY_STEPS),
        ]
        self._failing = False
        if countdown_jobs() is None:
            log.warning(
                "metrics.countdown_unavailable",
                detail="this Celery version keeps no list of scheduled requests, "
                "so webhook_step_jobs_waiting_countdown is left out; Celery 5.7 "
                "has it",
            )

    def collect(self) -> Iterator[Metric]:
        waiting = countdown_jobs()
        if waiting is not None:
            yield GaugeMetricFamily(
                "webhook_step_jobs_waiting_countdown",
                "Jobs this worker keeps unacknowledged until their countdown is "
                "due: the one-second save delay and retries.",
                value=waiting,
            )
        length = self._queue_length()
        if length is not None:
            yield GaugeMetricFamily(
                "webhook_step_queue_length",
                "Messages waiting in Redis on the worker's queue that no worker "
                "has taken yet.",
                value=length,
            )

    def _queue_length(self) -> int | None:
        pipe = self.client.pipeline(transaction=False)
        for key in self.keys:
            pipe.llen(key)
        try:
            lengths = pipe.execute()
        except redis.RedisError as error:
            # Log one line per outage, because Prometheus may scrape every few
            # seconds.
            if not self._failing:
                log.warning(
                    "metrics.queue_length_failed",
                    error=str(error),
                    detail="webhook_step_queue_length is left out until Redis "
                    "answers again",
                )
            self._failing = True
            return None
        if self._failing:
            log.info("metrics.queue_length_restored")
        self._failing = False
        return sum(int(length) for length in lengths)


@dataclass
class MetricsServer:
    """prometheus_client's HTTP server thread, serving the summed metric files."""

    httpd: WSGIServer
    thread: threading.Thread

    @classmethod
    def start(cls, settings: WorkerSettings, multiprocess_dir: Path) -> MetricsServer:
        """Start serving on METRICS_HOST:METRICS_PORT.

        Raises:
            OSError: the address or port cannot be bound.
        """
        registry = CollectorRegistry()
        # prometheus_client 0.26 leaves this constructor without type hints.
        MultiProcessCollector(registry, path=str(multiprocess_dir))  # type: ignore[no-untyped-call]
        registry.register(WorkerStateCollector(settings))
        # The process_* metrics describe the main process only, without the
        # prefork pool processes.
        ProcessCollector(registry=registry)
        httpd, thread = start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=registry
        )
        return cls(httpd, thread)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)
