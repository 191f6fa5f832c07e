"""A producer without Celery: the README message, sent with LPUSH, gets a result."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import jsonschema
import redis

from tests.support.redis_server import RedisServer
from tests.support.webhook_server import Reply, WebhookServer
from tests.support.worker_process import WorkerNames, running_worker, wait_for_entries
from worker.schemas import result_schema

ROOT = Path(__file__).resolve().parents[2]


def readme_message() -> dict[str, object]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", readme, flags=re.DOTALL)
    message: dict[str, object] = json.loads(blocks[0])
    return message


def test_readme_message_runs(
    redis_server: RedisServer,
    config_dir: Path,
    tmp_path: Path,
    webhook_server: WebhookServer,
) -> None:
    webhook_server.route("/hook", lambda _request: Reply.json('{"Status":"Approved"}'))
    tenant = {
        "Connectors": [
            {
                "Name": "Webhook",
                "ConnectorId": "hook-1",
                "Host": webhook_server.url("/hook"),
            }
        ]
    }
    (config_dir / "acme.json").write_text(json.dumps(tenant), encoding="utf-8")
    names = WorkerNames.unique("raw")
    message = readme_message()
    # The README sends to the default queue; this test's worker has its own.
    properties = message["properties"]
    assert isinstance(properties, dict)
    properties["delivery_info"]["routing_key"] = names.queue
    job = json.loads(base64.b64decode(str(message["body"])))[0][0]
    client = redis.Redis.from_url(redis_server.url)

    with running_worker(
        redis_url=redis_server.url,
        config_dir=config_dir,
        log_path=tmp_path / "worker.log",
        names=names,
    ):
        client.lpush(names.queue, json.dumps(message))
        entries = wait_for_entries(client, names.result_stream, 1)

    text = entries[0].fields["result"]
    result = json.loads(text)
    jsonschema.validate(result, result_schema())
    assert result["JobId"] == job["JobId"]
    assert result["ActionStatus"] == "Success"
    assert result["Order"]["Status"] == "Approved"
    assert '"Total":99.90' in text
    assert len(webhook_server.requests_to("/hook")) == 1
