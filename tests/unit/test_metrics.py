"""Metric labels and the counting hooks, in this process's in-memory registry."""

from __future__ import annotations

import pytest

from worker import metrics
from worker.errors import (
    BlockedAddress,
    InvalidResponseBody,
    WebhookError,
    WebhookRedirected,
    WebhookRejected,
    WebhookTimeout,
    WebhookUnavailable,
)
from worker.tenants import ConnectorSettings

URL = "https://hooks.example.com/path"


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (None, "ok"),
        (WebhookTimeout("t", url=URL), "timeout"),
        (WebhookUnavailable("u", url=URL, status=503), "unavailable"),
        (WebhookRejected("r", url=URL, status=422), "rejected"),
        (WebhookRedirected("m", url=URL, status=302), "redirected"),
        (InvalidResponseBody("b", url=URL, status=200), "invalid_body"),
        (BlockedAddress("a", url=URL), "blocked"),
    ],
)
def test_call_outcome_labels(error: WebhookError | None, outcome: str) -> None:
    assert metrics.call_outcome(error) == outcome
    assert outcome in metrics.CALL_OUTCOMES


def test_connector_label_never_url() -> None:
    with_id = ConnectorSettings.model_validate(
        {"Name": "Webhook", "ConnectorId": "erp", "Host": URL}
    )
    without_id = ConnectorSettings.model_validate({"Name": "Webhook", "Host": URL})

    assert metrics.connector_label(with_id) == "erp"
    assert metrics.connector_label(without_id) == "Webhook"
    assert metrics.connector_label(None) == "inline"


def sample(name: str, **labels: str) -> float:
    found = metrics.step_metrics().registry.get_sample_value(name, labels)
    return found or 0.0


def test_hooks_count_in_memory() -> None:
    connector = ConnectorSettings.model_validate(
        {"Name": "Webhook", "ConnectorId": "unit-hooks", "Host": URL}
    )
    calls_before = sample(
        "webhook_step_calls_total", connector="unit-hooks", outcome="rejected"
    )
    warnings_before = sample("webhook_step_results_total", action_status="Warning")
    dead_before = sample("webhook_step_dead_letters_total", kind="too_large")

    metrics.record_attempt(
        connector, WebhookRejected("r", url=URL, status=422), duration_s=0.2
    )
    metrics.record_attempt(connector, ("response", "update"), duration_s=0.3)
    metrics.record_retry(connector)
    metrics.record_result("Warning")
    metrics.record_dead_letter("too_large")

    assert (
        sample("webhook_step_calls_total", connector="unit-hooks", outcome="rejected")
        == calls_before + 1
    )
    assert sample("webhook_step_calls_total", connector="unit-hooks", outcome="ok") == 1
    assert (
        sample("webhook_step_call_duration_seconds_count", connector="unit-hooks") == 2
    )
    assert sample(
        "webhook_step_call_duration_seconds_sum", connector="unit-hooks"
    ) == pytest.approx(0.5)
    assert (
        sample(
            "webhook_step_call_duration_seconds_bucket",
            connector="unit-hooks",
            le="0.25",
        )
        == 1
    )
    assert sample("webhook_step_retries_total", connector="unit-hooks") == 1
    assert (
        sample("webhook_step_results_total", action_status="Warning")
        == warnings_before + 1
    )
    assert (
        sample("webhook_step_dead_letters_total", kind="too_large") == dead_before + 1
    )


def test_hook_failure_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> metrics.StepMetrics:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(metrics, "step_metrics", broken)

    metrics.record_result("Success")
    metrics.record_dead_letter("no_job_id")
    metrics.record_retry(None)
    metrics.record_attempt(None, None, duration_s=0.1)
