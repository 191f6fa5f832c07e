"""The Celery application: ``celery -A worker.app worker`` starts a worker."""

from __future__ import annotations

import sys
from typing import Any

import structlog
from celery import Celery, signals

from worker import jsontext, metrics
from worker.broker_transport import note_pool, transport_for
from worker.celery_output import install_log_filters
from worker.health import HealthBeat
from worker.logs import configure_logging
from worker.redis_client import broker_options
from worker.secrets import register_secrets
from worker.settings import get_settings

TASK_NAME = "webhook_step.execute"

log = structlog.get_logger(__name__)

jsontext.register_kombu_codec()
# Celery logs each task's return value, the whole order, and one line per
# reconnection attempt; the filters log a summary and one line per outage.
install_log_filters()
_settings = get_settings()
if _settings.sentinel_password is not None:
    # Registered so that log redaction replaces it, for example inside a Redis
    # error message.
    register_secrets([_settings.sentinel_password.get_secret_value()])

app = Celery(
    "webhook_step_worker", broker=_settings.broker_url, include=["worker.tasks"]
)
app.conf.update(
    # kombu's Redis transport, except that a message fetched during a broker
    # outage is kept instead of dropped; see worker/broker_transport.py.
    broker_transport=transport_for(_settings.broker_url),
    # JSON only: pickle would let a queue writer run code in the worker.
    task_serializer="json",
    result_serializer="json",
    event_serializer="json",
    accept_content=["json"],
    # Results live in the result stream, not in celery-task-meta-* keys.
    task_ignore_result=True,
    # At-least-once delivery: a job is acknowledged only after its result is
    # published (or a retry is queued), and a killed worker's jobs come back.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    # The task turns every error into a result, a retry or a requeue, so a task
    # failure means a bug. Its message must not be acknowledged as if it had run.
    task_acks_on_failure_or_timeout=False,
    # Reserve one message per thread, so idle workers get the next jobs.
    worker_prefetch_multiplier=1,
    worker_cancel_long_running_tasks_on_connection_loss=True,
    # Jobs waiting on a countdown are held in the worker's memory; at this many
    # the worker fetches nothing more until some are due.
    worker_eta_task_limit=_settings.eta_task_limit,
    # Reconnect to the broker for as long as it takes; the default gives up
    # after 100 attempts and stops the worker.
    broker_connection_retry_on_startup=True,
    broker_connection_max_retries=None,
    # A retry or save-delay message is published while the job's own message
    # is still held. Keep trying for about 15 s, long enough for a Sentinel
    # failover: after a failover the held message may be gone from the new
    # master, and the published copy is then the only one left.
    task_publish_retry=True,
    task_publish_retry_policy={
        "max_retries": 10,
        "interval_start": 0.5,
        "interval_step": 0.5,
        "interval_max": 2.0,
    },
    worker_consumer="worker.poison:DeadLetterConsumer",
    broker_transport_options={
        "visibility_timeout": _settings.visibility_timeout_s,
        # Look for unacknowledged messages past the visibility timeout every
        # 10 s; kombu 5.7's default looks only every tenth interval.
        "unacked_restore_interval": 10,
        "unacked_restore_throttle": 1,
    },
    task_default_queue=_settings.queue,
    task_routes={TASK_NAME: {"queue": _settings.queue}},
    worker_pool=_settings.pool,
    worker_concurrency=_settings.concurrency,
    worker_hijack_root_logger=False,
    # Task events let Flower show jobs; arguments appear only as a redacted summary.
    worker_send_task_events=_settings.task_events,
    task_send_sent_event=_settings.task_events,
)
# Sentinel's master name and TLS for sentinel:// and rediss:// broker URLs.
_redis_options = broker_options(_settings)
app.conf.broker_transport_options.update(_redis_options.pop("broker_transport_options"))
app.conf.update(_redis_options)
# Writes the health file that 'webhook-step-worker health' reads.
app.steps["consumer"].add(HealthBeat)


@signals.setup_logging.connect
def _setup_logging(**_kwargs: Any) -> None:
    configure_logging(_settings.log_format, _settings.log_level)


@signals.worker_init.connect
def _check_before_start(**_kwargs: Any) -> None:
    from worker.startup import startup_problems

    # worker_init fires before Celery's setup_logging, so configure here too.
    configure_logging(_settings.log_format, _settings.log_level)
    problems = startup_problems(_settings)
    if problems:
        for problem in problems:
            log.error("worker.config_invalid", error=problem)
        log.error("worker.not_started", reason="fix the settings above and start again")
        sys.exit(2)
    if _settings.metrics_port:
        # This runs before the prefork pool forks, so its processes write
        # their metrics to files that the main process reads.
        metrics.prepare_multiprocess(_settings.metrics_dir)
    log.info(
        "worker.ready",
        queue=_settings.queue,
        config_dir=str(_settings.config_dir),
        result_stream=_settings.result_stream,
    )


@signals.worker_ready.connect
def _start_metrics_server(**_kwargs: Any) -> None:
    # worker_ready is sent in the main process only, never in pool processes.
    metrics.start_metrics_server(_settings)


@signals.worker_ready.connect
def _note_pool(sender: Any = None, **_kwargs: Any) -> None:
    # The sender is the consumer, whose pool attribute is the worker's pool.
    note_pool(getattr(sender, "pool", None))


@signals.worker_shutdown.connect
def _stop_metrics_server(**_kwargs: Any) -> None:
    metrics.stop_metrics_server()
