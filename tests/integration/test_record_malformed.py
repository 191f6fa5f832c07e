"""A malformed message must not stall the worker's transport for its record window.

kombu counts KeyError among the Redis transport's connection errors, and it
raises KeyError when it records a message whose ``delivery_info`` has no
``exchange``. The worker's transport retries connection errors for up to
RECORD_WINDOW_S, so one such message would stop the consumer that long.
"""

from __future__ import annotations

import json
from pathlib import Path

import redis

from tests.reliability.common import args_json, job, wait_until, write_tenant
from tests.support.redis_server import RedisServer
from tests.support.webhook_server import Reply, running_server
from tests.support.worker_process import WorkerNames, read_stream, running_worker
from worker.message import task_envelope

# An ordinary job normally gets its result well within this.
RESULT_TIMEOUT_S = 10.0


def without_exchange(queue: str, job_id: str) -> str:
    """Return a task envelope whose delivery_info lacks the exchange key."""
    document = json.loads(task_envelope(queue, args_json(job(job_id))))
    document["properties"]["delivery_info"] = {"routing_key": queue}
    return json.dumps(document)


def result_job_ids(client: redis.Redis, stream: str) -> set[str | None]:
    """Return the JobIds of the entries on a result stream."""
    return {entry.fields.get("job_id") for entry in read_stream(client, stream)}


def test_malformed_delivery_info_no_stall(
    redis_server: RedisServer, config_dir: Path, tmp_path: Path
) -> None:
    names = WorkerNames.unique("record-malformed")
    client: redis.Redis = redis_server.client()
    with running_server() as webhook:
        webhook.route("/hook", lambda _request: Reply.json("{}"))
        write_tenant(config_dir, webhook.url("/hook"))
        with running_worker(
            redis_url=redis_server.url,
            config_dir=config_dir,
            log_path=tmp_path / "worker.log",
            names=names,
            concurrency=4,
        ) as worker:
            client.lpush(names.queue, without_exchange(names.queue, "malformed-0001"))
            client.lpush(
                names.queue, task_envelope(names.queue, args_json(job("after-0001")))
            )
            finished, waited_s = wait_until(
                lambda: "after-0001" in result_job_ids(client, names.result_stream),
                timeout_s=RESULT_TIMEOUT_S,
            )
            retrying = [
                record
                for record in worker.log_records()
                if record.get("event") == "delivery.record_retrying"
            ]

    assert finished, (
        f"the job behind the malformed message had no result after {waited_s:.1f} s; "
        f"delivery.record_retrying lines: {[r.get('error') for r in retrying]}"
    )
    assert retrying == [], f"a KeyError was retried as an outage: {retrying}"
