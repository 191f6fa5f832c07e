"""parse_job, usable_job_id and summarize."""

from __future__ import annotations

from typing import Any

import pytest

from worker import jsontext
from worker.errors import JobInvalid
from worker.job import parse_job, summarize, usable_job_id


def _job(**fields: Any) -> dict[str, Any]:
    job: dict[str, Any] = {
        "SchemaVersion": 1,
        "JobId": "job-1",
        "TenantId": "acme",
        "CorrelationId": "corr-1",
        "Step": {"Connector": "erp"},
        "Order": {"Id": "o-1", "MarketId": "SE"},
    }
    job.update(fields)
    return job


def _without(name: str) -> dict[str, Any]:
    job = _job()
    del job[name]
    return job


def _step(*properties: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"Connector": "erp", "Properties": list(properties), **fields}


def _invalid(raw: Any) -> str:
    with pytest.raises(JobInvalid) as caught:
        parse_job(raw)
    return str(caught.value)


def test_job_valid() -> None:
    job = parse_job(_job())
    assert job.job_id == "job-1"
    assert job.tenant_id == "acme"
    assert job.correlation_id == "corr-1"
    assert job.step.connector == "erp"
    assert job.order_id == "o-1"
    assert job.market_id == "SE"
    assert job.inline_host is None
    assert job.request_headers == {}
    assert job.error_status is None
    assert job.needs_delay is False


def test_job_camel_case() -> None:
    raw = {
        "schemaVersion": 1,
        "jobId": "job-1",
        "tenantId": "acme",
        "runBySystemService": True,
        "step": {"connector": "erp", "connectorId": "c1", "runAfterOrderIsSaved": True},
        "order": {"id": 42, "marketId": "NO"},
    }
    job = parse_job(raw)
    assert job.job_id == "job-1"
    assert job.tenant_id == "acme"
    assert job.step.connector_id == "c1"
    assert job.order_id == 42
    assert job.market_id == "NO"
    assert job.order == {"id": 42, "marketId": "NO"}


def test_job_other_casing() -> None:
    raw = {
        "JOBID": "j",
        "tenantid": "t",
        "STEP": {"CONNECTOR": "erp"},
        "Order": {"ID": 1},
    }
    job = parse_job(raw)
    assert job.job_id == "j"
    assert job.step.connector == "erp"


def test_job_unknown_fields_ignored() -> None:
    assert parse_job(_job(EngineVersion="9")).job_id == "job-1"


def test_job_order_keeps_digits() -> None:
    raw = jsontext.loads(
        '{"JobId": "j", "TenantId": "t", "Step": {"Connector": "erp"},'
        ' "Order": {"Id": 12345678901234567890, "Total": 99.90}}'
    )
    job = parse_job(raw)
    assert jsontext.dumps(job.order) == '{"Id":12345678901234567890,"Total":99.90}'


def test_job_numeric_order_id_text() -> None:
    raw = jsontext.loads(
        '{"JobId": "j", "TenantId": "t", "Step": {"Connector": "erp"},'
        ' "Order": {"Id": 1.50}}'
    )
    assert parse_job(raw).order_id == "1.50"


def test_job_inline_host() -> None:
    step = _step({"Key": "Host", "Value": " https://hook.test/path "}, Connector=None)
    job = parse_job(_job(Step=step))
    assert job.inline_host == "https://hook.test/path"
    assert job.step.connector is None


def test_job_inline_host_any_case() -> None:
    step = _step({"key": "host", "value": "http://hook.test"})
    assert parse_job(_job(Step=step)).inline_host == "http://hook.test"


def test_job_request_headers() -> None:
    step = _step(
        {"Key": "X-Api-Key", "Value": "hv-123", "KeyGroup": "RequestHeaders"},
        {"Key": "X-Empty", "Value": None, "KeyGroup": "RequestHeaders"},
        {"Key": "X-Other", "Value": "no", "KeyGroup": "Other"},
    )
    job = parse_job(_job(Step=step))
    assert job.request_headers == {"X-Api-Key": "hv-123", "X-Empty": ""}
    assert job.secret_values() == ["hv-123", ""]


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("X-A", "a\r\nInjected: 1", "control character"),
        ("Bad Name", "x", "not a valid HTTP token"),
        ("Content-Length", "1", "set by the worker"),
        ("Host", "evil.test", "set by the worker"),
    ],
)
def test_job_request_header_invalid(key: str, value: str, reason: str) -> None:
    prop = {"Key": key, "Value": value, "KeyGroup": "RequestHeaders"}
    message = _invalid(_job(Step=_step(prop)))
    assert reason in message
    assert "RequestHeaders" in message
    assert "Injected" not in message


@pytest.mark.parametrize(
    ("step", "expected"),
    [
        (_step(ErrorStatus="Failed"), "Failed"),
        (_step({"Key": "ErrorStatus", "Value": "Halted"}), "Halted"),
        (_step({"Key": "errorstatus", "Value": "Halted"}), "Halted"),
        (
            _step({"Key": "ErrorStatus", "Value": "Halted"}, ErrorStatus="Failed"),
            "Failed",
        ),
        (_step({"Key": "ErrorStatus", "Value": ""}), None),
        (_step(), None),
    ],
    ids=["field", "property", "property any case", "field wins", "empty", "none"],
)
def test_job_error_status(step: dict[str, Any], expected: str | None) -> None:
    assert parse_job(_job(Step=step)).error_status == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [("true", True), ("False", False), (" 1 ", True), ("no", False)],
)
def test_job_keep_flags(value: str, expected: bool) -> None:
    step = _step(
        {"Key": "KeepExistingListItems", "Value": value},
        {"Key": "keepExistingCustomProperties", "Value": value},
    )
    job = parse_job(_job(Step=step))
    assert job.keep_existing_list_items is expected
    assert job.keep_existing_custom_properties is expected


def test_job_keep_flag_invalid() -> None:
    step = _step({"Key": "KeepExistingListItems", "Value": "maybe"})
    assert "KeepExistingListItems" in _invalid(_job(Step=step))


@pytest.mark.parametrize(
    ("after_saved", "system", "expected"),
    [
        (True, True, True),
        (True, False, False),
        (False, True, False),
        (False, False, False),
    ],
)
def test_job_needs_delay(after_saved: bool, system: bool, expected: bool) -> None:
    raw = _job(RunBySystemService=system, Step=_step(RunAfterOrderIsSaved=after_saved))
    assert parse_job(raw).needs_delay is expected


def test_job_system_service_default() -> None:
    raw = _job(Step=_step(RunAfterOrderIsSaved=True))
    assert parse_job(raw).needs_delay is True


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (_without("TenantId"), "field TenantId"),
        (_job(TenantId=None), "field TenantId"),
        (_job(TenantId=""), "field TenantId"),
        (_job(TenantId="a/b"), "field TenantId"),
        (_job(TenantId="../etc"), "field TenantId"),
        (_job(TenantId="acme corp"), "field TenantId"),
        (_job(TenantId="a" * 65), "field TenantId"),
        (_job(TenantId="acme\n"), "field TenantId"),
        (_job(TenantId="\u00e5cme"), "field TenantId"),
        (_job(TenantId=7), "field TenantId"),
        (_without("JobId"), "field JobId"),
        (_job(JobId=""), "field JobId"),
        (_job(JobId="j" * 201), "field JobId"),
        (_job(SchemaVersion=2), "field SchemaVersion"),
        (_job(SchemaVersion=0), "field SchemaVersion"),
        (_job(SchemaVersion="two"), "field SchemaVersion"),
        (_job(CorrelationId="c\r\n1"), "field CorrelationId"),
        (_without("Step"), "field Step"),
        (_without("Order"), "field Order"),
        (_job(Order=[1]), "field Order"),
        (_job(Order={"Name": "x"}), "field Order.Id"),
        (_job(Order={"Id": None}), "field Order.Id"),
        (_job(Order={"Id": {"x": 1}}), "field Order.Id"),
        (_job(Order={"Id": True}), "field Order.Id"),
        (_job(Order={"Id": 1, "MarketId": 5}), "field Order.MarketId"),
        (_job(Step={}), "field Step.Connector"),
        (_job(Step={"Connector": ""}), "field Step.Connector"),
        (_job(Step={"ConnectorId": "c1"}), "field Step.Connector"),
        (
            _job(Step={"Connector": "erp", "Properties": [{"Value": "x"}]}),
            "Step.Properties.0.Key",
        ),
    ],
)
def test_job_invalid(raw: dict[str, Any], field: str) -> None:
    assert field in _invalid(raw)


@pytest.mark.parametrize("tenant_id", ["a", "Acme_Corp-1.eu", "a" * 64, "..", "0"])
def test_job_tenant_id_valid(tenant_id: str) -> None:
    assert parse_job(_job(TenantId=tenant_id)).tenant_id == tenant_id


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("ftp://hook.test/", "absolute http:// or https://"),
        ("hook.test/path", "absolute http:// or https://"),
        ("/path", "absolute http:// or https://"),
        ("", "absolute http:// or https://"),
        ("https://user:pw@hook.test/", "must not contain user info"),
        ("https://user@hook.test/", "must not contain user info"),
        ("https://", "no host name"),
        ("http://hook.test:99999/", "Port out of range"),
    ],
)
def test_job_inline_host_invalid(host: str, reason: str) -> None:
    step = _step({"Key": "Host", "Value": host}, Connector=None)
    with pytest.raises(JobInvalid) as caught:
        parse_job(_job(Step=step))
    assert reason in str(caught.value)
    assert caught.value.field == "Step.Properties.Host"


@pytest.mark.parametrize(
    "host",
    ["https://u:pw-9f2e7@hook.test/", "ftp://hook.test/?token=pw-9f2e7"],
)
def test_job_inline_host_hides_secret(host: str) -> None:
    step = _step({"Key": "Host", "Value": host})
    with pytest.raises(JobInvalid) as caught:
        parse_job(_job(Step=step))
    assert "pw-9f2e7" not in str(caught.value)


@pytest.mark.parametrize("raw", [None, [], "job", 5])
def test_job_not_object(raw: Any) -> None:
    assert "must be a JSON object" in _invalid(raw)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"JobId": "job-1"}, "job-1"),
        ({"jobId": "job-1"}, "job-1"),
        ({"JobId": "j" * 200}, "j" * 200),
        ({"JobId": "j" * 201}, None),
        ({"JobId": ""}, None),
        ({"JobId": 5}, None),
        ({"JobId": None}, None),
        ({"JobId": "job\n1"}, None),
        ({"JobId": "job\x7f"}, None),
        ({}, None),
        (["JobId"], None),
        ("job-1", None),
    ],
)
def test_usable_job_id(raw: Any, expected: str | None) -> None:
    assert usable_job_id(raw) == expected


def test_summarize_fields() -> None:
    assert summarize(_job()) == "(job_id=job-1, tenant=acme, order=o-1, connector=erp)"


def test_summarize_connector_id_first() -> None:
    raw = _job(Step={"Connector": "erp", "ConnectorId": "erp-se"})
    assert "connector=erp-se" in summarize(raw)


def test_summarize_hides_data() -> None:
    order = {
        "Id": "o-1",
        "Customer": {"Name": "Ann Private", "Email": "ann@private.test"},
        "Total": 99.9,
    }
    header = {
        "Key": "X-Api-Key",
        "Value": "hv-secret-123",
        "KeyGroup": "RequestHeaders",
    }
    summary = summarize(_job(Order=order, Step=_step(header)))
    assert "Ann Private" not in summary
    assert "ann@private.test" not in summary
    assert "99.9" not in summary
    assert "hv-secret-123" not in summary
    assert "X-Api-Key" not in summary


def test_summarize_numeric_order_id() -> None:
    raw = jsontext.loads('{"JobId": "j", "Order": {"Id": 10.50}}')
    assert "order=10.50" in summarize(raw)


def test_summarize_missing_fields() -> None:
    assert summarize({}) == "(job_id=-, tenant=-, order=-, connector=-)"


@pytest.mark.parametrize("raw", [None, [], "job"])
def test_summarize_not_object(raw: Any) -> None:
    assert summarize(raw) == "(not a job object)"


def test_summarize_non_text_values() -> None:
    raw = {"JobId": {"x": 1}, "TenantId": True, "Order": {"Id": ["o"]}}
    assert summarize(raw) == "(job_id=-, tenant=-, order=-, connector=-)"


def test_summarize_truncates() -> None:
    assert f"job_id={'j' * 80}," in summarize({"JobId": "j" * 500})


@pytest.mark.parametrize(
    "raw",
    [
        _job(SchemaVersion="1"),
        _job(SchemaVersion=1.0),
        _job(SchemaVersion=True),
        _job(RunBySystemService="yes"),
        _job(Step=_step(StopOnError="yes")),
        _job(Step=_step(RunAfterOrderIsSaved=1)),
    ],
    ids=["version-text", "version-float", "version-bool", "system", "stop", "after"],
)
def test_job_loose_types_invalid(raw: dict[str, Any]) -> None:
    assert _invalid(jsontext.loads(jsontext.dumps(raw)))


def test_job_request_header_group_any_case() -> None:
    prop = {"Key": "X-Api-Key", "Value": "k-1", "KeyGroup": "requestheaders"}
    job = parse_job(_job(Step=_step(prop)))
    assert job.request_headers == {"X-Api-Key": "k-1"}
