"""Secret sweep: one run of a real Celery worker, then a search for every secret.

A tenant uses each kind of secret the worker registers: a bearer token, a Basic
password, a signing secret and a secret custom header, all ``${...}``
references, and every job carries a RequestHeaders secret of its own. The
webhooks approve, refuse with 401, fail once with 500, time out, redirect with
a secret in the Location, answer an invalid body and echo credentials back.
Poison messages carry RequestHeaders secrets too. Afterwards the worker's log,
every result entry, every dead-letter entry and every Celery event are searched
for each secret value.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.support.redis_server import RedisServer
from tests.support.webhook_server import Reply, Request, WebhookServer, running_server
from tests.support.worker_process import (
    StreamEntry,
    TaskEvent,
    TaskEventRecorder,
    WorkerNames,
    WorkerProcess,
    publish_task_message,
    read_stream,
    wait_for_entries,
)

TENANT = "sweep"
TOKEN = "tok-sweep-8f3e2a61"
PASSWORD = "pw-sweep-c47d90b2"
USERNAME = "shop"
BASIC_PAIR = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode("ascii")
SIGNING_KEY_TEXT = base64.b64encode(b"sweep-signing-key-5a8c1e").decode("ascii")
SIGNING_SECRET = "whsec_" + SIGNING_KEY_TEXT
HEADER_SECRET = "hdr-sweep-31be77f0"
SCENARIOS = ("approve", "denied", "flaky", "slow", "moved", "garbage")
POISON = ("nameless", "undecodable", "misshapen", "escaped")
ENV = {
    "SWEEP_TOKEN": TOKEN,
    "SWEEP_PASSWORD": PASSWORD,
    "SWEEP_SIGNING": SIGNING_SECRET,
    "SWEEP_HEADER": HEADER_SECRET,
}


def job_secret(name: str) -> str:
    return f"job-secret-{name}-6d0f"


SECRETS = (
    TOKEN,
    PASSWORD,
    BASIC_PAIR,
    SIGNING_SECRET,
    SIGNING_KEY_TEXT,
    HEADER_SECRET,
    *(job_secret(name) for name in (*SCENARIOS, *POISON)),
)


# --- webhooks --------------------------------------------------------------


def echo_credentials(request: Request) -> Reply:
    """Approve, and echo the credentials into a writable order field."""
    echoed = f"{request.header('Authorization')} {request.header('X-Job-Secret')}"
    return Reply.json(json.dumps({"Status": "Approved", "Name": echoed}))


def deny(request: Request) -> Reply:
    body = json.dumps({"error": "denied", "key": request.header("X-Tenant-Key")})
    return Reply.json(body, status=401)


def fail_once() -> Any:
    calls: list[int] = []
    lock = threading.Lock()

    def handle(_request: Request) -> Reply:
        with lock:
            calls.append(1)
            first = len(calls) == 1
        if first:
            return Reply.json('{"error":"try again"}', status=500)
        return Reply.json('{"Status":"Approved"}')

    return handle


def redirect(request: Request) -> Reply:
    location = f"http://127.0.0.1:9/next?token={request.header('X-Job-Secret')}"
    return Reply(status=302, headers={"Location": location})


def garbage(request: Request) -> Reply:
    return Reply.json(f"not json {request.header('Authorization')}")


def connector(name: str, server: WebhookServer, **fields: Any) -> dict[str, Any]:
    return {
        "Name": name,
        "ConnectorId": f"sweep-{name.lower()}",
        "Host": server.url(f"/{name.lower()}"),
        "TimeOut": "00:00:02",
        "SigningSecret": "${SWEEP_SIGNING}",
        "CustomHeaders": [
            {"Key": "X-Tenant-Key", "Value": "${SWEEP_HEADER}", "Secret": True},
            {"Key": "X-Api-Version", "Value": "2024-01"},
        ],
        **fields,
    }


def tenant_document(server: WebhookServer) -> dict[str, Any]:
    bearer = {"BearerToken": "${SWEEP_TOKEN}"}
    basic = {"Username": USERNAME, "Password": "${SWEEP_PASSWORD}"}
    return {
        "Connectors": [
            connector("Approve", server, **bearer),
            connector("Denied", server, **basic),
            connector("Flaky", server, **bearer),
            connector(
                "Slow",
                server,
                TimeOut="00:00:01",
                DisableStandardErrorPolicy=True,
                **basic,
            ),
            connector("Moved", server, **bearer),
            connector("Garbage", server, **basic),
        ]
    }


# --- jobs ------------------------------------------------------------------


def job(name: str, job_id: str | None, connector_name: str) -> dict[str, Any]:
    header = {
        "Key": "X-Job-Secret",
        "Value": job_secret(name),
        "KeyGroup": "RequestHeaders",
    }
    document: dict[str, Any] = {
        "TenantId": TENANT,
        "CorrelationId": f"corr-{name}",
        "Step": {"Connector": connector_name, "Properties": [header]},
        "Order": {"Id": f"ORD-{name}", "MarketId": "SE", "Status": "New"},
    }
    if job_id is not None:
        document["JobId"] = job_id
    return document


@dataclass
class SweepRun:
    """Everything one worker run left behind."""

    job_ids: dict[str, str]
    # Celery task id of the poison message whose key group is JSON-escaped.
    escaped_task_id: str = ""
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    result_texts: list[str] = field(default_factory=list)
    dead: list[StreamEntry] = field(default_factory=list)
    events: list[TaskEvent] = field(default_factory=list)
    log: str = ""
    requests: list[Request] = field(default_factory=list)


def send_jobs(worker: WorkerProcess, job_ids: dict[str, str]) -> str:
    """Publish every job and poison message; return the escaped poison's task id."""
    broker, queue = worker.redis_url, worker.names.queue
    for name in SCENARIOS:
        text = json.dumps(job(name, job_ids[name], name.capitalize()))
        publish_task_message(broker, queue, f"[{text}]")

    nameless = json.dumps(job("nameless", None, "Approve"))
    publish_task_message(broker, queue, f"[{nameless}]")

    # NaN is not JSON, so the worker's codec cannot decode this message.
    undecodable = json.dumps(job("undecodable", job_ids["undecodable"], "Approve"))
    undecodable = undecodable[:-1] + ', "Weight": NaN}'
    publish_task_message(broker, queue, f"[{undecodable}]")

    # The args are an object, not an array: Celery cannot call the task with it.
    misshapen = json.dumps(job("misshapen", job_ids["misshapen"], "Approve"))
    publish_task_message(broker, queue, misshapen)

    # "Request\u0048eaders" is RequestHeaders with one letter JSON-escaped, and
    # the text after the array makes the body undecodable.
    escaped = json.dumps(job("escaped", job_ids["escaped"], "Approve"))
    escaped = escaped.replace('"RequestHeaders"', '"Request\\u0048eaders"')
    return publish_task_message(broker, queue, f"[{escaped}] trailing text")


@pytest.fixture(scope="module")
def sweep(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SweepRun]:
    folder = tmp_path_factory.mktemp("secret-sweep")
    config_dir = folder / "tenants"
    config_dir.mkdir()
    names = WorkerNames.unique("sweep")
    job_ids = {name: f"sweep-{name}-{time.time_ns()}" for name in (*SCENARIOS, *POISON)}
    run = SweepRun(job_ids)
    client = redis_server.client()
    recorder = TaskEventRecorder(client)

    with running_server() as server:
        server.route("/approve", echo_credentials)
        server.route("/denied", deny)
        server.route("/flaky", fail_once())
        server.route("/slow", lambda _r: Reply.json("{}", delay_s=2.5))
        server.route("/moved", redirect)
        server.route("/garbage", garbage)
        document = json.dumps(tenant_document(server), indent=2)
        (config_dir / f"{TENANT}.json").write_text(document, encoding="utf-8")
        worker = WorkerProcess(
            redis_url=redis_server.url,
            config_dir=config_dir,
            log_path=folder / "worker.log",
            names=names,
            concurrency=4,
            extra_env=ENV,
        )
        try:
            worker.start()
            run.escaped_task_id = send_jobs(worker, job_ids)
            expected = {job_ids[name] for name in (*SCENARIOS, "undecodable")}
            wait_for_entries(
                client,
                names.result_stream,
                len(expected),
                job_ids=expected,
                timeout_s=40,
            )
            wait_for_entries(client, names.dead_letter_stream, 4, timeout_s=20)
            recorder.drain(timeout_s=1.0, max_s=5.0)
        finally:
            worker.stop()
            recorder.drain(timeout_s=0.2, max_s=2.0)
            recorder.close()
        run.requests = list(server.requests)

    for entry in read_stream(client, names.result_stream):
        run.result_texts.append(json.dumps(entry.fields))
        run.results[entry.fields["job_id"]] = entry.result
    run.dead = read_stream(client, names.dead_letter_stream)
    run.events = recorder.events
    run.log = worker.log_text()
    client.close()
    yield run


def result_of(sweep: SweepRun, name: str) -> dict[str, Any]:
    return sweep.results[sweep.job_ids[name]]


def found_secrets(texts: list[str]) -> list[str]:
    return [secret for secret in SECRETS if any(secret in text for text in texts)]


# --- the run did what it should --------------------------------------------


def test_secrets_sent(sweep: SweepRun) -> None:
    by_path = {request.path: request for request in sweep.requests}
    approve = by_path["/approve"]
    assert approve.header("Authorization") == f"Bearer {TOKEN}"
    assert by_path["/denied"].header("Authorization") == f"Basic {BASIC_PAIR}"
    assert approve.header("X-Tenant-Key") == HEADER_SECRET
    assert approve.header("X-Job-Secret") == job_secret("approve")
    assert (approve.header("webhook-signature") or "").startswith("v1,")


def test_scenario_results(sweep: SweepRun) -> None:
    assert result_of(sweep, "approve")["ActionStatus"] == "Success"
    assert result_of(sweep, "denied")["HttpStatus"] == 401
    assert result_of(sweep, "flaky")["ActionStatus"] == "Success"
    assert result_of(sweep, "flaky")["Attempts"] == 2
    assert "timed out" in result_of(sweep, "slow")["ErrorReason"]
    assert result_of(sweep, "moved")["HttpStatus"] == 302
    assert "not valid JSON" in result_of(sweep, "garbage")["ErrorReason"]
    assert result_of(sweep, "undecodable")["ActionStatus"] == "Error"


def test_poison_dead_lettered(sweep: SweepRun) -> None:
    kinds = sorted(entry.fields["kind"] for entry in sweep.dead)
    assert kinds == ["invalid_task", "no_job_id", "not_decodable", "not_decodable"]


def test_echo_redacted(sweep: SweepRun) -> None:
    name = result_of(sweep, "approve")["Order"]["Name"]
    assert name == "Bearer [REDACTED] [REDACTED]"


def test_requests_stay_local(sweep: SweepRun) -> None:
    paths = sorted({request.path for request in sweep.requests})
    assert paths == sorted(f"/{name}" for name in SCENARIOS)


# --- no secret anywhere ----------------------------------------------------


def test_log_clean(sweep: SweepRun) -> None:
    assert "webhook.call" in sweep.log
    assert "message.rejected" in sweep.log
    assert found_secrets([sweep.log]) == []


def test_results_clean(sweep: SweepRun) -> None:
    assert len(sweep.result_texts) == len(SCENARIOS) + 1
    assert found_secrets(sweep.result_texts) == []


def is_escaped_poison(sweep: SweepRun, entry: StreamEntry) -> bool:
    return sweep.escaped_task_id in entry.fields["payload"]


def test_dead_letters_clean(sweep: SweepRun) -> None:
    plain = [e for e in sweep.dead if not is_escaped_poison(sweep, e)]
    texts = [json.dumps(entry.fields) for entry in plain]
    assert len(texts) == 3
    assert found_secrets(texts) == []


def test_escaped_dead_letter_clean(sweep: SweepRun) -> None:
    escaped = [e for e in sweep.dead if is_escaped_poison(sweep, e)]
    texts = [json.dumps(entry.fields) for entry in escaped]
    assert len(texts) == 1
    assert found_secrets(texts) == []


def test_events_clean(sweep: SweepRun) -> None:
    texts = [json.dumps(event.fields) for event in sweep.events]
    types = {event.fields.get("type") for event in sweep.events}
    assert "task-succeeded" in types
    assert "task-retried" in types
    assert found_secrets(texts) == []
