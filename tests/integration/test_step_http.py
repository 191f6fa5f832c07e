"""StepRunner against real HTTP servers on loopback, without a broker.

Each test writes a tenant settings file, points a connector (or a step's Host)
at ``webhook_server`` and calls ``StepRunner.run`` the way the Celery task
does. A ``Reschedule`` is followed by calling ``run`` again with its progress,
so retries take no wall-clock time.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
import redis
import structlog

from tests.support.redis_server import RedisServer, free_port
from tests.support.webhook_server import Reply, Request, WebhookServer
from worker import jsontext
from worker.logs import configure_logging
from worker.runtime import build_runner
from worker.settings import WorkerSettings
from worker.step import (
    PROGRESS_KEY,
    DeadLettered,
    Finished,
    Outcome,
    Reschedule,
    StepRunner,
)
from worker.tenants import TenantStore
from worker.webhook import WebhookClient

TENANT = "acme"
JOB_ID = "job-1"
ERROR_STATUS = "ExportFailed"
STEP_ERROR_KEY = "WebhookWorkflowStep"
# Compact JSON as jsontext.dumps writes it, so the request body can be compared
# byte for byte: 99.90, 1.500 and 1E+2 must keep their digits.
ORDER_TEXT = (
    '{"Id":"1001","MarketId":"SE","Status":"New","Name":"Order 1001",'
    '"Total":99.90,"Weight":1.500,"Rate":1E+2,"Quantity":3,'
    '"Tags":["new"],"Errors":[]}'
)
ORDER = json.loads(ORDER_TEXT)

BEARER_TOKEN = "tok-bearer-5f2c9a71"
BASIC_PASSWORD = "pw-basic-81e4d0"
API_KEY = "api-key-c0ffee42"
STEP_SECRET = "step-sig-3b7e11"

Handler = Callable[[Request], Reply]


# --- helpers ---------------------------------------------------------------


def write_tenant(config_dir: Path, *connectors: dict[str, Any]) -> None:
    path = config_dir / f"{TENANT}.json"
    path.write_text(json.dumps({"Connectors": list(connectors)}), encoding="utf-8")


def hook_connector(
    server: WebhookServer, path: str = "/hook", **fields: Any
) -> dict[str, Any]:
    """Return settings of the connector named Hook (ConnectorId hook-1)."""
    return {
        "Name": "Hook",
        "ConnectorId": "hook-1",
        "Host": server.url(path),
        "TimeOut": "00:00:05",
        **fields,
    }


def make_job(
    job_id: str = JOB_ID,
    *,
    order_text: str = ORDER_TEXT,
    correlation_id: str | None = "corr-7",
    **step_fields: Any,
) -> dict[str, Any]:
    """Return a job as the Celery codec delivers it: numbers keep their text."""
    step = {
        "Name": "Export",
        "Connector": "Hook",
        "StopOnError": True,
        "ErrorStatus": ERROR_STATUS,
        **step_fields,
    }
    job: dict[str, Any] = {
        "JobId": job_id,
        "TenantId": TENANT,
        "Step": step,
        "Order": jsontext.loads(order_text),
    }
    if correlation_id is not None:
        job["CorrelationId"] = correlation_id
    return job


def make_runner(config_dir: Path, max_response_bytes: int = 1_000_000) -> StepRunner:
    client = WebhookClient(
        allow_private_networks=True, max_response_bytes=max_response_bytes
    )
    return StepRunner(tenants=TenantStore(config_dir), client=client, store=None)


def replies(*sequence: Reply) -> Handler:
    """Return a handler that sends ``sequence`` in turn, then repeats the last."""
    pending = list(sequence)
    lock = threading.Lock()

    def handle(_request: Request) -> Reply:
        with lock:
            return pending.pop(0) if len(pending) > 1 else pending[0]

    return handle


def finished(outcome: Outcome) -> dict[str, Any]:
    assert isinstance(outcome, Finished), outcome
    result: dict[str, Any] = json.loads(outcome.result_json)
    return result


def run_to_end(
    runner: StepRunner, job: dict[str, Any], max_runs: int = 6
) -> tuple[dict[str, Any], list[float]]:
    """Run the job until it finishes and return the result and the countdowns seen."""
    kwargs: dict[str, Any] = {}
    countdowns: list[float] = []
    for _ in range(max_runs):
        outcome = runner.run((job,), kwargs)
        if isinstance(outcome, Reschedule):
            countdowns.append(outcome.countdown_s)
            kwargs = {PROGRESS_KEY: outcome.progress.to_message()}
            continue
        return finished(outcome), countdowns
    raise AssertionError(f"the job did not finish within {max_runs} runs")


def step_error(result: dict[str, Any]) -> dict[str, Any]:
    """Return the single error entry that the step added to the result's order."""
    entries = [e for e in result["Order"]["Errors"] if e["Key"] == STEP_ERROR_KEY]
    assert len(entries) == 1, entries
    entry: dict[str, Any] = entries[0]
    return entry


def status_message(server: WebhookServer, path: str, status: int) -> str:
    return f"webhook {server.url(path)} answered {status} {HTTPStatus(status).phrase}"


@pytest.fixture
def runner(config_dir: Path) -> Iterator[StepRunner]:
    step_runner = make_runner(config_dir)
    yield step_runner
    step_runner.client.close()


# --- approve and reject ----------------------------------------------------


def test_approve(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    body = '{"Status":"Approved","Tags":["vip"],"Id":"1001","Comment":"ok"}'
    webhook_server.route("/hook", replies(Reply.json(body)))

    outcome = runner.run((make_job(),), {})
    result = finished(outcome)

    assert result["ActionStatus"] == "Success"
    assert result["CancelWorkflow"] is False
    assert result["TriggerNewStatus"] is None
    assert result["ErrorReason"] is None
    assert result["HttpStatus"] == 200
    assert result["Attempts"] == 1
    assert result["JobId"] == JOB_ID
    assert result["TenantId"] == TENANT
    assert result["CorrelationId"] == "corr-7"
    assert result["OrderId"] == "1001"
    assert result["ConnectorName"] == "Hook"
    assert result["ConnectorId"] == "hook-1"
    assert result["Order"] == {**ORDER, "Status": "Approved", "Tags": ["new", "vip"]}
    assert result["ChangedProperties"] == ["Status", "Tags"]
    assert result["Messages"] == [
        'ignored properties the webhook may not change: "Comment"'
    ]
    assert len(result["Events"]) == 1
    event = result["Events"][0]
    assert event["Category"] == "Exported"
    assert event["Operation"] == "ExecuteExportOrder"
    assert event["OperationId"] == 110105
    assert event["Message"] == "Order sent to hook-1"
    assert isinstance(outcome, Finished)
    assert '"Total":99.90' in outcome.result_json
    assert len(webhook_server.requests_to("/hook")) == 1


def test_reject_422(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    webhook_server.route("/hook", replies(Reply.json('{"error":"no"}', status=422)))

    result = finished(runner.run((make_job(),), {}))

    reason = status_message(webhook_server, "/hook", 422)
    assert result["ActionStatus"] == "Error"
    assert result["CancelWorkflow"] is True
    assert result["TriggerNewStatus"] == ERROR_STATUS
    assert result["ErrorReason"] == reason
    assert result["HttpStatus"] == 422
    assert result["Attempts"] == 1
    assert result["Messages"] == []
    assert result["Events"] == []
    assert result["ChangedProperties"] == ["Errors"]
    entry = step_error(result)
    assert entry["Message"] == reason
    assert entry["Severity"] == "Error"
    assert entry["ReferenceId"] == "hook-1"
    assert len(webhook_server.requests_to("/hook")) == 1


# --- retries ---------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 408, 429])
def test_transient_then_success(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer, status: int
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    webhook_server.route(
        "/hook",
        replies(Reply(status=status), Reply.json('{"Status":"Approved"}')),
    )

    result, countdowns = run_to_end(runner, make_job())

    assert countdowns == [1.0]
    assert result["ActionStatus"] == "Success"
    assert result["CancelWorkflow"] is False
    assert result["ErrorReason"] is None
    assert result["HttpStatus"] == 200
    assert result["Attempts"] == 2
    assert result["Messages"] == [
        f"attempt 1 failed: {status_message(webhook_server, '/hook', status)}; "
        "retried after 1 s"
    ]
    assert result["ChangedProperties"] == ["Status"]
    assert result["Order"]["Errors"] == []
    requests = webhook_server.requests_to("/hook")
    assert len(requests) == 2
    assert {r.header("Idempotency-Key") for r in requests} == {JOB_ID}


@pytest.mark.parametrize(
    ("stop_on_error", "status", "cancel", "trigger"),
    [(True, "Error", True, ERROR_STATUS), (False, "Warning", False, None)],
)
def test_503_every_time(
    runner: StepRunner,
    config_dir: Path,
    webhook_server: WebhookServer,
    stop_on_error: bool,
    status: str,
    cancel: bool,
    trigger: str | None,
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    webhook_server.route("/hook", replies(Reply(status=503)))

    result, countdowns = run_to_end(runner, make_job(StopOnError=stop_on_error))

    reason = status_message(webhook_server, "/hook", 503)
    assert countdowns == [1.0, 5.0, 15.0]
    assert result["ActionStatus"] == status
    assert result["CancelWorkflow"] is cancel
    assert result["TriggerNewStatus"] == trigger
    assert result["ErrorReason"] == reason
    assert result["HttpStatus"] == 503
    assert result["Attempts"] == 4
    assert result["Messages"] == [
        f"attempt {n} failed: {reason}; retried after {delay} s"
        for n, delay in ((1, 1), (2, 5), (3, 15))
    ]
    assert result["ChangedProperties"] == ["Errors"]
    assert result["Events"] == []
    entry = step_error(result)
    assert entry["Message"] == reason
    assert entry["Severity"] == status
    assert entry["ReferenceId"] == "hook-1"
    assert isinstance(entry["Occurred"], str)
    assert len(webhook_server.requests_to("/hook")) == 4


def test_policy_disabled(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    connector = hook_connector(webhook_server, DisableStandardErrorPolicy=True)
    write_tenant(config_dir, connector)
    webhook_server.route("/hook", replies(Reply(status=503)))

    result = finished(runner.run((make_job(),), {}))

    assert result["ActionStatus"] == "Error"
    assert result["CancelWorkflow"] is True
    assert result["ErrorReason"] == status_message(webhook_server, "/hook", 503)
    assert result["HttpStatus"] == 503
    assert result["Attempts"] == 1
    assert result["Messages"] == []
    assert len(webhook_server.requests_to("/hook")) == 1


def test_retry_after_seconds(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    busy = Reply(status=503, headers={"Retry-After": "7"})
    webhook_server.route("/hook", replies(busy, Reply.json("{}")))

    result, countdowns = run_to_end(runner, make_job())

    assert countdowns == [7.0]
    assert result["ActionStatus"] == "Success"
    assert result["Attempts"] == 2
    assert result["Messages"][0].endswith("; retried after 7 s")


def test_retry_after_date(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    moment = datetime.now(UTC) + timedelta(seconds=20)
    busy = Reply(status=429, headers={"Retry-After": format_datetime(moment, True)})
    webhook_server.route("/hook", replies(busy))

    outcome = runner.run((make_job(),), {})

    assert isinstance(outcome, Reschedule)
    # The HTTP date has whole seconds, so up to one second is lost.
    assert 18.0 <= outcome.countdown_s <= 20.0


def test_retry_after_too_long(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    webhook_server.route(
        "/hook", replies(Reply(status=503, headers={"Retry-After": "120"}))
    )

    result = finished(runner.run((make_job(),), {}))

    assert result["ActionStatus"] == "Error"
    assert result["CancelWorkflow"] is True
    assert result["ErrorReason"] == (
        f"{status_message(webhook_server, '/hook', 503)}; Retry-After asks for 120 s, "
        "more than the 60 s maximum, so the step fails now"
    )
    assert result["HttpStatus"] == 503
    assert result["Attempts"] == 1
    assert len(webhook_server.requests_to("/hook")) == 1


def test_retry_after_invalid(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    # SUPERSCRIPT TWO is a digit to str.isdigit() and is valid Latin-1 in a header.
    busy = Reply(status=503, headers={"Retry-After": "\u00b2"})
    webhook_server.route("/hook", replies(busy))

    outcome = runner.run((make_job(),), {})

    assert isinstance(outcome, Reschedule)
    assert outcome.countdown_s == 1.0


# --- time limits -----------------------------------------------------------


def timeout_message(server: WebhookServer) -> str:
    return (
        f"webhook call to {server.url('/hook')} timed out after 1 s "
        "(the connector's TimeOut bounds the whole call)"
    )


def test_slow_answer_times_out(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    connector = hook_connector(
        webhook_server, TimeOut="00:00:01", DisableStandardErrorPolicy=True
    )
    write_tenant(config_dir, connector)
    webhook_server.route("/hook", replies(Reply.json("{}", delay_s=2.5)))

    started = time.monotonic()
    result = finished(runner.run((make_job(),), {}))
    elapsed = time.monotonic() - started

    assert elapsed < 2.0
    assert result["ActionStatus"] == "Error"
    assert result["CancelWorkflow"] is True
    assert result["ErrorReason"] == timeout_message(webhook_server)
    assert result["HttpStatus"] is None
    assert result["Attempts"] == 1


def test_timeout_is_retried(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server, TimeOut="00:00:01"))
    webhook_server.route("/hook", replies(Reply.json("{}", delay_s=2.5)))

    outcome = runner.run((make_job(),), {})

    assert isinstance(outcome, Reschedule)
    assert outcome.countdown_s == 1.0
    assert outcome.reason == timeout_message(webhook_server)
    assert outcome.progress.attempts == 1


def test_drip_is_bounded(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    connector = hook_connector(
        webhook_server, TimeOut="00:00:01", DisableStandardErrorPolicy=True
    )
    write_tenant(config_dir, connector)
    # One byte every 0.4 s keeps each socket read under the 1 s timeout, and
    # the whole body takes 4.4 s, so only a deadline for the whole call ends it.
    pieces = [b'{"Status":"Approved"', *[b" "] * 10, b"}"]
    webhook_server.route("/hook", replies(Reply(pieces=pieces, pause_s=0.4)))

    started = time.monotonic()
    result = finished(runner.run((make_job(),), {}))
    elapsed = time.monotonic() - started

    assert elapsed < 2.0
    assert result["ActionStatus"] == "Error"
    assert result["ErrorReason"] == timeout_message(webhook_server)
    assert result["Attempts"] == 1
    assert result["Order"]["Status"] == "New"

    # The cut connection must not be reused for the connector's next call.
    webhook_server.route("/hook", replies(Reply.json('{"Status":"Approved"}')))
    next_result = finished(runner.run((make_job("job-2"),), {}))
    assert next_result["ActionStatus"] == "Success"


def test_header_drip_is_bounded(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    connector = hook_connector(
        webhook_server, TimeOut="00:00:01", DisableStandardErrorPolicy=True
    )
    write_tenant(config_dir, connector)
    # The status line arrives one byte every 0.4 s, so the response headers
    # would take 4 s. The deadline must also cover waiting for them.
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}"
    pieces = [response[i : i + 1] for i in range(10)] + [response[10:]]
    webhook_server.route("/hook", replies(Reply(pieces=pieces, pause_s=0.4, raw=True)))

    started = time.monotonic()
    result = finished(runner.run((make_job(),), {}))
    elapsed = time.monotonic() - started

    assert elapsed < 2.0
    assert result["ActionStatus"] == "Error"
    assert result["ErrorReason"] == timeout_message(webhook_server)
    assert result["HttpStatus"] is None
    assert result["Attempts"] == 1


def test_connection_refused(runner: StepRunner, config_dir: Path) -> None:
    # Nothing listens on this loopback port once the probe socket is closed.
    url = f"http://127.0.0.1:{free_port()}/hook"
    write_tenant(config_dir, {"Name": "Hook", "ConnectorId": "hook-1", "Host": url})

    outcome = runner.run((make_job(),), {})

    assert isinstance(outcome, Reschedule)
    assert outcome.countdown_s == 1.0
    assert outcome.reason == f"connection to {url} failed: connection refused"


# --- response bodies -------------------------------------------------------


@pytest.mark.parametrize(
    ("reply", "http_status"),
    [
        (Reply(status=204), 204),
        (Reply.json("null"), 200),
        (Reply.json("{}"), 200),
        (Reply.json(" \r\n"), 200),
        (Reply(status=200), 200),
    ],
    ids=["204", "null", "empty-object", "whitespace", "empty-200"],
)
def test_empty_body(
    runner: StepRunner,
    config_dir: Path,
    webhook_server: WebhookServer,
    reply: Reply,
    http_status: int,
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    webhook_server.route("/hook", replies(reply))

    result = finished(runner.run((make_job(),), {}))

    assert result["ActionStatus"] == "Success"
    assert result["CancelWorkflow"] is False
    assert result["ErrorReason"] is None
    assert result["HttpStatus"] == http_status
    assert result["Attempts"] == 1
    assert result["Order"] == ORDER
    assert result["ChangedProperties"] == []
    assert result["Messages"] == []
    assert len(result["Events"]) == 1


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ("not json", "is not valid JSON"),
        ("[1, 2]", "is an array; send a JSON object"),
        ('"Approved"', "is a single value; send a JSON object"),
        (
            '{"Status":"Approved","Properties":[{"Key":"k","Value":NaN}]}',
            "is not valid JSON",
        ),
        pytest.param(
            "[" * 100_000,
            "",
            id="deep-nesting",
        ),
    ],
    ids=["not-json", "array", "string", "nan", "deep-nesting"],
)
def test_unusable_body(
    runner: StepRunner,
    config_dir: Path,
    webhook_server: WebhookServer,
    body: str,
    problem: str,
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    webhook_server.route("/hook", replies(Reply.json(body)))

    result = finished(runner.run((make_job(),), {}))

    prefix = f"the response of {webhook_server.url('/hook')} {problem}"
    assert result["ActionStatus"] == "Error"
    assert result["CancelWorkflow"] is True
    assert result["TriggerNewStatus"] == ERROR_STATUS
    assert result["ErrorReason"].startswith(prefix)
    assert result["HttpStatus"] == 200
    assert result["Attempts"] == 1
    assert result["Order"]["Status"] == "New"
    assert result["ChangedProperties"] == ["Errors"]
    assert len(webhook_server.requests_to("/hook")) == 1


def test_wrong_field_type(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    body = '{"Status":"Approved","Tags":"vip"}'
    webhook_server.route("/hook", replies(Reply.json(body)))

    result = finished(runner.run((make_job(),), {}))

    assert result["ActionStatus"] == "Error"
    assert result["ErrorReason"] == (
        "the response is not a valid order update: field Tags: must be a list of "
        "strings, not a string"
    )
    assert result["HttpStatus"] == 200
    assert result["Order"]["Status"] == "New"
    assert result["Order"]["Tags"] == ["new"]


def test_redirect_not_followed(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    moved = Reply(status=302, headers={"Location": webhook_server.url("/moved")})
    webhook_server.route("/hook", replies(moved))
    webhook_server.route("/moved", replies(Reply.json('{"Status":"Approved"}')))

    result = finished(runner.run((make_job(),), {}))

    assert result["ActionStatus"] == "Error"
    assert result["CancelWorkflow"] is True
    assert result["ErrorReason"] == (
        f"{status_message(webhook_server, '/hook', 302)} (to 127.0.0.1); redirects are "
        "not followed, so configure the final URL"
    )
    assert result["HttpStatus"] == 302
    assert result["Attempts"] == 1
    assert result["Order"]["Status"] == "New"
    assert webhook_server.requests_to("/moved") == []


def test_redirect_bad_location(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    moved = Reply(status=302, headers={"Location": "http://[::1"})
    webhook_server.route("/hook", replies(moved))

    result = finished(runner.run((make_job(),), {}))

    assert result["ActionStatus"] == "Error"
    assert result["ErrorReason"].startswith(
        status_message(webhook_server, "/hook", 302)
    )
    assert result["TriggerNewStatus"] == ERROR_STATUS
    assert result["HttpStatus"] == 302
    assert result["Attempts"] == 1
    assert step_error(result)["ReferenceId"] == "hook-1"


def too_large_message(server: WebhookServer, limit: int) -> str:
    return (
        f"the response of {server.url('/hook')} is larger than {limit} bytes; the "
        "webhook should return only the changed properties, or raise "
        "WEBHOOK_WORKER_MAX_RESPONSE_BYTES"
    )


@pytest.mark.parametrize("close_delimited", [False, True], ids=["length", "no-length"])
def test_body_over_cap(
    config_dir: Path, webhook_server: WebhookServer, close_delimited: bool
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    body = '{"Name":"' + "x" * 2000 + '"}'
    reply = Reply.json(body, close_delimited=close_delimited)
    webhook_server.route("/hook", replies(reply))
    runner = make_runner(config_dir, max_response_bytes=1024)

    result = finished(runner.run((make_job(),), {}))
    runner.client.close()

    assert result["ActionStatus"] == "Error"
    assert result["ErrorReason"] == too_large_message(webhook_server, 1024)
    assert result["HttpStatus"] == 200
    assert result["Attempts"] == 1
    assert result["Order"]["Name"] == "Order 1001"


def test_body_at_cap(config_dir: Path, webhook_server: WebhookServer) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    body = '{"Name":"' + "x" * 1013 + '"}'
    assert len(body) == 1024
    webhook_server.route("/hook", replies(Reply.json(body, close_delimited=True)))
    runner = make_runner(config_dir, max_response_bytes=1024)

    result = finished(runner.run((make_job(),), {}))
    runner.client.close()

    assert result["ActionStatus"] == "Success"
    assert result["Order"]["Name"] == "x" * 1013


def test_content_length_invalid(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    # SUPERSCRIPT TWO is a digit to str.isdigit() and is valid Latin-1 in a header.
    reply = Reply.json(
        '{"Status":"Approved"}',
        headers={"Content-Length": "\u00b2"},
        close_delimited=True,
    )
    webhook_server.route("/hook", replies(reply))

    result = finished(runner.run((make_job(),), {}))

    # Reading to the end of the connection or rejecting the body are both
    # acceptable, but the call did happen and did get a 200.
    assert result["HttpStatus"] == 200
    assert result["Attempts"] == 1
    assert not (result["ErrorReason"] or "").startswith("unexpected error")


def gzip_reply(text: str) -> Reply:
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    return Reply(body=gzip.compress(text.encode("utf-8")), headers=headers)


def test_gzip_over_cap(config_dir: Path, webhook_server: WebhookServer) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    reply = gzip_reply('{"Name":"' + "x" * 50_000 + '"}')
    assert len(reply.body) < 1024
    webhook_server.route("/hook", replies(reply))
    runner = make_runner(config_dir, max_response_bytes=1024)

    result = finished(runner.run((make_job(),), {}))
    runner.client.close()

    assert result["ActionStatus"] == "Error"
    assert result["ErrorReason"] == too_large_message(webhook_server, 1024)
    assert result["HttpStatus"] == 200
    assert result["Order"]["Name"] == "Order 1001"


def test_gzip_body_applied(config_dir: Path, webhook_server: WebhookServer) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    webhook_server.route("/hook", replies(gzip_reply('{"Status":"Approved"}')))
    runner = make_runner(config_dir, max_response_bytes=1024)

    result = finished(runner.run((make_job(),), {}))
    runner.client.close()

    assert result["ActionStatus"] == "Success"
    assert result["Order"]["Status"] == "Approved"


# --- request shape ---------------------------------------------------------


def only_request(server: WebhookServer, path: str = "/hook") -> Request:
    requests = server.requests_to(path)
    assert len(requests) == 1, requests
    return requests[0]


def test_request_shape(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    webhook_server.route("/hook", replies(Reply.json("{}")))

    runner.run((make_job(),), {})

    request = only_request(webhook_server)
    assert request.method == "POST"
    assert request.body == ORDER_TEXT.encode("ascii")
    assert (request.header("Content-Type") or "").startswith("application/json")
    assert request.header("Idempotency-Key") == JOB_ID
    assert request.header("X-Correlation-Id") == "corr-7"
    assert "webhook-step-worker/" in (request.header("User-Agent") or "")
    assert request.header("Authorization") is None
    assert request.header("Cookie") is None


def test_no_correlation_header(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    webhook_server.route("/hook", replies(Reply.json("{}")))

    result = finished(runner.run((make_job(correlation_id=None),), {}))

    assert only_request(webhook_server).header("X-Correlation-Id") is None
    assert result["CorrelationId"] is None


def test_bearer_from_env(
    runner: StepRunner,
    config_dir: Path,
    webhook_server: WebhookServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOOK_TOKEN", BEARER_TOKEN)
    write_tenant(
        config_dir, hook_connector(webhook_server, BearerToken="${HOOK_TOKEN}")
    )
    webhook_server.route("/hook", replies(Reply.json("{}")))

    runner.run((make_job(),), {})

    authorization = only_request(webhook_server).header("Authorization")
    assert authorization == f"Bearer {BEARER_TOKEN}"


def test_basic_auth(
    runner: StepRunner,
    config_dir: Path,
    webhook_server: WebhookServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOOK_PASSWORD", BASIC_PASSWORD)
    connector = hook_connector(
        webhook_server, Username="shop", Password="${HOOK_PASSWORD}"
    )
    write_tenant(config_dir, connector)
    webhook_server.route("/hook", replies(Reply.json("{}")))

    runner.run((make_job(),), {})

    pair = base64.b64encode(f"shop:{BASIC_PASSWORD}".encode()).decode("ascii")
    authorization = only_request(webhook_server).header("Authorization")
    assert authorization == f"Basic {pair}"


def test_custom_and_step_headers(
    runner: StepRunner,
    config_dir: Path,
    webhook_server: WebhookServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOOK_API_KEY", API_KEY)
    headers = [
        {"Key": "X-Shop", "Value": "north"},
        {"Key": "X-Api-Key", "Value": "${HOOK_API_KEY}", "Secret": True},
    ]
    write_tenant(config_dir, hook_connector(webhook_server, CustomHeaders=headers))
    webhook_server.route("/hook", replies(Reply.json("{}")))
    step_header = {"Key": "X-Trace", "Value": "trace-9", "KeyGroup": "RequestHeaders"}

    runner.run((make_job(Properties=[step_header]),), {})

    request = only_request(webhook_server)
    assert request.header("X-Shop") == "north"
    assert request.header("X-Api-Key") == API_KEY
    assert request.header("X-Trace") == "trace-9"


def test_inline_host(
    runner: StepRunner,
    config_dir: Path,
    webhook_server: WebhookServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOOK_TOKEN", BEARER_TOKEN)
    monkeypatch.setenv("HOOK_API_KEY", API_KEY)
    secret_header = {"Key": "X-Api-Key", "Value": "${HOOK_API_KEY}", "Secret": True}
    connector = hook_connector(
        webhook_server, BearerToken="${HOOK_TOKEN}", CustomHeaders=[secret_header]
    )
    write_tenant(config_dir, connector)
    webhook_server.route("/inline", replies(Reply.json('{"Status":"Approved"}')))
    properties = [
        {"Key": "Host", "Value": webhook_server.url("/inline")},
        {"Key": "X-Trace", "Value": "trace-9", "KeyGroup": "RequestHeaders"},
    ]

    result = finished(runner.run((make_job(Properties=properties),), {}))

    request = only_request(webhook_server, "/inline")
    sent = " ".join(request.headers.values())
    assert request.header("X-Trace") == "trace-9"
    assert request.header("Authorization") is None
    assert request.header("X-Api-Key") is None
    assert BEARER_TOKEN not in sent
    assert API_KEY not in sent
    assert webhook_server.requests_to("/hook") == []
    assert result["ActionStatus"] == "Success"
    assert result["ConnectorName"] is None
    assert result["ConnectorId"] is None
    assert result["Events"][0]["Message"] == "Order sent to 127.0.0.1"


def test_cookies_not_kept(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    cookie = {"Set-Cookie": "session=tenant-a; Path=/"}
    webhook_server.route("/hook", replies(Reply.json("{}", headers=cookie)))

    finished(runner.run((make_job("job-1"),), {}))
    finished(runner.run((make_job("job-2"),), {}))

    second = webhook_server.requests_to("/hook")[1]
    assert second.header("Cookie") is None


def test_connection_reuse(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    other = {
        "Name": "Other",
        "ConnectorId": "other-1",
        "Host": webhook_server.url("/other"),
    }
    write_tenant(config_dir, hook_connector(webhook_server), other)
    webhook_server.route("/hook", replies(Reply.json('{"Status":"Approved"}')))
    webhook_server.route("/other", replies(Reply.json("{}")))

    for job_id in ("job-1", "job-2", "job-3"):
        finished(runner.run((make_job(job_id),), {}))
    finished(runner.run((make_job("job-4", Connector="Other"),), {}))

    hook_ports = {r.client_port for r in webhook_server.requests_to("/hook")}
    other_ports = {r.client_port for r in webhook_server.requests_to("/other")}
    assert len(webhook_server.requests_to("/hook")) == 3
    assert len(hook_ports) == 1
    assert len(other_ports) == 1
    assert hook_ports.isdisjoint(other_ports)


# --- error entries and missing connectors ----------------------------------


def test_success_clears_step_errors(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    others = [
        {"Key": STEP_ERROR_KEY, "Message": "old", "ReferenceId": "other-1"},
        {"Key": "Payment", "Message": "card declined", "ReferenceId": "hook-1"},
    ]
    order_text = ORDER_TEXT.replace('"Errors":[]', '"Errors":' + json.dumps(others))
    webhook_server.route(
        "/hook",
        replies(Reply(status=422), Reply.json('{"Status":"Approved"}')),
    )

    failed_job = make_job("job-1", order_text=order_text, StopOnError=False)
    failed = runner.run((failed_job,), {})
    assert isinstance(failed, Finished)
    failed_order = jsontext.loads(failed.result_json)["Order"]
    retried_job = {**make_job("job-2"), "Order": failed_order}
    result = finished(runner.run((retried_job,), {}))

    assert len(failed_order["Errors"]) == 3
    assert result["ActionStatus"] == "Success"
    assert result["Order"]["Errors"] == others
    assert result["ChangedProperties"] == ["Status", "Errors"]


def test_error_status_property(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    webhook_server.route("/hook", replies(Reply(status=400)))
    job = make_job(Properties=[{"Key": "ErrorStatus", "Value": "Held"}])
    del job["Step"]["ErrorStatus"]

    result = finished(runner.run((job,), {}))

    assert result["ActionStatus"] == "Error"
    assert result["CancelWorkflow"] is True
    assert result["TriggerNewStatus"] == "Held"


CAMEL_ORDER_TEXT = (
    '{"id":"2002","marketId":"SE","status":"New",'
    '"errors":[{"key":"WebhookWorkflowStep","referenceId":"hook-1","message":"old"}]}'
)


def test_camel_case_order(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    webhook_server.route(
        "/hook", replies(Reply(status=400), Reply.json('{"Status":"Approved"}'))
    )

    failed = finished(runner.run((make_job(order_text=CAMEL_ORDER_TEXT),), {}))
    result = finished(runner.run((make_job(order_text=CAMEL_ORDER_TEXT),), {}))

    added = failed["Order"]["errors"][1]
    assert set(failed["Order"]) == {"id", "marketId", "status", "errors"}
    assert set(added) == {"key", "message", "severity", "occurred", "referenceId"}
    assert added["referenceId"] == "hook-1"
    assert result["Order"] == {
        "id": "2002",
        "marketId": "SE",
        "status": "Approved",
        "errors": [],
    }
    assert result["ChangedProperties"] == ["Status", "Errors"]


@pytest.mark.parametrize("with_file", [True, False], ids=["other-market", "no-file"])
def test_no_connector(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer, with_file: bool
) -> None:
    if with_file:
        write_tenant(
            config_dir, hook_connector(webhook_server, EnabledForMarkets=["NO"])
        )
        reason = f"no 'Hook' connector of tenant {TENANT!r} is enabled for market 'SE'"
    else:
        reason = (
            f"tenant {TENANT!r} has no settings file, so it has no connectors; add a "
            "Host property to the step or create the tenant's settings file"
        )
    webhook_server.route("/hook", replies(Reply.json("{}")))

    result = finished(runner.run((make_job(),), {}))

    assert result["ActionStatus"] == "Error"
    assert result["CancelWorkflow"] is False
    assert result["TriggerNewStatus"] is None
    assert result["ErrorReason"] == reason
    assert result["HttpStatus"] is None
    assert result["Attempts"] == 0
    assert result["ConnectorId"] is None
    assert result["Order"] == ORDER
    assert result["ChangedProperties"] == []
    assert result["Events"] == []
    assert webhook_server.requests == []


# --- secrets ---------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Restore the root handlers, the root level and structlog's defaults."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def start_json_logs() -> None:
    # Call this in the test body. With pytest 9, the sys.stderr seen during
    # fixture setup is closed before the call phase, so logs written there fail.
    configure_logging("json", "INFO")


def logged_events(logged: str) -> list[str]:
    """Return the event names of the log lines, each of which must be JSON."""
    return [json.loads(line)["event"] for line in logged.splitlines() if line]


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("auth", ["bearer", "basic"])
@pytest.mark.parametrize("scenario", ["approve", "401", "timeout"])
def test_secrets_not_logged(
    config_dir: Path,
    webhook_server: WebhookServer,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    auth: str,
    scenario: str,
) -> None:
    monkeypatch.setenv("HOOK_TOKEN", BEARER_TOKEN)
    monkeypatch.setenv("HOOK_PASSWORD", BASIC_PASSWORD)
    monkeypatch.setenv("HOOK_API_KEY", API_KEY)
    credentials = (
        {"BearerToken": "${HOOK_TOKEN}"}
        if auth == "bearer"
        else {"Username": "shop", "Password": "${HOOK_PASSWORD}"}
    )
    secret_header = {"Key": "X-Api-Key", "Value": "${HOOK_API_KEY}", "Secret": True}
    connector = hook_connector(
        webhook_server,
        TimeOut="00:00:01",
        DisableStandardErrorPolicy=True,
        CustomHeaders=[secret_header],
        **credentials,
    )
    write_tenant(config_dir, connector)
    reply = {
        "approve": Reply.json('{"Status":"Approved"}'),
        "401": Reply.json('{"error":"unauthorized"}', status=401),
        "timeout": Reply.json("{}", delay_s=2.5),
    }[scenario]
    webhook_server.route("/hook", replies(reply))
    step_header = {"Key": "X-Signature", "Value": STEP_SECRET}
    step_header["KeyGroup"] = "RequestHeaders"
    runner = make_runner(config_dir)
    start_json_logs()

    outcome = runner.run((make_job(Properties=[step_header]),), {})
    runner.client.close()

    assert isinstance(outcome, Finished)
    logged = capfd.readouterr().err
    events = logged_events(logged)
    basic_pair = base64.b64encode(f"shop:{BASIC_PASSWORD}".encode()).decode()
    assert "webhook.call" in events
    assert "job.finished" in events
    for secret in (BEARER_TOKEN, BASIC_PASSWORD, basic_pair, API_KEY, STEP_SECRET):
        assert secret not in logged
        assert secret not in outcome.result_json


@pytest.mark.usefixtures("restore_logging")
def test_step_header_secret_not_logged(
    config_dir: Path,
    webhook_server: WebhookServer,
    capfd: pytest.CaptureFixture[str],
) -> None:
    connector = hook_connector(webhook_server, DisableStandardErrorPolicy=True)
    write_tenant(config_dir, connector)
    webhook_server.route("/hook", replies(Reply.json("{}")))
    step_header = {"Key": "X-Signature", "Value": " " + STEP_SECRET}
    step_header["KeyGroup"] = "RequestHeaders"
    runner = make_runner(config_dir)
    start_json_logs()

    outcome = runner.run((make_job(Properties=[step_header]),), {})
    runner.client.close()

    logged = capfd.readouterr().err
    assert "job.finished" in logged_events(logged)
    assert STEP_SECRET not in getattr(outcome, "result_json", "")
    assert STEP_SECRET not in logged


# --- the result store ------------------------------------------------------

RESULT_STREAM = "webhook_steps:results"
DEAD_LETTER_STREAM = "webhook_steps:dead"


@pytest.fixture
def store_runner(
    redis_server: RedisServer, redis_client: redis.Redis, config_dir: Path
) -> Iterator[StepRunner]:
    settings = WorkerSettings(
        redis_url=redis_server.url,
        config_dir=config_dir,
        allow_private_networks=True,
    )
    step_runner = build_runner(settings)
    yield step_runner
    step_runner.client.close()
    assert step_runner.store is not None
    step_runner.store.client.close()


def stream_entries(client: redis.Redis, stream: str) -> list[dict[str, str]]:
    """Return the fields of every entry of ``stream``, decoded from bytes."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(stream)  # type: ignore[assignment]
    return [
        {key.decode(): value.decode() for key, value in fields.items()}
        for _entry_id, fields in entries
    ]


def test_store_one_entry_per_job(
    store_runner: StepRunner,
    redis_client: redis.Redis,
    config_dir: Path,
    webhook_server: WebhookServer,
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    webhook_server.route(
        "/hook",
        replies(Reply(status=503), Reply.json('{"Status":"Approved"}')),
    )

    first, _ = run_to_end(store_runner, make_job("job-1"))
    second, _ = run_to_end(store_runner, make_job("job-2"))

    entries = stream_entries(redis_client, RESULT_STREAM)
    assert [entry["job_id"] for entry in entries] == ["job-1", "job-2"]
    assert json.loads(entries[0]["result"]) == first
    assert json.loads(entries[1]["result"]) == second
    assert first["Attempts"] == 2
    assert second["Attempts"] == 1


def test_store_repeat_run(
    store_runner: StepRunner,
    redis_client: redis.Redis,
    config_dir: Path,
    webhook_server: WebhookServer,
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    webhook_server.route("/hook", replies(Reply.json('{"Status":"Approved"}')))

    first = store_runner.run((make_job(),), {})
    again = store_runner.run((make_job(),), {})

    assert isinstance(first, Finished)
    assert isinstance(again, Finished)
    assert first.published is True
    assert again.published is False
    assert again.result_json == first.result_json
    assert len(webhook_server.requests_to("/hook")) == 1
    assert len(stream_entries(redis_client, RESULT_STREAM)) == 1


def test_store_reused_job_id(
    store_runner: StepRunner,
    redis_client: redis.Redis,
    config_dir: Path,
    webhook_server: WebhookServer,
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    webhook_server.route("/hook", replies(Reply.json('{"Status":"Approved"}')))
    other_order = ORDER_TEXT.replace('"1001"', '"2002"')

    first = store_runner.run((make_job(),), {})
    reused = store_runner.run((make_job(order_text=other_order),), {})

    assert isinstance(first, Finished)
    assert isinstance(reused, Finished)
    assert reused.published is False
    assert reused.result_json == first.result_json
    assert len(webhook_server.requests_to("/hook")) == 1
    assert len(stream_entries(redis_client, RESULT_STREAM)) == 1


@pytest.mark.parametrize(
    "job_id",
    [None, "", "x" * 201, "bad\nid", 42],
    ids=["missing", "empty", "too-long", "control", "number"],
)
def test_store_dead_letter(
    store_runner: StepRunner,
    redis_client: redis.Redis,
    config_dir: Path,
    webhook_server: WebhookServer,
    job_id: object,
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    webhook_server.route("/hook", replies(Reply.json("{}")))
    job = make_job()
    del job["JobId"]
    if job_id is not None:
        job["JobId"] = job_id

    outcome = store_runner.run((job,), {})

    assert isinstance(outcome, DeadLettered)
    dead = stream_entries(redis_client, DEAD_LETTER_STREAM)
    assert len(dead) == 1
    assert "no usable JobId" in dead[0]["reason"]
    assert json.loads(dead[0]["payload"])["args"][0]["TenantId"] == TENANT
    assert stream_entries(redis_client, RESULT_STREAM) == []
    assert webhook_server.requests == []
