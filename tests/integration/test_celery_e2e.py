"""End to end: a real Celery worker process, a private Redis and a loopback webhook.

Most tests share one worker for the module (threads pool, 4 slots). Tests that
need their own settings, such as one slot or an inspection of the queue before
anything consumes it, start their own worker.
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from tests.support.redis_server import RedisServer
from tests.support.webhook_server import (
    Handler,
    Reply,
    Request,
    WebhookServer,
    running_server,
)
from tests.support.worker_process import (
    StreamEntry,
    TaskEvent,
    TaskEventRecorder,
    WorkerNames,
    WorkerProcess,
    publish_task_message,
    read_stream,
    running_worker,
    submit_with_cli,
    wait_for_entries,
)

# The order as the workflow engine writes it, compact, so each number's text can
# be searched for verbatim in what the webhook receives and in the result.
ORDER_JSON = (
    '{"Id":"ORD-1001","MarketId":"SE","Status":"New","Total":99.90,'
    '"Big":12345678901234567890.000100,"Tiny":1.50e-7,'
    '"Typed":{"__type__":"decimal","__value__":"99.90"},'
    '"Lines":[{"Sku":"A-1","Price":19.990,"Qty":2}],"Tags":["vip"],'
    '"Customer":{"Email":"e2e.buyer@example.com"}}'
)
# Customer data in the order, which only the webhook and the result may carry.
CUSTOMER_EMAIL = "e2e.buyer@example.com"
VERBATIM_TEXTS = (
    '"Total":99.90',
    '"Big":12345678901234567890.000100',
    '"Tiny":1.50e-7',
    '"Typed":{"__type__":"decimal","__value__":"99.90"}',
    '"Price":19.990',
)


def new_id(label: str) -> str:
    return f"{label}-{uuid.uuid4().hex[:12]}"


def write_tenant(
    config_dir: Path, tenant_id: str, connectors: list[dict[str, Any]]
) -> None:
    document = {"Connectors": connectors, "MarketGroups": {}}
    path = config_dir / f"{tenant_id}.json"
    path.write_text(json.dumps(document, indent=2), encoding="utf-8")


def connector(name: str, connector_id: str, host: str, **fields: Any) -> dict[str, Any]:
    return {
        "Name": name,
        "ConnectorId": connector_id,
        "Host": host,
        "TimeOut": "00:00:02",
        **fields,
    }


def job_text(
    *,
    job_id: str | None,
    tenant_id: str | None,
    step: dict[str, Any],
    order_json: str = ORDER_JSON,
    **fields: Any,
) -> str:
    """Return a job's JSON text with ``order_json`` inserted as written."""
    head: dict[str, Any] = {}
    if job_id is not None:
        head["JobId"] = job_id
    if tenant_id is not None:
        head["TenantId"] = tenant_id
    head["CorrelationId"] = f"corr-{job_id}"
    head["Step"] = step
    head.update(fields)
    text = json.dumps(head, separators=(",", ":"))
    return text[:-1] + ',"Order":' + order_json + "}"


def webhook_step(connector_name: str = "Webhook", **fields: Any) -> dict[str, Any]:
    return {"Connector": connector_name, "Properties": [], **fields}


def answer(text: str, status: int = 200) -> Handler:
    def handler(_request: Request) -> Reply:
        return Reply.json(text, status=status)

    return handler


def entry_text(entry: StreamEntry) -> str:
    return json.dumps(entry.fields)


@pytest.fixture(scope="module")
def webhook() -> Iterator[WebhookServer]:
    with running_server() as server:
        yield server


@pytest.fixture(scope="module")
def tenants_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e-tenants")


@pytest.fixture(scope="module")
def worker(
    redis_server: RedisServer,
    tenants_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[WorkerProcess]:
    log_path = tmp_path_factory.mktemp("e2e-worker") / "worker.log"
    with running_worker(
        redis_url=redis_server.url,
        config_dir=tenants_dir,
        log_path=log_path,
        names=WorkerNames.unique("e2e-shared"),
        concurrency=4,
    ) as process:
        yield process


@pytest.fixture
def client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    # Not the redis_client fixture: its FLUSHDB would drop the shared worker's
    # queue bindings between tests.
    connection = redis_server.client()
    yield connection
    connection.close()


@pytest.fixture
def tenant(tenants_dir: Path, webhook: WebhookServer) -> tuple[str, str, str]:
    """A fresh tenant with one Webhook connector, as (tenant id, connector id, path)."""
    tenant_id = new_id("tenant")
    connector_id = new_id("hook")
    path = f"/{connector_id}"
    write_tenant(
        tenants_dir,
        tenant_id,
        [connector("Webhook", connector_id, webhook.url(path))],
    )
    return tenant_id, connector_id, path


def send(worker: WorkerProcess, text: str) -> float:
    """Publish a job as an outside producer and return time.time() after sending."""
    publish_task_message(worker.redis_url, worker.names.queue, f"[{text}]")
    return time.time()


def result_of(
    client: redis.Redis, worker: WorkerProcess, job_id: str, timeout_s: float = 20.0
) -> StreamEntry:
    entries = wait_for_entries(
        client, worker.names.result_stream, 1, job_ids={job_id}, timeout_s=timeout_s
    )
    return entries[0]


@pytest.mark.parametrize("producer", ["cli", "raw"])
def test_approve_end_to_end(
    producer: str,
    worker: WorkerProcess,
    webhook: WebhookServer,
    tenant: tuple[str, str, str],
    client: redis.Redis,
    tmp_path: Path,
) -> None:
    tenant_id, connector_id, path = tenant
    webhook.route(path, answer('{"Status":"Approved","Tags":["checked"]}'))
    job_id = new_id("approve")
    text = job_text(job_id=job_id, tenant_id=tenant_id, step=webhook_step())

    if producer == "cli":
        job_file = tmp_path / "job.json"
        job_file.write_text(text, encoding="utf-8")
        assert submit_with_cli(worker.env, [job_file]) == [job_id]
    else:
        send(worker, text)

    entry = result_of(client, worker, job_id)
    result = entry.result
    requests = webhook.requests_to(path)
    assert len(requests) == 1
    sent_body = requests[0].body.decode("utf-8")
    for number_text in VERBATIM_TEXTS:
        assert number_text in sent_body, f"webhook body lost {number_text}"
        assert number_text in entry.fields["result"], f"result lost {number_text}"
    assert set(entry.fields) == {"result", "job_id"}
    assert entry.fields["job_id"] == job_id
    assert result["SchemaVersion"] == 1
    assert result["JobId"] == job_id
    assert result["TenantId"] == tenant_id
    assert result["CorrelationId"] == f"corr-{job_id}"
    assert result["OrderId"] == "ORD-1001"
    assert result["ActionStatus"] == "Success"
    assert result["CancelWorkflow"] is False
    assert result["TriggerNewStatus"] is None
    assert result["ErrorReason"] is None
    assert result["HttpStatus"] == 200
    assert result["Attempts"] == 1
    assert result["ConnectorName"] == "Webhook"
    assert result["ConnectorId"] == connector_id
    assert result["ChangedProperties"] == ["Status", "Tags"]
    assert result["Order"]["Status"] == "Approved"
    assert result["Order"]["Tags"] == ["vip", "checked"]
    assert result["Events"][0]["Category"] == "Exported"
    assert result["Events"][0]["Message"] == f"Order sent to {connector_id}"
    assert requests[0].header("Idempotency-Key") == job_id
    assert requests[0].header("X-Correlation-Id") == f"corr-{job_id}"


def test_log_lines_carry_ids(
    worker: WorkerProcess,
    webhook: WebhookServer,
    tenant: tuple[str, str, str],
    client: redis.Redis,
) -> None:
    tenant_id, connector_id, path = tenant
    webhook.route(path, answer("{}"))
    job_id = new_id("logs")
    send(worker, job_text(job_id=job_id, tenant_id=tenant_id, step=webhook_step()))
    result_of(client, worker, job_id)
    worker.wait_for_record(
        lambda r: r.get("event") == "job.finished" and r.get("job_id") == job_id,
        description=f"job.finished line of {job_id}",
    )

    lines = [line for line in worker.log_text().splitlines() if job_id in line]
    for line in lines:
        assert isinstance(json.loads(line), dict), f"not a JSON object: {line}"
    for event in ("webhook.call", "job.finished"):
        records = worker.records_of(event, job_id)
        assert len(records) == 1, f"{event}: {records}"
        assert records[0]["tenant_id"] == tenant_id
        assert records[0]["order_id"] == "ORD-1001"
        assert records[0]["connector_id"] == connector_id
        assert records[0]["level"] == "info"
    assert worker.records_of("webhook.call", job_id)[0]["status"] == 200
    assert worker.records_of("job.finished", job_id)[0]["action_status"] == "Success"


def test_save_delay_frees_slot(
    redis_server: RedisServer,
    webhook: WebhookServer,
    tenants_dir: Path,
    tenant: tuple[str, str, str],
    client: redis.Redis,
    tmp_path: Path,
) -> None:
    tenant_id, _connector_id, path = tenant
    webhook.route(path, answer("{}"))
    delayed_id = new_id("delayed")
    immediate_id = new_id("immediate")
    delayed = job_text(
        job_id=delayed_id,
        tenant_id=tenant_id,
        step=webhook_step(RunAfterOrderIsSaved=True),
    )
    immediate = job_text(job_id=immediate_id, tenant_id=tenant_id, step=webhook_step())

    with running_worker(
        redis_url=redis_server.url,
        config_dir=tenants_dir,
        log_path=tmp_path / "worker.log",
        names=WorkerNames.unique("e2e-one-slot"),
        concurrency=1,
    ) as one_slot:
        recorder = TaskEventRecorder(client)
        try:
            delayed_task = publish_task_message(
                one_slot.redis_url, one_slot.names.queue, f"[{delayed}]"
            )
            delayed_sent = time.time()
            immediate_sent = send(one_slot, immediate)
            wait_for_entries(
                client,
                one_slot.names.result_stream,
                2,
                job_ids={delayed_id, immediate_id},
            )
            recorder.wait_for(
                lambda e: (
                    e.get("type") == "task-succeeded" and e.get("uuid") == delayed_task
                )
            )
        finally:
            recorder.close()

    by_job = {r.header("Idempotency-Key"): r for r in webhook.requests_to(path)}
    delayed_wait_s = by_job[delayed_id].received_at - delayed_sent
    immediate_wait_s = by_job[immediate_id].received_at - immediate_sent
    delay_records = one_slot.records_of("job.rescheduled", delayed_id)
    assert delayed_wait_s >= 1.0
    assert immediate_wait_s < 0.8
    assert by_job[immediate_id].received_at < by_job[delayed_id].received_at
    assert len(delay_records) == 1
    assert delay_records[0]["countdown_s"] == 1.0
    assert delay_records[0]["attempts"] == 0
    assert one_slot.records_of("job.rescheduled", immediate_id) == []
    # The worker keeps the delayed job's own message until it is due, so the
    # job is received once, with its ETA, and never published a second time.
    received = [
        event.fields
        for event in recorder.of_type("task-received")
        if event.fields.get("uuid") == delayed_task
    ]
    assert len(received) == 1
    assert received[0]["eta"] is not None


def test_retry_after_503(
    worker: WorkerProcess,
    webhook: WebhookServer,
    tenant: tuple[str, str, str],
    client: redis.Redis,
) -> None:
    tenant_id, _connector_id, path = tenant
    calls = iter([503, 200])
    lock = threading.Lock()

    def flaky(_request: Request) -> Reply:
        with lock:
            status = next(calls, 200)
        return Reply.json('{"Status":"Approved"}' if status == 200 else "{}", status)

    webhook.route(path, flaky)
    job_id = new_id("retry")
    recorder = TaskEventRecorder(client)
    try:
        task_id = publish_task_message(
            worker.redis_url,
            worker.names.queue,
            f"[{job_text(job_id=job_id, tenant_id=tenant_id, step=webhook_step())}]",
        )
        result = result_of(client, worker, job_id).result
        received = recorder.wait_for(
            lambda e: e.get("type") == "task-received" and e.get("uuid") == task_id,
            count=2,
        )
    finally:
        recorder.close()
    requests = webhook.requests_to(path)
    rescheduled = worker.records_of("job.rescheduled", job_id)
    summary = (
        f"(job_id={job_id}, tenant={tenant_id}, order=ORD-1001, connector=Webhook)"
    )
    assert result["ActionStatus"] == "Success"
    assert result["Attempts"] == 2
    assert result["HttpStatus"] == 200
    assert result["ErrorReason"] is None
    assert len(result["Messages"]) == 1
    assert "attempt 1 failed" in result["Messages"][0]
    assert "503" in result["Messages"][0]
    assert len(requests) == 2
    assert requests[1].received_at - requests[0].received_at >= 1.0
    assert len(rescheduled) == 1
    assert rescheduled[0]["countdown_s"] == 1.0
    assert rescheduled[0]["attempts"] == 1
    # The retry is a message the worker wrote itself, so its argsrepr is its own.
    assert received[1]["args"] == summary
    assert received[1]["kwargs"] == "{}"


def test_422_stops_workflow(
    worker: WorkerProcess,
    webhook: WebhookServer,
    tenant: tuple[str, str, str],
    client: redis.Redis,
) -> None:
    tenant_id, connector_id, path = tenant
    webhook.route(path, answer('{"error":"no stock"}', status=422))
    job_id = new_id("reject")
    step = webhook_step(StopOnError=True, ErrorStatus="ExportFailed")
    send(worker, job_text(job_id=job_id, tenant_id=tenant_id, step=step))

    result = result_of(client, worker, job_id).result
    error_entry = result["Order"]["Errors"][-1]
    assert result["ActionStatus"] == "Error"
    assert result["CancelWorkflow"] is True
    assert result["TriggerNewStatus"] == "ExportFailed"
    assert result["HttpStatus"] == 422
    assert result["Attempts"] == 1
    assert "422" in result["ErrorReason"]
    assert result["ChangedProperties"] == ["Errors"]
    assert error_entry["Key"] == "WebhookWorkflowStep"
    assert error_entry["Severity"] == "Error"
    assert error_entry["ReferenceId"] == connector_id
    assert len(webhook.requests_to(path)) == 1
    assert worker.records_of("job.rescheduled", job_id) == []


def test_duplicate_after_result(
    worker: WorkerProcess,
    webhook: WebhookServer,
    tenant: tuple[str, str, str],
    client: redis.Redis,
) -> None:
    tenant_id, _connector_id, path = tenant
    webhook.route(path, answer('{"Status":"Approved"}'))
    job_id = new_id("twice")
    text = job_text(job_id=job_id, tenant_id=tenant_id, step=webhook_step())

    send(worker, text)
    first = result_of(client, worker, job_id)
    send(worker, text)
    worker.wait_for_record(
        lambda r: r.get("event") == "job.duplicate" and r.get("job_id") == job_id,
        description=f"job.duplicate line of {job_id}",
    )

    entries = [
        e
        for e in read_stream(client, worker.names.result_stream)
        if e.fields.get("job_id") == job_id
    ]
    assert entries == [first]
    assert len(webhook.requests_to(path)) == 1
    assert len(worker.records_of("job.finished", job_id)) == 1


def test_duplicate_while_running(
    worker: WorkerProcess,
    webhook: WebhookServer,
    tenant: tuple[str, str, str],
    client: redis.Redis,
) -> None:
    tenant_id, _connector_id, path = tenant
    # The first call holds the lease for 0.5 s, so the copy finds it taken.
    webhook.route(path, lambda _r: Reply.json('{"Status":"Approved"}', delay_s=0.5))
    job_id = new_id("parallel")
    text = job_text(job_id=job_id, tenant_id=tenant_id, step=webhook_step())

    send(worker, text)
    send(worker, text)
    result_of(client, worker, job_id)
    # The copy retries once the lease (TimeOut 2 s + 5 s margin) has expired.
    worker.wait_for_record(
        lambda r: r.get("event") == "job.duplicate" and r.get("job_id") == job_id,
        timeout_s=15.0,
        description=f"job.duplicate line of {job_id}",
    )

    entries = wait_for_entries(client, worker.names.result_stream, 1, job_ids={job_id})
    assert len(entries) == 1
    assert len(webhook.requests_to(path)) == 1
    assert len(worker.records_of("job.lease_held", job_id)) >= 1


def test_missing_tenant_id(
    worker: WorkerProcess,
    webhook: WebhookServer,
    client: redis.Redis,
) -> None:
    job_id = new_id("invalid")
    send(worker, job_text(job_id=job_id, tenant_id=None, step=webhook_step()))

    entry = result_of(client, worker, job_id)
    result = entry.result
    calls = [r for r in webhook.requests if r.header("Idempotency-Key") == job_id]
    assert result["ActionStatus"] == "Error"
    assert result["CancelWorkflow"] is True
    assert "TenantId" in result["ErrorReason"]
    assert result["Attempts"] == 0
    assert result["HttpStatus"] is None
    assert result["OrderId"] == "ORD-1001"
    assert calls == []
    assert worker.records_of("job.rescheduled", job_id) == []
    assert len(worker.records_of("job.invalid", job_id)) == 1


def test_missing_job_id(
    worker: WorkerProcess,
    webhook: WebhookServer,
    tenant: tuple[str, str, str],
    client: redis.Redis,
) -> None:
    tenant_id, _connector_id, path = tenant
    webhook.route(path, answer("{}"))
    marker = new_id("no-job-id")
    nameless = job_text(
        job_id=None, tenant_id=tenant_id, step=webhook_step(), CorrelationId=marker
    )
    valid_id = new_id("after-dead")
    valid = job_text(job_id=valid_id, tenant_id=tenant_id, step=webhook_step())

    send(worker, nameless)
    dead = wait_for_entries(
        client,
        worker.names.dead_letter_stream,
        1,
        match=lambda e: marker in e.fields.get("payload", ""),
    )
    send(worker, valid)
    result = result_of(client, worker, valid_id).result

    assert len(dead) == 1
    assert set(dead[0].fields) == {"reason", "kind", "job_id", "payload"}
    assert dead[0].fields["kind"] == "no_job_id"
    assert "JobId" in dead[0].fields["reason"]
    assert '"Total":99.90' in dead[0].fields["payload"]
    assert result["ActionStatus"] == "Success"
    assert len(webhook.requests_to(path)) == 1
    assert not any(
        marker in e.fields["result"]
        for e in read_stream(client, worker.names.result_stream)
    )


def test_cli_passes_celery_options(
    redis_server: RedisServer, tenants_dir: Path, tmp_path: Path
) -> None:
    nodename = new_id("e2e-node")
    process = WorkerProcess(
        redis_url=redis_server.url,
        config_dir=tenants_dir,
        log_path=tmp_path / "worker.log",
        names=WorkerNames.unique("e2e-options"),
        concurrency=1,
        extra_args=["--hostname", f"{nodename}@%h", "--without-mingle"],
    )
    try:
        process.start(ready_timeout_s=20.0)
    finally:
        process.stop()

    ready = [
        r for r in process.log_records() if str(r.get("event", "")).endswith(" ready.")
    ]
    assert len(ready) == 1
    assert ready[0]["event"].startswith(f"{nodename}@")


class SecretCase:
    """Three jobs whose connectors or headers carry secrets: approve, 401, timeout."""

    def __init__(self, webhook: WebhookServer, config_dir: Path) -> None:
        suffix = uuid.uuid4().hex
        self.token = f"e2e-bearer-{suffix}"
        self.username = "e2e-user"
        self.password = f"e2e-basic-{suffix}"
        self.job_header = f"e2e-job-header-{suffix}"
        self.basic = base64.b64encode(
            f"{self.username}:{self.password}".encode()
        ).decode("ascii")

        self.tenant_id = new_id("secret-tenant")
        self.paths = {
            "approve": f"/secret-approve-{suffix}",
            "denied": f"/secret-denied-{suffix}",
            "slow": f"/secret-slow-{suffix}",
        }
        webhook.route(self.paths["approve"], answer('{"Status":"Approved"}'))
        webhook.route(self.paths["denied"], answer('{"error":"denied"}', status=401))
        webhook.route(self.paths["slow"], lambda _r: Reply.json("{}", delay_s=3.0))

        write_tenant(
            config_dir,
            self.tenant_id,
            [
                connector(
                    "Webhook",
                    "bearer",
                    webhook.url(self.paths["approve"]),
                    BearerToken="${E2E_TOKEN}",
                ),
                connector(
                    "WebhookBasic",
                    "basic",
                    webhook.url(self.paths["denied"]),
                    Username=self.username,
                    Password="${E2E_PASSWORD}",
                ),
                connector(
                    "WebhookSlow",
                    "slow",
                    webhook.url(self.paths["slow"]),
                    TimeOut="00:00:01",
                    DisableStandardErrorPolicy=True,
                ),
            ],
        )

        header = {
            "Key": "Authorization",
            "Value": self.job_header,
            "KeyGroup": "RequestHeaders",
        }
        self.job_ids = {name: new_id(f"secret-{name}") for name in self.paths}
        self.jobs = {
            "approve": webhook_step("Webhook"),
            "denied": webhook_step("WebhookBasic"),
            "slow": webhook_step("WebhookSlow", Properties=[header]),
        }

    @property
    def env(self) -> dict[str, str]:
        return {"E2E_TOKEN": self.token, "E2E_PASSWORD": self.password}

    @property
    def secret_values(self) -> list[str]:
        return [self.token, self.password, self.job_header, self.basic]

    def write_jobs(self, directory: Path) -> list[Path]:
        files = []
        for name, step in self.jobs.items():
            path = directory / f"{name}.json"
            text = job_text(
                job_id=self.job_ids[name], tenant_id=self.tenant_id, step=step
            )
            path.write_text(text, encoding="utf-8")
            files.append(path)
        return files

    def nameless_job(self) -> str:
        """Return the slow job, header secret included, without its JobId."""
        return job_text(job_id=None, tenant_id=self.tenant_id, step=self.jobs["slow"])

    def summary(self, name: str) -> str:
        connector_name = self.jobs[name]["Connector"]
        return (
            f"(job_id={self.job_ids[name]}, tenant={self.tenant_id}, "
            f"order=ORD-1001, connector={connector_name})"
        )


@dataclass
class SecretRun:
    """What one worker run of the SecretCase jobs left behind."""

    case: SecretCase
    queued: list[dict[str, Any]]
    results: dict[str, StreamEntry]
    dead: list[StreamEntry]
    events: list[TaskEvent]
    log: str
    requests: dict[str, list[Request]]


@pytest.fixture(scope="module")
def secret_run(
    redis_server: RedisServer,
    webhook: WebhookServer,
    tmp_path_factory: pytest.TempPathFactory,
) -> SecretRun:
    """Submit the secret jobs, read the queue, then run a worker until all finish."""
    folder = tmp_path_factory.mktemp("e2e-secrets")
    config_dir = folder / "tenants"
    config_dir.mkdir()
    case = SecretCase(webhook, config_dir)

    names = WorkerNames.unique("e2e-secrets")
    client = redis_server.client()
    process = WorkerProcess(
        redis_url=redis_server.url,
        config_dir=config_dir,
        log_path=folder / "worker.log",
        names=names,
        concurrency=3,
        extra_env=case.env,
    )

    # Subscribed before submitting, so the CLI's task-sent events are recorded too.
    recorder = TaskEventRecorder(client)
    try:
        submit_with_cli(process.env, case.write_jobs(folder))
        queued = [json.loads(raw) for raw in client.lrange(names.queue, 0, -1)]
        # The CLI rejects a job without JobId, so a raw producer sends this one.
        publish_task_message(redis_server.url, names.queue, f"[{case.nameless_job()}]")

        process.start()
        entries = wait_for_entries(
            client, names.result_stream, 3, job_ids=set(case.job_ids.values())
        )
        dead = wait_for_entries(client, names.dead_letter_stream, 1)
        # Task events arrive in buffered batches, so wait until all four succeeded.
        deadline = time.monotonic() + 10
        while len(recorder.of_type("task-succeeded")) < 4:
            if time.monotonic() > deadline:
                break
            recorder.drain(timeout_s=0.5)
    finally:
        process.stop()
        recorder.drain(timeout_s=0.2)
        recorder.close()
        client.close()

    return SecretRun(
        case=case,
        queued=queued,
        results={e.fields["job_id"]: e for e in entries},
        dead=dead,
        events=recorder.events,
        log=process.log_text(),
        requests={name: webhook.requests_to(p) for name, p in case.paths.items()},
    )


def test_secrets_reach_webhook(secret_run: SecretRun) -> None:
    case = secret_run.case
    requests = secret_run.requests
    assert requests["approve"][0].header("Authorization") == f"Bearer {case.token}"
    assert requests["denied"][0].header("Authorization") == f"Basic {case.basic}"
    assert requests["slow"][0].header("Authorization") == case.job_header


def test_secret_results(secret_run: SecretRun) -> None:
    case = secret_run.case
    results = {
        name: secret_run.results[job_id].result for name, job_id in case.job_ids.items()
    }
    assert results["approve"]["ActionStatus"] == "Success"
    assert results["denied"]["ActionStatus"] == "Warning"
    assert results["denied"]["HttpStatus"] == 401
    assert results["denied"]["Attempts"] == 1
    assert results["slow"]["ActionStatus"] == "Warning"
    assert "timed out" in results["slow"]["ErrorReason"]
    assert results["slow"]["Attempts"] == 1


def test_secrets_not_in_log(secret_run: SecretRun) -> None:
    assert "webhook.call" in secret_run.log
    for value in secret_run.case.secret_values:
        assert value not in secret_run.log


def test_secrets_not_in_results(secret_run: SecretRun) -> None:
    texts = [entry_text(e) for e in secret_run.results.values()]
    assert len(texts) == 3
    for value in secret_run.case.secret_values:
        for text in texts:
            assert value not in text


def test_secrets_not_in_dead_letters(secret_run: SecretRun) -> None:
    assert len(secret_run.dead) == 1
    assert "JobId" in secret_run.dead[0].fields["reason"]
    text = entry_text(secret_run.dead[0])
    for value in secret_run.case.secret_values:
        assert value not in text


def test_queued_argsrepr_summary(secret_run: SecretRun) -> None:
    case = secret_run.case
    queued = secret_run.queued
    by_argsrepr = {message["headers"]["argsrepr"]: message for message in queued}
    assert len(queued) == 3
    for name in case.job_ids:
        message = by_argsrepr.get(case.summary(name))
        assert message is not None, f"no message with argsrepr {case.summary(name)}"
        assert message["headers"]["kwargsrepr"] == "{}"
    for message in queued:
        headers_text = json.dumps(message["headers"])
        assert CUSTOMER_EMAIL not in headers_text
        for value in case.secret_values:
            assert value not in headers_text


def test_events_show_summary(secret_run: SecretRun) -> None:
    case = secret_run.case
    received = [
        e.fields for e in secret_run.events if e.fields["type"] == "task-received"
    ]
    sent = [e.fields for e in secret_run.events if e.fields["type"] == "task-sent"]
    expected = {case.summary(name) for name in case.job_ids}
    event_texts = [json.dumps(e.fields) for e in secret_run.events]
    # The fourth message comes from the raw producer, which writes its own argsrepr.
    assert len(received) == 4
    assert expected <= {e["args"] for e in received}
    assert all(e["kwargs"] == "{}" for e in received)
    assert {e["args"] for e in sent} == expected
    for value in case.secret_values:
        for text in event_texts:
            assert value not in text


ORDER_IN_TASK_RETURN = (
    "worker/tasks.py returns the result JSON, full order included, as the task's "
    "return value; Celery 5.7 logs it at INFO in 'Task ... succeeded in ...: "
    "<return value>' and sends it as the result of the task-succeeded event"
)


def test_log_omits_order_data(secret_run: SecretRun) -> None:
    assert "webhook.call" in secret_run.log
    assert CUSTOMER_EMAIL not in secret_run.log


def test_events_omit_order_data(secret_run: SecretRun) -> None:
    events = secret_run.events
    assert len(events) > 0
    for event in events:
        assert CUSTOMER_EMAIL not in json.dumps(event.fields), event.fields["type"]
