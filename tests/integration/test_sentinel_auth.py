"""A worker behind Redis Sentinel when the master and the Sentinels require passwords.

The master and its replica require one password, given in the sentinel:// URL,
and the Sentinels require another, given in SENTINEL_PASSWORD. A real worker
runs jobs through them, and neither password appears in its log.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.reliability.common import args_json, job, write_tenant
from tests.support.raw_messages import push_envelopes, task_envelope
from tests.support.redis_sentinel import (
    MASTER_NAME,
    SentinelGroup,
    running_sentinel_group,
)
from tests.support.webhook_server import Reply, WebhookServer
from tests.support.worker_process import WorkerNames, running_worker, wait_for_entries
from worker.redis_client import redis_from_url
from worker.settings import WorkerSettings

MASTER_PASSWORD = "master-pw-7c1e9a"
SENTINEL_PASSWORD = "sentinel-pw-4d2b86"
JOBS = 5


@pytest.fixture
def guarded_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    with running_sentinel_group(
        tmp_path / "redis",
        master_password=MASTER_PASSWORD,
        sentinel_password=SENTINEL_PASSWORD,
    ) as group:
        yield group


def test_worker_with_sentinel_passwords(
    guarded_group: SentinelGroup,
    config_dir: Path,
    tmp_path: Path,
    webhook_server: WebhookServer,
) -> None:
    webhook_server.route("/hook", lambda _request: Reply.json("{}"))
    write_tenant(config_dir, webhook_server.url("/hook"))
    settings = WorkerSettings(
        broker_url=guarded_group.url,
        redis_url=guarded_group.url,
        sentinel_master=MASTER_NAME,
        sentinel_password=SENTINEL_PASSWORD,
    )
    client = redis_from_url(guarded_group.url, settings, socket_timeout=2.0)
    names = WorkerNames.unique("sentinel-auth")
    job_ids = [f"auth-{index}" for index in range(JOBS)]
    with running_worker(
        redis_url=guarded_group.url,
        config_dir=config_dir,
        log_path=tmp_path / "worker.log",
        names=names,
        extra_env={
            "WEBHOOK_WORKER_SENTINEL_MASTER": MASTER_NAME,
            "WEBHOOK_WORKER_SENTINEL_PASSWORD": SENTINEL_PASSWORD,
        },
    ) as worker:
        push_envelopes(
            client,
            names.queue,
            [task_envelope(names.queue, args_json(job(job_id))) for job_id in job_ids],
        )
        entries = wait_for_entries(client, names.result_stream, JOBS)
        log_text = worker.log_text()

    statuses = {
        entry.fields["job_id"]: json.loads(entry.fields["result"])["ActionStatus"]
        for entry in entries
    }
    assert statuses == dict.fromkeys(job_ids, "Success")
    assert MASTER_PASSWORD not in log_text
    assert SENTINEL_PASSWORD not in log_text


def test_sentinels_reject_missing_password(guarded_group: SentinelGroup) -> None:
    settings = WorkerSettings(broker_url=guarded_group.url, sentinel_master=MASTER_NAME)
    client = redis_from_url(guarded_group.url, settings, socket_timeout=2.0)
    with pytest.raises(redis.RedisError):
        client.ping()
