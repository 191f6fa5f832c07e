"""The circuit breaker, rate limit and concurrency cap, against a private Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.redis_server import RedisServer
from tests.support.webhook_server import Reply, WebhookServer
from worker.errors import WebhookRejected, WebhookTimeout, WebhookUnavailable
from worker.protection import (
    Admission,
    CircuitOpen,
    ConnectorGuard,
    Throttled,
    breaker_key,
    counts_as_failure,
)
from worker.runtime import build_runner
from worker.settings import WorkerSettings
from worker.step import PROGRESS_KEY, Finished, Reschedule, StepRunner
from worker.tenants import ConnectorSettings, parse_tenant_file

PREFIX = "unit-protection"
TENANT = "acme"
URL = "http://127.0.0.1:9/hook"


def connector(**settings: Any) -> ConnectorSettings:
    return ConnectorSettings.model_validate(
        {"Name": "Webhook", "ConnectorId": "hook", "Host": URL, **settings}
    )


def unavailable() -> WebhookUnavailable:
    return WebhookUnavailable("503", url=URL, status=503)


@pytest.fixture
def guard(redis_client: redis.Redis) -> ConnectorGuard:
    return ConnectorGuard(redis_client, PREFIX)


def admit(guard: ConnectorGuard, hook: ConnectorSettings) -> Any:
    return guard.admit(TENANT, hook, timeout_s=5.0, max_retry_delay_s=60.0)


def call(
    guard: ConnectorGuard, hook: ConnectorSettings, error: Any = None
) -> Admission:
    admission = admit(guard, hook)
    assert isinstance(admission, Admission), admission
    guard.finish(admission, error, called=True)
    return admission


def breaker_state(client: redis.Redis) -> str | None:
    value = client.hget(breaker_key(PREFIX, TENANT, "hook"), "state")
    return value.decode() if isinstance(value, bytes) else None


BREAKER = {
    "FailureRatio": 0.5,
    "MinimumCalls": 4,
    "Window": 10,
    "CoolDown": 0.3,
    "TrialCalls": 2,
}


def test_settings_defaults_and_casing() -> None:
    hook = connector(circuitbreaker={}, maxRequestsPerSecond=2.5)

    assert hook.circuit_breaker is not None
    assert hook.circuit_breaker.failure_ratio == 0.5
    assert hook.circuit_breaker.minimum_calls == 20
    assert hook.circuit_breaker.window_s == 60
    assert hook.circuit_breaker.cool_down_s == 30
    assert hook.circuit_breaker.trial_calls == 3
    assert hook.max_requests_per_second == 2.5
    assert hook.max_concurrent_requests is None
    assert connector().circuit_breaker is None


@pytest.mark.parametrize(
    "settings",
    [
        {"CircuitBreaker": {"FailureRatio": 1}},
        {"CircuitBreaker": {"MinimumCalls": 0}},
        {"CircuitBreaker": {"Window": 1.5}},
        {"CircuitBreaker": {"CoolDown": 0}},
        {"CircuitBreaker": {"TrialCalls": True}},
        {"CircuitBreaker": {"Windows": 10}},
        {"MaxRequestsPerSecond": 0},
        {"MaxConcurrentRequests": "2"},
    ],
)
def test_settings_invalid(tmp_path: Path, settings: dict[str, Any]) -> None:
    path = tmp_path / f"{TENANT}.json"
    document = {"Connectors": [{"Name": "Webhook", "Host": URL, **settings}]}
    path.write_text(json.dumps(document))

    with pytest.raises(Exception, match="field") as raised:
        parse_tenant_file(path, TENANT, env={})

    assert next(iter(settings)) in str(raised.value)


def test_failure_classification() -> None:
    assert counts_as_failure(unavailable())
    assert counts_as_failure(WebhookTimeout("slow", url=URL))
    assert counts_as_failure(WebhookRejected("501", url=URL, status=501))
    assert not counts_as_failure(WebhookRejected("400", url=URL, status=400))
    assert not counts_as_failure(None)


def test_breaker_opens_over_ratio(
    guard: ConnectorGuard, redis_client: redis.Redis
) -> None:
    hook = connector(CircuitBreaker=BREAKER)
    call(guard, hook)
    call(guard, hook, unavailable())
    call(guard, hook, unavailable())
    assert breaker_state(redis_client) is None  # 3 calls, below MinimumCalls

    call(guard, hook, unavailable())
    stopped = admit(guard, hook)

    assert breaker_state(redis_client) == "open"
    assert isinstance(stopped, CircuitOpen)
    assert "circuit open for connector 'hook' until" in str(stopped)
    assert "after 3 of 4 calls failed" in str(stopped)
    assert stopped.retry_after_s is not None
    assert 0 < stopped.retry_after_s <= 0.3


def test_breaker_stays_closed_at_ratio(
    guard: ConnectorGuard, redis_client: redis.Redis
) -> None:
    hook = connector(CircuitBreaker=BREAKER)
    rejected = WebhookRejected("400", url=URL, status=400)
    for error in (None, unavailable(), rejected, unavailable(), None, unavailable()):
        call(guard, hook, error)

    # 3 of 6 failed: the ratio equals FailureRatio and does not exceed it.
    assert breaker_state(redis_client) is None
    assert isinstance(admit(guard, hook), Admission)


def test_breaker_retry_after_capped(guard: ConnectorGuard) -> None:
    hook = connector(CircuitBreaker={**BREAKER, "CoolDown": 120})
    for _ in range(4):
        call(guard, hook, unavailable())

    stopped = guard.admit(TENANT, hook, timeout_s=5.0, max_retry_delay_s=2.0)

    assert isinstance(stopped, CircuitOpen)
    assert stopped.retry_after_s == 2.0


def open_breaker(guard: ConnectorGuard, hook: ConnectorSettings) -> None:
    for _ in range(4):
        call(guard, hook, unavailable())
    assert isinstance(admit(guard, hook), CircuitOpen)


def test_half_open_trials_close(
    guard: ConnectorGuard, redis_client: redis.Redis
) -> None:
    hook = connector(CircuitBreaker=BREAKER)
    open_breaker(guard, hook)
    time.sleep(0.35)

    first = admit(guard, hook)
    second = admit(guard, hook)
    third = admit(guard, hook)

    assert isinstance(first, Admission) and first.trial
    assert isinstance(second, Admission) and second.trial
    assert isinstance(third, CircuitOpen)
    assert "2 trial calls are in flight" in str(third)
    assert breaker_state(redis_client) == "half_open"
    assert guard.finish(first, None, called=True) is None
    transition = guard.finish(second, None, called=True)
    assert transition is not None
    assert transition.event == "circuit.closed"
    assert breaker_state(redis_client) is None
    assert isinstance(admit(guard, hook), Admission)


def test_half_open_trial_failure_reopens(
    guard: ConnectorGuard, redis_client: redis.Redis
) -> None:
    hook = connector(CircuitBreaker=BREAKER)
    open_breaker(guard, hook)
    time.sleep(0.35)

    trial = admit(guard, hook)
    assert isinstance(trial, Admission)
    transition = guard.finish(trial, unavailable(), called=True)

    assert transition is not None
    assert transition.event == "circuit.reopened"
    assert breaker_state(redis_client) == "open"
    assert isinstance(admit(guard, hook), CircuitOpen)


def test_rate_limit_spacing(guard: ConnectorGuard) -> None:
    hook = connector(MaxRequestsPerSecond=5)

    first = admit(guard, hook)
    second = admit(guard, hook)

    assert isinstance(first, Admission)
    assert isinstance(second, Throttled)
    assert second.limit == "rate"
    # The next token comes 200 ms after the first; the jitter adds up to 200 ms.
    assert 0.15 <= second.countdown_s <= 0.41
    assert "MaxRequestsPerSecond 5" in second.reason
    time.sleep(0.21)
    assert isinstance(admit(guard, hook), Admission)


def test_rate_limit_burst(guard: ConnectorGuard) -> None:
    hook = connector(MaxRequestsPerSecond=40)

    outcomes = [admit(guard, hook) for _ in range(5)]

    admitted = [o for o in outcomes if isinstance(o, Admission)]
    # A tenth of a second's worth, 4 calls, may go at once.
    assert len(admitted) == 4
    assert isinstance(outcomes[4], Throttled)


def test_concurrency_cap(guard: ConnectorGuard) -> None:
    hook = connector(MaxConcurrentRequests=2)

    first = admit(guard, hook)
    second = admit(guard, hook)
    third = admit(guard, hook)

    assert isinstance(first, Admission)
    assert isinstance(second, Admission)
    assert isinstance(third, Throttled)
    assert third.limit == "concurrency"
    assert 0.05 <= third.countdown_s <= 0.3
    guard.finish(first, None, called=False)
    assert isinstance(admit(guard, hook), Admission)


def test_concurrency_holder_expires(guard: ConnectorGuard) -> None:
    hook = connector(MaxConcurrentRequests=1)
    # The holder lasts timeout + 5 s; a negative timeout makes it 0.1 s here.
    holder = guard.admit(TENANT, hook, timeout_s=-4.9, max_retry_delay_s=60.0)
    assert isinstance(holder, Admission)
    assert isinstance(admit(guard, hook), Throttled)

    time.sleep(0.15)

    assert isinstance(admit(guard, hook), Admission)


@pytest.fixture
def store_runner(
    redis_server: RedisServer, redis_client: redis.Redis, config_dir: Path
) -> Iterator[StepRunner]:
    settings = WorkerSettings(
        redis_url=redis_server.url,
        config_dir=config_dir,
        allow_private_networks=True,
        key_prefix=PREFIX,
    )
    step_runner = build_runner(settings)
    yield step_runner
    step_runner.client.close()
    assert step_runner.store is not None
    step_runner.store.client.close()


def write_tenant(config_dir: Path, webhook_server: WebhookServer, **extra: Any) -> None:
    hook = {
        "Name": "Webhook",
        "ConnectorId": "hook",
        "Host": webhook_server.url("/hook"),
        **extra,
    }
    (config_dir / f"{TENANT}.json").write_text(json.dumps({"Connectors": [hook]}))


def make_job(job_id: str) -> dict[str, Any]:
    return {
        "JobId": job_id,
        "TenantId": TENANT,
        "Step": {"Name": "WebhookWorkflowStep", "Connector": "Webhook"},
        "Order": {"Id": f"ORD-{job_id}", "MarketId": "SE"},
    }


def test_step_throttled_reschedule(
    store_runner: StepRunner,
    config_dir: Path,
    webhook_server: WebhookServer,
) -> None:
    write_tenant(config_dir, webhook_server, MaxConcurrentRequests=1)
    webhook_server.route("/hook", lambda _request: Reply.json("{}"))
    assert store_runner.guard is not None
    hook = connector(MaxConcurrentRequests=1)
    holder = admit(store_runner.guard, hook)
    assert isinstance(holder, Admission)

    # More reschedules than MAX_DELIVERIES (3), each carrying its progress as
    # the Celery task's retry message does.
    kwargs: dict[str, Any] = {}
    outcomes = []
    for _ in range(5):
        outcome = store_runner.run((make_job("throttled"),), kwargs)
        outcomes.append(outcome)
        if isinstance(outcome, Reschedule):
            kwargs = {PROGRESS_KEY: outcome.progress.to_message()}
    store_runner.guard.finish(holder, None, called=False)
    finished = store_runner.run((make_job("throttled"),), kwargs)

    for count, outcome in enumerate(outcomes, start=1):
        assert isinstance(outcome, Reschedule)
        assert outcome.progress.attempts == 0
        assert outcome.progress.reschedules == count
        assert "MaxConcurrentRequests 1" in outcome.reason
    # Each reschedule is a new message, so none of them uses up deliveries.
    assert isinstance(finished, Finished)
    assert json.loads(finished.result_json)["Attempts"] == 1
    assert len(webhook_server.requests) == 1


def test_step_circuit_open_retry(
    store_runner: StepRunner,
    config_dir: Path,
    webhook_server: WebhookServer,
) -> None:
    breaker = {**BREAKER, "CoolDown": 30}
    write_tenant(config_dir, webhook_server, CircuitBreaker=breaker)
    assert store_runner.guard is not None
    open_breaker(store_runner.guard, connector(CircuitBreaker=breaker))

    outcome = store_runner.run((make_job("stopped"),), {})

    assert isinstance(outcome, Reschedule)
    assert outcome.progress.attempts == 1
    assert outcome.progress.stopped == 1
    assert "circuit open for connector 'hook'" in outcome.reason
    assert 29 <= outcome.countdown_s <= 30
    assert webhook_server.requests == []
