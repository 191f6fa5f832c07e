"""Checks before a worker consumes: tenant settings and the visibility timeout."""

from __future__ import annotations

from worker.settings import WorkerSettings
from worker.step import MAX_ATTEMPTS, MAX_RETRY_DELAY_S, SAVE_DELAY_S
from worker.tenants import TenantStore

# Room for broker round trips and scheduling jitter on top of the computed worst case.
SAFETY_MARGIN_S = 60.0


def worst_case_job_s(timeout_s: float) -> float:
    """Return the longest one job can stay unfinished with this connector timeout."""
    retries = MAX_ATTEMPTS - 1
    return (
        timeout_s * MAX_ATTEMPTS
        + retries * MAX_RETRY_DELAY_S
        + SAVE_DELAY_S
        + SAFETY_MARGIN_S
    )


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
    worst_s = worst_case_job_s(max(timeouts))
    if worst_s >= settings.visibility_timeout_s:
        problems.append(
            f"WEBHOOK_WORKER_VISIBILITY_TIMEOUT_S={settings.visibility_timeout_s} "
            f"is too short: a job with the longest connector timeout "
            f"({max(timeouts):g} s) can take {worst_s:g} s, and Redis would hand "
            f"it to a second worker; set it above {worst_s:g}"
        )
    return problems
