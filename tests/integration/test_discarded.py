"""A job whose message Celery discards still ends with one Error result.

Celery drops a message whose ``expires`` time has passed, and one whose task
id an operator revoked, without running the task. A real worker takes such
messages here, and each job must still get its Error result.
"""

from __future__ import annotations

import json
import threading
import time
from contextlib import AbstractContextManager as ContextManager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from celery import Celery
from structlog.testing import capture_logs

from tests.reliability.common import args_json, job, wait_until, write_tenant
from tests.support.redis_server import RedisServer
from tests.support.webhook_server import Reply, Request, WebhookServer
from tests.support.worker_process import (
    WorkerNames,
    WorkerProcess,
    read_stream,
    running_worker,
    wait_for_entries,
)
from worker import revoked
from worker.celery_output import header_time_problem
from worker.message import TASK_NAME, task_envelope
from worker.revoked import discard_reason
from worker.runtime import build_runner
from worker.settings import WorkerSettings


def expiring_envelope(
    queue: str, document: dict[str, object], expires: datetime
) -> str:
    """Return a task envelope whose ``expires`` header is ``expires``."""
    message = json.loads(task_envelope(queue, args_json(document)))
    message["headers"]["expires"] = expires.isoformat()
    return json.dumps(message)


def worker_for(
    redis_server: RedisServer,
    config_dir: Path,
    tmp_path: Path,
    names: WorkerNames,
    extra_env: dict[str, str] | None = None,
) -> ContextManager[WorkerProcess]:
    """Return a running-worker context on the test's Redis, tenants and names."""
    return running_worker(
        redis_url=redis_server.url,
        config_dir=config_dir,
        log_path=tmp_path / "worker.log",
        names=names,
        extra_env=extra_env,
    )


@pytest.fixture
def hook(config_dir: Path, webhook_server: WebhookServer) -> WebhookServer:
    """Return the webhook server, with the test tenant's connector pointing at it."""
    webhook_server.route("/hook", lambda _request: Reply.json("{}"))
    write_tenant(config_dir, webhook_server.url("/hook"))
    return webhook_server


def test_expired_jobs_get_error_results(
    redis_server: RedisServer, config_dir: Path, tmp_path: Path, hook: WebhookServer
) -> None:
    names = WorkerNames.unique("discard")
    client = redis.Redis.from_url(redis_server.url)
    now = datetime.now(UTC)
    envelopes = [
        # Expired before it was sent.
        expiring_envelope(names.queue, job("expired-1"), now - timedelta(minutes=1)),
        # Expires during its one-second save delay.
        expiring_envelope(
            names.queue,
            job("expired-2", delayed=True),
            now + timedelta(seconds=0.3),
        ),
        # A later expiry does not stop the job.
        expiring_envelope(names.queue, job("in-time-3"), now + timedelta(hours=1)),
        # Expired and without a JobId: only the dead letters can show it.
        expiring_envelope(names.queue, job(None), now - timedelta(minutes=1)),
    ]

    with worker_for(redis_server, config_dir, tmp_path, names) as worker:
        for text in envelopes:
            client.lpush(names.queue, text)
        entries = wait_for_entries(client, names.result_stream, 3)
        dead = wait_for_entries(client, names.dead_letter_stream, 1)
        records = worker.log_records()

    results = {
        entry.fields["job_id"]: json.loads(entry.fields["result"]) for entry in entries
    }
    assert sorted(results) == ["expired-1", "expired-2", "in-time-3"]
    for job_id in ("expired-1", "expired-2"):
        assert results[job_id]["ActionStatus"] == "Error"
        assert results[job_id]["CancelWorkflow"] is True
        assert "expired" in results[job_id]["ErrorReason"]
        assert "send the job again" in results[job_id]["ErrorReason"]
    assert results["in-time-3"]["ActionStatus"] == "Success"
    # Only the job in time reached the webhook.
    assert len(hook.requests_to("/hook")) == 1
    assert dead[0].fields["kind"] == "no_job_id"
    assert "expired" in dead[0].fields["reason"]
    discarded = [r for r in records if r.get("event") == "job.discarded"]
    assert sorted(r["job_id"] for r in discarded) == ["expired-1", "expired-2"]
    for record in discarded:
        assert record["tenant_id"] == "reliability"
        assert record["order_id"] == f"ORD-{record['job_id']}"


def test_revoked_job_gets_error_result(
    redis_server: RedisServer, config_dir: Path, tmp_path: Path, hook: WebhookServer
) -> None:
    names = WorkerNames.unique("revoke")
    client = redis.Redis.from_url(redis_server.url)
    control = Celery(broker=redis_server.url)
    with worker_for(redis_server, config_dir, tmp_path, names):
        # An operator revokes the task id before the message arrives.
        replies = control.control.revoke(
            "revoked-task-1", reply=True, timeout=5, limit=1
        )
        assert replies, "the worker did not answer the revoke command"
        client.lpush(
            names.queue,
            task_envelope(
                names.queue, args_json(job("revoked-1")), task_id="revoked-task-1"
            ),
        )
        entries = wait_for_entries(client, names.result_stream, 1)
    control.close()

    result = json.loads(entries[0].fields["result"])
    assert result["JobId"] == "revoked-1"
    assert result["ActionStatus"] == "Error"
    assert "revoked" in result["ErrorReason"]
    assert hook.requests_to("/hook") == []


def test_expired_copy_leaves_running_call(
    redis_server: RedisServer, config_dir: Path, tmp_path: Path, hook: WebhookServer
) -> None:
    # A copy of a job arrives expired while the first delivery is in its call,
    # as after a lost connection when kombu requeues the running messages.
    hook.route("/hook", lambda _request: Reply.json("{}", delay_s=2.0))
    names = WorkerNames.unique("discard-copy")
    client = redis.Redis.from_url(redis_server.url)
    document = job("copied-1")
    with worker_for(redis_server, config_dir, tmp_path, names) as worker:
        client.lpush(names.queue, task_envelope(names.queue, args_json(document)))
        wait_until(lambda: len(hook.requests_to("/hook")) == 1, timeout_s=10)
        expired = datetime.now(UTC) - timedelta(minutes=1)
        client.lpush(names.queue, expiring_envelope(names.queue, document, expired))
        wait_for_entries(client, names.result_stream, 1)
        # Time for a second, wrong result to appear.
        time.sleep(1.0)
        entries = read_stream(client, names.result_stream)
        records = worker.log_records()

    assert len(entries) == 1
    assert json.loads(entries[0].fields["result"])["ActionStatus"] == "Success"
    assert len(hook.requests_to("/hook")) == 1
    # The copy's message had reached a runner before, so it was sent again
    # instead of being turned into an Error; the running call's result stood.
    resent = [r for r in records if r.get("event") == "job.discard_resent"]
    assert len(resent) == 1
    assert resent[0]["job_id"] == "copied-1"


def test_retry_after_call_ignores_expires(
    redis_server: RedisServer, config_dir: Path, tmp_path: Path, hook: WebhookServer
) -> None:
    calls = []

    def fail_once(_request: Request) -> Reply:
        calls.append(1)
        return Reply.json("{}", status=503) if len(calls) == 1 else Reply.json("{}")

    hook.route("/hook", fail_once)
    names = WorkerNames.unique("retry-expires")
    client = redis.Redis.from_url(redis_server.url)
    with worker_for(
        redis_server,
        config_dir,
        tmp_path,
        names,
        {"WEBHOOK_WORKER_MAX_RETRY_DELAY_S": "3"},
    ) as worker:
        expires = datetime.now(UTC) + timedelta(seconds=0.5)
        client.lpush(
            names.queue, expiring_envelope(names.queue, job("retry-1"), expires)
        )
        entries = wait_for_entries(client, names.result_stream, 1)
        records = worker.log_records()

    result = json.loads(entries[0].fields["result"])
    assert result["ActionStatus"] == "Success"
    assert result["Attempts"] == 2
    rescheduled = [r for r in records if r.get("event") == "job.rescheduled"]
    assert rescheduled, "the failed call was not retried"
    # The retry came due after the job's expires time and still ran, without
    # being discarded first.
    events = {r.get("event") for r in records}
    assert "job.discarded" not in events
    assert "job.discard_resent" not in events


def test_expired_after_earlier_delivery_runs_again(
    redis_server: RedisServer, config_dir: Path, tmp_path: Path, hook: WebhookServer
) -> None:
    # The message reached a runner before and was requeued, for example after
    # its result could not be published while Redis was down. Whether its
    # call happened is unknown, so an Error result could contradict the
    # webhook; the job must run again instead.
    names = WorkerNames.unique("discard-rerun")
    client = redis.Redis.from_url(redis_server.url)
    client.set(f"{names.key_prefix}:deliveries:rerun-1:0:0", 1)
    expired = datetime.now(UTC) - timedelta(minutes=1)
    with worker_for(redis_server, config_dir, tmp_path, names):
        client.lpush(
            names.queue, expiring_envelope(names.queue, job("rerun-1"), expired)
        )
        entries = wait_for_entries(client, names.result_stream, 1)

    result = json.loads(entries[0].fields["result"])
    assert result["ActionStatus"] == "Success"
    assert len(hook.requests_to("/hook")) == 1


def test_discarded_result_waits_for_redis(
    aof_redis: RedisServer,
    config_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = WorkerSettings(broker_url=aof_redis.url, config_dir=config_dir)
    runner = build_runner(settings)
    monkeypatch.setattr(revoked, "get_runner", lambda: runner)
    monkeypatch.setattr(revoked, "PUBLISH_WINDOW_S", 20.0)
    request = SimpleNamespace(
        id="task-late", args=[job("late-1")], expires="2026-01-01T00:00:00+00:00"
    )

    aof_redis.stop()
    restart = threading.Timer(1.5, aof_redis.start)
    with capture_logs() as logs:
        revoked.publish_discarded(
            sender=SimpleNamespace(name=TASK_NAME), request=request, expired=True
        )
        restart.start()
        restart.join()
        published, _ = wait_until(
            lambda: (
                runner.store is not None
                and runner.store.find_result("late-1") is not None
            ),
            timeout_s=15,
        )

    assert published, "the discarded job's result was never published"
    assert runner.store is not None
    stored = runner.store.find_result("late-1")
    assert stored is not None
    result = json.loads(stored.result_json)
    assert result["ActionStatus"] == "Error"
    assert "expired" in result["ErrorReason"]
    events = [entry["event"] for entry in logs]
    assert events[0] == "job.discarded_result_retrying"
    assert "job.discarded_result_published" in events


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"expires": None, "eta": None}, None),
        ({"expires": "2026-01-31T12:00:00Z"}, None),
        ({"eta": "2026-01-31T12:00:00+01:00"}, None),
        ({"expires": 1767225600.5}, "'expires' must be an ISO 8601 time"),
        ({"expires": ""}, "'expires' must be an ISO 8601 time"),
        ({"eta": "tomorrow"}, "'eta' must be an ISO 8601 time"),
        # Valid ISO 8601, but before year 1 in UTC.
        ({"eta": "0001-01-01T00:00:00+14:00"}, "'eta' must be an ISO 8601 time"),
        ({"eta": "9999-01-01T00:00:00+00:00"}, "more than VISIBILITY_TIMEOUT_S"),
    ],
)
def test_header_time_problem(headers: dict[str, object], expected: str | None) -> None:
    problem = header_time_problem(headers, max_eta_ahead_s=3600)
    if expected is None:
        assert problem is None
    else:
        assert problem is not None
        assert expected in problem


def test_malformed_expires_gets_error_result(
    redis_server: RedisServer, config_dir: Path, tmp_path: Path, hook: WebhookServer
) -> None:
    names = WorkerNames.unique("bad-expires")
    client = redis.Redis.from_url(redis_server.url)
    message = json.loads(task_envelope(names.queue, args_json(job("bad-exp-1"))))
    message["headers"]["expires"] = 1767225600.5
    with worker_for(redis_server, config_dir, tmp_path, names):
        client.lpush(names.queue, json.dumps(message))
        entries = wait_for_entries(client, names.result_stream, 1)

    result = json.loads(entries[0].fields["result"])
    assert result["ActionStatus"] == "Error"
    assert "'expires' must be an ISO 8601 time" in result["ErrorReason"]
    assert hook.requests_to("/hook") == []


def test_discard_reasons_differ() -> None:
    expired = discard_reason(expired=True, terminated=False, expires="2026-01-01")
    revoked = discard_reason(expired=False, terminated=False, expires=None)
    stopped = discard_reason(expired=False, terminated=True, expires=None)
    assert "2026-01-01" in expired
    assert "RunAfterOrderIsSaved" in expired
    assert "did not run this delivery" in revoked
    assert "while it ran" in stopped
