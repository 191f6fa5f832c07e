"""The job: one run of the webhook step for one order, sent by the workflow engine."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ConfigDict, Field, ValidationError, field_validator

from worker.casing import get_any_case
from worker.errors import JobInvalid
from worker.headers import header_problem
from worker.jsontext import JsonNumber, to_plain
from worker.tenants import CaseInsensitiveModel, check_webhook_url, url_for_message

SCHEMA_VERSION = 1
TENANT_ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MAX_JOB_ID_LENGTH = 200
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

REQUEST_HEADERS_GROUP = "RequestHeaders"


class _JobModel(CaseInsensitiveModel):
    # Unknown job properties are ignored, so engines may add fields.
    model_config = ConfigDict(extra="ignore", frozen=True)


class StepProperty(_JobModel):
    """One ``{Key, Value, KeyGroup}`` property of the step."""

    key: str = Field(alias="Key", min_length=1)
    value: str | None = Field(None, alias="Value")
    key_group: str | None = Field(None, alias="KeyGroup")


class StepModel(_JobModel):
    """The workflow step as the order system configures it."""

    name: str | None = Field(None, alias="Name")
    connector: str | None = Field(None, alias="Connector")
    connector_id: str | None = Field(None, alias="ConnectorId")
    run_after_order_is_saved: bool = Field(
        False, alias="RunAfterOrderIsSaved", strict=True
    )
    stop_on_error: bool = Field(False, alias="StopOnError", strict=True)
    error_status: str | None = Field(None, alias="ErrorStatus")
    translate_key: str | None = Field(None, alias="TranslateKey")
    properties: list[StepProperty] = Field(default_factory=list, alias="Properties")
    enabled_for_markets: list[str] = Field(
        default_factory=list, alias="EnabledForMarkets"
    )
    disabled_for_markets: list[str] = Field(
        default_factory=list, alias="DisabledForMarkets"
    )
    enabled_for_stores: list[str] = Field(
        default_factory=list, alias="EnabledForStores"
    )
    disabled_for_stores: list[str] = Field(
        default_factory=list, alias="DisabledForStores"
    )
    enabled_for_tags: list[str] = Field(default_factory=list, alias="EnabledForTags")
    disabled_for_tags: list[str] = Field(default_factory=list, alias="DisabledForTags")


class JobModel(_JobModel):
    """The job message, validated field by field."""

    # Strict: the version is an integer, never "1", 1.0 or true.
    schema_version: int = Field(SCHEMA_VERSION, alias="SchemaVersion", strict=True)
    job_id: str = Field(alias="JobId", min_length=1, max_length=MAX_JOB_ID_LENGTH)
    tenant_id: str = Field(alias="TenantId")
    correlation_id: str | None = Field(None, alias="CorrelationId")
    replay_of: str | None = Field(
        None,
        alias="ReplayOf",
        description="JobId of the job this one replays; set by the replay command",
    )
    run_by_system_service: bool = Field(True, alias="RunBySystemService", strict=True)
    step: StepModel = Field(alias="Step")
    order: dict[str, Any] = Field(alias="Order")

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, value: int) -> int:
        if value != SCHEMA_VERSION:
            raise ValueError(
                f"SchemaVersion {value} is not supported; this worker reads version "
                f"{SCHEMA_VERSION}"
            )
        return value

    @field_validator("correlation_id")
    @classmethod
    def _header_safe(cls, value: str | None) -> str | None:
        if value is not None and header_problem("X-Correlation-Id", value):
            raise ValueError("CorrelationId must not contain control characters")
        return value

    @field_validator("tenant_id")
    @classmethod
    def _tenant_pattern(cls, value: str) -> str:
        if not TENANT_ID_PATTERN.fullmatch(value):
            raise ValueError(
                f"TenantId {value!r} must be 1-64 characters of letters, digits, "
                "'_', '.' or '-'"
            )
        return value


@dataclass(frozen=True)
class Job:
    """A validated job, with the step's properties already interpreted."""

    job_id: str
    tenant_id: str
    correlation_id: str | None
    run_by_system_service: bool
    step: StepModel
    order: dict[str, Any]
    order_id: Any
    market_id: str | None
    inline_host: str | None = None
    request_headers: dict[str, str] = field(default_factory=dict)
    error_status: str | None = None
    keep_existing_list_items: bool | None = None
    keep_existing_custom_properties: bool | None = None

    @property
    def needs_delay(self) -> bool:
        """True when the call waits one second for the order to be saved."""
        return self.step.run_after_order_is_saved and self.run_by_system_service

    def secret_values(self) -> list[str]:
        return list(self.request_headers.values())


def is_request_header_group(key_group: Any) -> bool:
    """Return True for the key group RequestHeaders, in any casing."""
    return isinstance(key_group, str) and key_group.lower() == "requestheaders"


def scrub_request_headers(value: Any) -> Any:
    """Return a copy of ``value`` with the Value of every RequestHeaders item hidden.

    Used for messages stored without parsing, such as dead letters, because a
    request-header property's value is a secret wherever it appears.
    """
    if isinstance(value, list):
        return [scrub_request_headers(item) for item in value]
    if not isinstance(value, Mapping):
        return value
    is_header = is_request_header_group(get_any_case(value, "KeyGroup"))
    scrubbed = {}
    for key, item in value.items():
        if is_header and isinstance(key, str) and key.lower() == "value":
            scrubbed[key] = "[REDACTED]"
        else:
            scrubbed[key] = scrub_request_headers(item)
    return scrubbed


def usable_job_id(raw: Any) -> str | None:
    """Return the job's JobId when it can key a result, else None."""
    if not isinstance(raw, Mapping):
        return None
    job_id = get_any_case(raw, "JobId")
    if not isinstance(job_id, str) or not job_id or len(job_id) > MAX_JOB_ID_LENGTH:
        return None
    if _CONTROL.search(job_id):
        return None
    return job_id


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(the job)"
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"field {location}: {message}")
    return "; ".join(parts)


def _parse_bool(value: str | None, key: str) -> bool:
    text = (value or "").strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise JobInvalid(
        f"step property {key} has value {value!r}; write true or false", field=key
    )


def _read_properties(step: StepModel) -> dict[str, Any]:
    values: dict[str, Any] = {"request_headers": {}}
    for prop in step.properties:
        key_lower = prop.key.lower()
        if is_request_header_group(prop.key_group):
            problem = header_problem(prop.key, prop.value or "")
            if problem:
                raise JobInvalid(
                    f"step property {prop.key!r} in {REQUEST_HEADERS_GROUP}: {problem}",
                    field="Step.Properties",
                )
            values["request_headers"][prop.key] = prop.value or ""
        elif key_lower == "host":
            host = (prop.value or "").strip()
            problem = check_webhook_url(host)
            if problem:
                raise JobInvalid(
                    f"step property Host {url_for_message(host)} is invalid: {problem}",
                    field="Step.Properties.Host",
                )
            values["inline_host"] = host
        elif key_lower == "errorstatus":
            values["error_status"] = prop.value or None
        elif key_lower == "keepexistinglistitems":
            values["keep_existing_list_items"] = _parse_bool(prop.value, prop.key)
        elif key_lower == "keepexistingcustomproperties":
            values["keep_existing_custom_properties"] = _parse_bool(
                prop.value, prop.key
            )
    return values


def parse_job(raw: Any) -> Job:
    """Validate a job message.

    Raises:
        JobInvalid: the message names the wrong field and what is expected.
    """
    if not isinstance(raw, Mapping):
        raise JobInvalid(f"the job must be a JSON object, not {type(raw).__name__}")
    # Numbers outside the order are plain values; the order keeps its exact digits.
    order = get_any_case(raw, "Order")
    plain = {key: value for key, value in raw.items() if key.lower() != "order"}
    plain = to_plain(plain)
    if order is not None:
        plain["Order"] = order
    try:
        model = JobModel.model_validate(plain)
    except ValidationError as error:
        raise JobInvalid(f"invalid job: {_describe(error)}") from None

    order_id = get_any_case(model.order, "Id")
    if order_id is None or isinstance(order_id, dict | list | bool):
        raise JobInvalid(
            "invalid job: field Order.Id is missing or not a string or number",
            field="Order.Id",
        )
    if isinstance(order_id, JsonNumber):
        order_id = order_id.text
    market = get_any_case(model.order, "MarketId")
    if market is not None and not isinstance(market, str):
        raise JobInvalid(
            f"invalid job: field Order.MarketId must be a string, not {market!r}",
            field="Order.MarketId",
        )

    properties = _read_properties(model.step)
    if properties.get("inline_host") is None and not model.step.connector:
        raise JobInvalid(
            "invalid job: field Step.Connector is required when the step has no Host "
            "property",
            field="Step.Connector",
        )
    error_status = model.step.error_status or properties.pop("error_status", None)
    properties.pop("error_status", None)
    return Job(
        job_id=model.job_id,
        tenant_id=model.tenant_id,
        correlation_id=model.correlation_id,
        run_by_system_service=model.run_by_system_service,
        step=model.step,
        order=model.order,
        order_id=order_id,
        market_id=market,
        error_status=error_status,
        **properties,
    )


def summarize(raw: Any) -> str:
    """Return a short description of a job without order data or header values.

    Flower, task events and ``celery inspect`` show this in place of the arguments.
    """
    if not isinstance(raw, Mapping):
        return "(not a job object)"
    step = get_any_case(raw, "Step")
    order = get_any_case(raw, "Order")
    connector = None
    if isinstance(step, Mapping):
        connector = get_any_case(step, "ConnectorId") or get_any_case(step, "Connector")
    order_id = get_any_case(order, "Id") if isinstance(order, Mapping) else None
    fields = {
        "job_id": get_any_case(raw, "JobId"),
        "tenant": get_any_case(raw, "TenantId"),
        "order": order_id.text if isinstance(order_id, JsonNumber) else order_id,
        "connector": connector,
    }
    shown = []
    for name, value in fields.items():
        text = (
            value
            if isinstance(value, str | int) and not isinstance(value, bool)
            else None
        )
        shown.append(f"{name}={str(text)[:80] if text is not None else '-'}")
    return "(" + ", ".join(shown) + ")"
