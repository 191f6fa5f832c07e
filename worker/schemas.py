"""JSON Schemas of the job and the result, for producers and readers in any language.

The job schema comes from the model the worker validates jobs with; the result
schema from a model that mirrors ``StepResult.to_dict``, which a test keeps in
step. ``python -m worker.schemas docs/schemas`` writes both files, and CI checks
that the committed files match.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from worker.job import JobModel

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


class EventDocument(BaseModel):
    """An order event the step adds on success."""

    model_config = ConfigDict(extra="forbid")

    category: Literal["Exported"] = Field(alias="Category")
    operation: Literal["ExecuteExportOrder"] = Field(alias="Operation")
    operation_id: Literal[110105] = Field(alias="OperationId")
    timestamp: str = Field(alias="Timestamp", description="UTC, ISO 8601, with Z")
    message: str = Field(alias="Message")


class ResultDocument(BaseModel):
    """One entry of the result stream: the outcome of one job."""

    model_config = ConfigDict(extra="forbid")

    schema_version: Literal[1] = Field(alias="SchemaVersion")
    job_id: str = Field(alias="JobId")
    tenant_id: str | None = Field(alias="TenantId")
    correlation_id: str | None = Field(alias="CorrelationId")
    order_id: str | int | None = Field(alias="OrderId")
    action_status: Literal["Success", "Warning", "Error"] = Field(alias="ActionStatus")
    cancel_workflow: bool = Field(
        alias="CancelWorkflow", description="true: the workflow stops here"
    )
    trigger_new_status: str | None = Field(
        alias="TriggerNewStatus",
        description="the step's ErrorStatus when the step failed and stops",
    )
    error_reason: str | None = Field(alias="ErrorReason")
    messages: list[str] = Field(alias="Messages")
    translate_key: str | None = Field(alias="TranslateKey")
    connector_name: str | None = Field(alias="ConnectorName")
    connector_id: str | None = Field(alias="ConnectorId")
    http_status: int | None = Field(
        alias="HttpStatus", description="null when no response came"
    )
    attempts: int = Field(alias="Attempts", ge=0, description="HTTP calls made")
    duration_ms: int | None = Field(
        alias="DurationMs",
        description="from the first attempt's start to the result, countdown excluded",
    )
    order: dict[str, Any] | None = Field(
        alias="Order",
        description="the order after this step; null when the job was too large "
        "or could not be read",
    )
    changed_properties: list[str] = Field(alias="ChangedProperties")
    events: list[EventDocument] = Field(alias="Events")
    completed_at: str | None = Field(alias="CompletedAt")


def job_schema() -> dict[str, Any]:
    """Return the JSON Schema of a job, with PascalCase property names."""
    schema = JobModel.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = SCHEMA_DIALECT
    schema["title"] = "Webhook step job"
    schema["description"] = (
        "The one positional argument of the Celery task webhook_step.execute. "
        "The worker reads property names in any casing; this schema shows "
        "PascalCase. Properties it does not know are ignored."
    )
    return schema


def result_schema() -> dict[str, Any]:
    """Return the JSON Schema of a result stream entry's ``result`` field."""
    schema = ResultDocument.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = SCHEMA_DIALECT
    schema["title"] = "Webhook step result"
    return schema


def schema_files() -> dict[str, str]:
    """Return the schema files' names and their text."""
    return {
        "job.schema.json": json.dumps(job_schema(), indent=2) + "\n",
        "result.schema.json": json.dumps(result_schema(), indent=2) + "\n",
    }


def main(argv: list[str]) -> int:
    target = Path(argv[0] if argv else "docs/schemas")
    target.mkdir(parents=True, exist_ok=True)
    for name, text in schema_files().items():
        (target / name).write_text(text, encoding="utf-8")
        print(f"wrote {target / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
