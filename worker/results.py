"""The step result: one per JobId, in the order system's result shape."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from worker import jsontext
from worker.casing import get_any_case
from worker.jsontext import JsonNumber

RESULT_SCHEMA_VERSION = 1
EXPORT_OPERATION_ID = 110105


class ActionStatus(StrEnum):
    SUCCESS = "Success"
    WARNING = "Warning"
    ERROR = "Error"


def utc_timestamp(moment: datetime | None = None) -> str:
    """Return an ISO 8601 UTC timestamp with milliseconds and a Z suffix."""
    moment = moment or datetime.now(UTC)
    return (
        moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


@dataclass(frozen=True)
class JobIdentity:
    """The ids a result echoes; salvaged as far as possible from an invalid job."""

    job_id: str
    tenant_id: str | None = None
    correlation_id: str | None = None
    order_id: Any = None
    translate_key: str | None = None
    order: dict[str, Any] | None = None

    @classmethod
    def salvage(cls, raw: Any, job_id: str) -> JobIdentity:
        """Read what can be read from a job that did not validate."""
        if not isinstance(raw, Mapping):
            return cls(job_id)
        order = get_any_case(raw, "Order")
        order = order if isinstance(order, dict) else None
        step = get_any_case(raw, "Step")
        order_id = get_any_case(order, "Id") if order else None
        if isinstance(order_id, JsonNumber):
            order_id = order_id.text
        return cls(
            job_id=job_id,
            tenant_id=_text(get_any_case(raw, "TenantId")),
            correlation_id=_text(get_any_case(raw, "CorrelationId")),
            order_id=order_id if isinstance(order_id, str | int) else None,
            translate_key=_text(get_any_case(step, "TranslateKey"))
            if isinstance(step, Mapping)
            else None,
            order=order,
        )


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


@dataclass
class StepResult:
    """Every field of a result message; ``to_json`` writes the published form."""

    identity: JobIdentity
    action_status: ActionStatus
    cancel_workflow: bool
    order: dict[str, Any] | None
    trigger_new_status: str | None = None
    error_reason: str | None = None
    messages: list[str] = field(default_factory=list)
    connector_name: str | None = None
    connector_id: str | None = None
    http_status: int | None = None
    attempts: int = 0
    duration_ms: int = 0
    changed_properties: list[str] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    completed_at: str = field(default_factory=utc_timestamp)

    def to_dict(self) -> dict[str, Any]:
        identity = self.identity
        return {
            "SchemaVersion": RESULT_SCHEMA_VERSION,
            "JobId": identity.job_id,
            "TenantId": identity.tenant_id,
            "CorrelationId": identity.correlation_id,
            "OrderId": identity.order_id,
            "ActionStatus": str(self.action_status),
            "CancelWorkflow": self.cancel_workflow,
            "TriggerNewStatus": self.trigger_new_status,
            "ErrorReason": self.error_reason,
            "Messages": self.messages,
            "TranslateKey": identity.translate_key,
            "ConnectorName": self.connector_name,
            "ConnectorId": self.connector_id,
            "HttpStatus": self.http_status,
            "Attempts": self.attempts,
            "DurationMs": self.duration_ms,
            "Order": self.order,
            "ChangedProperties": self.changed_properties,
            "Events": self.events,
            "CompletedAt": self.completed_at,
        }

    def to_json(self) -> str:
        return jsontext.dumps(self.to_dict())


def export_event(message: str, timestamp: str) -> dict[str, Any]:
    """Return the order event that records a successful export."""
    return {
        "Category": "Exported",
        "Operation": "ExecuteExportOrder",
        "OperationId": EXPORT_OPERATION_ID,
        "Timestamp": timestamp,
        "Message": message,
    }
