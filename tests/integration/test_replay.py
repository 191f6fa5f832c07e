"""The replay command: jobs sent again under new JobIds."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.integration.test_step_http import (
    finished,
    hook_connector,
    make_job,
    write_tenant,
)
from tests.support.redis_server import RedisServer
from tests.support.webhook_server import Reply, WebhookServer
from worker.replay import parse_duration
from worker.runtime import build_runner
from worker.settings import WorkerSettings

QUEUE = "replay-test:jobs"


def run_cli(redis_server: RedisServer, *args: str) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ)
    environment.update(
        {
            "WEBHOOK_WORKER_BROKER_URL": redis_server.url,
            "WEBHOOK_WORKER_QUEUE": QUEUE,
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "replay", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )


def queued_jobs(client: redis.Redis) -> list[dict[str, object]]:
    jobs = []
    for raw in client.lrange(QUEUE, 0, -1):
        message = json.loads(raw)
        body = json.loads(base64.b64decode(message["body"]))
        jobs.append(body[0][0])
    return jobs


def test_replay_failed_job(
    redis_server: RedisServer,
    redis_client: redis.Redis,
    config_dir: Path,
    webhook_server: WebhookServer,
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    webhook_server.route("/hook", lambda _request: Reply(status=422))
    settings = WorkerSettings(
        redis_url=redis_server.url, config_dir=config_dir, allow_private_networks=True
    )
    runner = build_runner(settings)
    finished(runner.run((make_job("failed-1"),), {}))

    dry = run_cli(redis_server, "--failed", "--since", "1h", "--dry-run")
    sent = run_cli(redis_server, "failed-1")

    assert dry.returncode == 0, dry.stderr
    assert "would  failed-1 -> replay-" in dry.stdout
    assert sent.returncode == 0, sent.stderr
    jobs = queued_jobs(redis_client)
    assert len(jobs) == 1
    assert jobs[0]["ReplayOf"] == "failed-1"
    assert str(jobs[0]["JobId"]).startswith("replay-")
    assert jobs[0]["Order"] == make_job("failed-1")["Order"]


def test_replay_dead_letter(
    redis_server: RedisServer, redis_client: redis.Redis, config_dir: Path
) -> None:
    settings = WorkerSettings(redis_url=redis_server.url, config_dir=config_dir)
    runner = build_runner(settings)
    finished(runner.run((make_job("extra-1"), "surplus"), {}))
    # The result keeps no job for an argument error; the dead letter has it.
    assert runner.store is not None
    redis_client.hdel("webhook_steps:done:extra-1", "job")

    sent = run_cli(redis_server, "extra-1")

    assert sent.returncode == 0, sent.stderr
    assert "(from the dead letter)" in sent.stdout
    assert queued_jobs(redis_client)[0]["ReplayOf"] == "extra-1"


def test_replay_unknown_job(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    result = run_cli(redis_server, "nobody")

    assert result.returncode == 1
    assert "no stored job" in result.stderr
    assert redis_client.llen(QUEUE) == 0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("30s", 30.0), ("15m", 900.0), ("1h", 3600.0), ("2d", 172800.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_parse_duration_invalid() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("an hour")
