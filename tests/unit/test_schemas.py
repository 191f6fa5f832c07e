"""The committed JSON Schemas match the models, and real jobs and results fit them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from worker import jsontext
from worker.results import ActionStatus, JobIdentity, StepResult, export_event
from worker.schemas import ResultDocument, job_schema, result_schema, schema_files

ROOT = Path(__file__).resolve().parents[2]
JOBS = ROOT / "config" / "examples" / "jobs"


@pytest.mark.parametrize("name", sorted(schema_files()))
def test_schema_file_current(name: str) -> None:
    committed = (ROOT / "docs" / "schemas" / name).read_text(encoding="utf-8")
    assert committed == schema_files()[name], (
        "docs/schemas is out of date; run: python -m worker.schemas docs/schemas"
    )


@pytest.mark.parametrize(
    "path",
    [path for path in sorted(JOBS.glob("*.json")) if "invalid" not in path.name],
    ids=lambda path: path.stem,
)
def test_example_job_fits_schema(path: Path) -> None:
    job = json.loads(path.read_text(encoding="utf-8"))
    jsonschema.validate(job, job_schema())


def test_invalid_example_fails_schema() -> None:
    job = json.loads((JOBS / "08-invalid.json").read_text(encoding="utf-8"))
    with pytest.raises(jsonschema.ValidationError, match="TenantId"):
        jsonschema.validate(job, job_schema())


def _result(**fields: Any) -> StepResult:
    identity = JobIdentity(
        job_id="job-1",
        tenant_id="acme",
        order_id="ORD-1",
        order={"Id": "ORD-1", "Total": jsontext.loads("99.90")},
    )
    defaults: dict[str, Any] = {
        "identity": identity,
        "action_status": ActionStatus.SUCCESS,
        "cancel_workflow": False,
        "order": identity.order,
    }
    return StepResult(**{**defaults, **fields})


@pytest.mark.parametrize(
    "result",
    [
        _result(
            http_status=200,
            attempts=1,
            duration_ms=12,
            changed_properties=["Status"],
            events=[export_event("Order sent to hook-1", "2026-12-04T12:00:00.000Z")],
            completed_at="2026-12-04T12:00:00.000Z",
            connector_name="Webhook",
            connector_id="hook-1",
        ),
        _result(
            action_status=ActionStatus.ERROR,
            cancel_workflow=True,
            trigger_new_status="ValidationFailed",
            error_reason="webhook answered 422",
            http_status=422,
            attempts=1,
        ),
        _result(action_status=ActionStatus.ERROR, cancel_workflow=True, order=None),
    ],
    ids=["success", "stop", "no-order"],
)
def test_result_fits_schema(result: StepResult) -> None:
    document = json.loads(result.to_json())
    jsonschema.validate(document, result_schema())


def test_result_fields_match_model() -> None:
    names = {field.alias for field in ResultDocument.model_fields.values()}
    assert set(_result().to_dict()) == names
