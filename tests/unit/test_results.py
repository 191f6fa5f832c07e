"""StepResult.to_json, JobIdentity.salvage and export_event."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from worker import jsontext
from worker.results import (
    ActionStatus,
    JobIdentity,
    StepResult,
    export_event,
    utc_timestamp,
)

CONTRACT_ORDER = [
    "SchemaVersion",
    "JobId",
    "TenantId",
    "CorrelationId",
    "OrderId",
    "ActionStatus",
    "CancelWorkflow",
    "TriggerNewStatus",
    "ErrorReason",
    "Messages",
    "TranslateKey",
    "ConnectorName",
    "ConnectorId",
    "HttpStatus",
    "Attempts",
    "DurationMs",
    "Order",
    "ChangedProperties",
    "Events",
    "CompletedAt",
]


def _result() -> StepResult:
    identity = JobIdentity(
        job_id="job-1",
        tenant_id="acme",
        correlation_id="corr-1",
        order_id="o-1",
        translate_key="webhook.erp",
    )
    return StepResult(
        identity=identity,
        action_status=ActionStatus.SUCCESS,
        cancel_workflow=False,
        order=jsontext.loads('{"Id": "o-1", "Total": 99.90}'),
        messages=["note"],
        connector_name="erp",
        connector_id="erp-se",
        http_status=200,
        attempts=1,
        duration_ms=12,
        changed_properties=["Status"],
        completed_at="2024-05-01T00:00:00.000Z",
    )


def test_result_field_order() -> None:
    assert list(json.loads(_result().to_json())) == CONTRACT_ORDER


def test_result_values() -> None:
    data = json.loads(_result().to_json())
    assert data["SchemaVersion"] == 1
    assert data["JobId"] == "job-1"
    assert data["ActionStatus"] == "Success"
    assert data["CancelWorkflow"] is False
    assert data["TriggerNewStatus"] is None
    assert data["TranslateKey"] == "webhook.erp"
    assert data["HttpStatus"] == 200
    assert data["CompletedAt"] == "2024-05-01T00:00:00.000Z"


def test_result_keeps_order_digits() -> None:
    assert '"Order":{"Id":"o-1","Total":99.90}' in _result().to_json()


def test_result_minimal_order() -> None:
    result = StepResult(JobIdentity("job-2"), ActionStatus.ERROR, True, None)
    assert list(json.loads(result.to_json())) == CONTRACT_ORDER


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (ActionStatus.SUCCESS, "Success"),
        (ActionStatus.WARNING, "Warning"),
        (ActionStatus.ERROR, "Error"),
    ],
)
def test_action_status_text(status: ActionStatus, text: str) -> None:
    assert str(status) == text


def test_utc_timestamp_format() -> None:
    moment = datetime(2024, 5, 1, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert utc_timestamp(moment) == "2024-05-01T12:00:00.123Z"


def test_utc_timestamp_now() -> None:
    assert utc_timestamp().endswith("Z")


def test_utc_timestamp_utc() -> None:
    moment = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert utc_timestamp(moment) == "2024-01-02T03:04:05.000Z"


def test_salvage_reads_ids() -> None:
    raw = jsontext.loads(
        '{"tenantId": "acme", "CorrelationId": "c", "Step": {"translateKey": "k"},'
        ' "Order": {"Id": 10.50}}'
    )
    identity = JobIdentity.salvage(raw, "job-1")
    assert identity.tenant_id == "acme"
    assert identity.correlation_id == "c"
    assert identity.translate_key == "k"
    assert identity.order_id == "10.50"


def test_salvage_wrong_types() -> None:
    raw = {"TenantId": 5, "Step": "x", "Order": {"Id": ["o"]}}
    identity = JobIdentity.salvage(raw, "job-1")
    assert identity.tenant_id is None
    assert identity.translate_key is None
    assert identity.order_id is None


def test_salvage_not_object() -> None:
    assert JobIdentity.salvage([1], "job-1") == JobIdentity("job-1")


def test_export_event() -> None:
    assert export_event("done", "t") == {
        "Category": "Exported",
        "Operation": "ExecuteExportOrder",
        "OperationId": 110105,
        "Timestamp": "t",
        "Message": "done",
    }
