"""The per-process objects a worker needs, built once from the settings."""

from __future__ import annotations

import os
import threading

from worker.redis_client import redis_from_url
from worker.settings import WorkerSettings, get_settings
from worker.step import StepRunner
from worker.store import ResultStore
from worker.tenants import TenantStore
from worker.webhook import WebhookClient

_lock = threading.Lock()
_runner: tuple[int, StepRunner] | None = None


def result_store(settings: WorkerSettings) -> ResultStore:
    client = redis_from_url(settings.results_redis_url, settings)
    return ResultStore(
        client,
        key_prefix=settings.key_prefix,
        result_stream=settings.result_stream,
        dead_letter_stream=settings.dead_letter_stream,
        result_ttl_s=settings.result_ttl_s,
        stream_maxlen=settings.result_stream_maxlen,
        wait_replicas=settings.result_wait_replicas,
        wait_timeout_ms=settings.result_wait_timeout_ms,
    )


def build_runner(settings: WorkerSettings, *, with_redis: bool = True) -> StepRunner:
    return StepRunner(
        tenants=TenantStore(settings.config_dir),
        client=WebhookClient(
            policy=settings.address_policy(),
            proxy_url=settings.proxy_url,
            ca_bundle=str(settings.ca_bundle) if settings.ca_bundle else None,
            max_header_bytes=settings.max_response_header_bytes,
            max_response_bytes=settings.max_response_bytes,
            pool_size=settings.http_pool_size,
        ),
        store=result_store(settings) if with_redis else None,
        max_deliveries=settings.max_deliveries,
        max_job_bytes=settings.max_job_bytes,
        max_retry_delay_s=settings.max_retry_delay_s,
    )


def get_runner() -> StepRunner:
    """Return this process's runner; a forked pool process builds its own."""
    global _runner
    current = _runner
    if current is not None and current[0] == os.getpid():
        return current[1]
    with _lock:
        if _runner is None or _runner[0] != os.getpid():
            _runner = (os.getpid(), build_runner(get_settings()))
        return _runner[1]
