"""Checks before a worker consumes: tenant settings and the visibility timeout."""

from __future__ import annotations

from worker.errors import ConfigError
from worker.redis_client import is_sentinel_url, parse_sentinel_url
from worker.settings import ENV_PREFIX, WorkerSettings
from worker.step import SAVE_DELAY_S
from worker.tenants import TenantStore

# Room for a full thread pool, broker round trips and publishing the result.
SAFETY_MARGIN_S = 15.0


def worst_case_message_s(timeout_s: float, max_retry_delay_s: float) -> float:
    """Return the longest one task message can stay unacknowledged.

    Each retry and the save delay are new messages, so one message waits at
    most one countdown (held by the worker) and then makes one call.
    """
    return max(max_retry_delay_s, SAVE_DELAY_S) + timeout_s + SAFETY_MARGIN_S


def startup_problems(settings: WorkerSettings) -> list[str]:
    """Return what stops a worker from starting safely; empty when all is well."""
    store = TenantStore(settings.config_dir)
    problems = [str(error) for error in store.load_all()]

    timeouts = [30.0]  # inline steps use the default timeout
    for path in (
        sorted(settings.config_dir.glob("*.json"))
        if settings.config_dir.is_dir()
        else []
    ):
        try:
            tenant = store.get(path.stem)
        except Exception:  # already reported by load_all
            continue
        if tenant is not None:
            timeouts += [c.timeout.total_seconds() for c in tenant.settings.connectors]
    for name, url in (
        ("BROKER_URL", settings.broker_url),
        ("REDIS_URL", settings.redis_url),
    ):
        if url is not None and is_sentinel_url(url):
            try:
                parse_sentinel_url(url)
            except ConfigError as error:
                problems.append(f"{ENV_PREFIX}{name}: {error}")
    worst_s = worst_case_message_s(max(timeouts), settings.max_retry_delay_s)
    if worst_s >= settings.visibility_timeout_s:
        problems.append(
            f"WEBHOOK_WORKER_VISIBILITY_TIMEOUT_S={settings.visibility_timeout_s} "
            f"is too short: a job message with the longest connector timeout "
            f"({max(timeouts):g} s) can stay unacknowledged for {worst_s:g} s, and "
            f"Redis would hand it to a second worker; set it above {worst_s:g}"
        )
    return problems
