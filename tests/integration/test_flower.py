"""Flower next to a real worker: it shows the job summary, never the order or a secret.

Flower builds its task list from the worker's task events. The producer puts
the job summary in ``argsrepr``, and the worker replaces the return value in
the ``task-succeeded`` event with the result summary. This test reads both
back through Flower's HTTP API.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.support.redis_server import RedisServer, free_port
from tests.support.webhook_server import Reply, Request, WebhookServer
from tests.support.worker_process import (
    PROJECT_ROOT,
    project_python,
    running_worker,
    submit_with_cli,
)

BEARER_TOKEN = "flower-test-token-6f1d2c"
HEADER_SECRET = "flower-header-secret-93ab"
CUSTOMER_EMAIL = "flower.buyer@example.com"


def http_get(url: str, timeout_s: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        body: bytes = response.read()
    return body.decode("utf-8")


def wait_until(
    check: Callable[[], Any], description: str, timeout_s: float = 20.0
) -> Any:
    """Call ``check`` until it returns a true value, and return that value."""
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            found = check()
        except (OSError, ValueError) as error:
            last_error = error
            found = None
        if found:
            return found
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{description} within {timeout_s:g} s failed; last error: "
                f"{last_error!r}"
            )
        time.sleep(0.2)


@contextmanager
def running_flower(
    env: Mapping[str, str], port: int, log_path: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``celery -A worker.app flower`` on 127.0.0.1:``port``; stop it after."""
    command = [
        project_python(),
        "-m",
        "celery",
        "-A",
        "worker.app",
        "flower",
        f"--port={port}",
        "--address=127.0.0.1",
    ]
    # Flower 2 returns 401 for /api/* without authentication unless this is set.
    flower_env = {**env, "FLOWER_UNAUTHENTICATED_API": "true"}
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=flower_env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def test_flower_shows_summaries(
    redis_server: RedisServer,
    config_dir: Path,
    tmp_path: Path,
    webhook_server: WebhookServer,
) -> None:
    def approve(_request: Request) -> Reply:
        return Reply.json('{"Status":"Approved"}')

    webhook_server.route("/flower", approve)
    tenant = {
        "Connectors": [
            {
                "Name": "Webhook",
                "ConnectorId": "hook-flower",
                "Host": webhook_server.url("/flower"),
                "BearerToken": "${FLOWER_TEST_TOKEN}",
            }
        ]
    }
    (config_dir / "acme.json").write_text(json.dumps(tenant), encoding="utf-8")
    job_id = f"flower-{uuid.uuid4().hex[:12]}"
    job = {
        "JobId": job_id,
        "TenantId": "acme",
        "Step": {
            "Connector": "Webhook",
            "Properties": [
                {
                    "Key": "X-Api-Key",
                    "Value": HEADER_SECRET,
                    "KeyGroup": "RequestHeaders",
                }
            ],
        },
        "Order": {
            "Id": "ORD-FLOWER-1",
            "MarketId": "SE",
            "Customer": {"Email": CUSTOMER_EMAIL},
        },
    }
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job), encoding="utf-8")
    flower_port = free_port()
    flower_url = f"http://127.0.0.1:{flower_port}"

    with (
        running_worker(
            redis_url=redis_server.url,
            config_dir=config_dir,
            log_path=tmp_path / "worker.log",
            extra_env={"FLOWER_TEST_TOKEN": BEARER_TOKEN},
        ) as worker,
        running_flower(worker.env, flower_port, tmp_path / "flower.log") as flower,
    ):

        def flower_receives_events() -> bool:
            assert flower.poll() is None, (tmp_path / "flower.log").read_text()
            # Flower sets this gauge from the worker's heartbeat events, so it
            # shows that Flower's event receiver is subscribed.
            return "flower_worker_online{" in http_get(f"{flower_url}/metrics")

        wait_until(flower_receives_events, "Flower receiving worker events")
        assert submit_with_cli(worker.env, [job_file]) == [job_id]

        def finished_task() -> dict[str, Any] | None:
            tasks = json.loads(http_get(f"{flower_url}/api/tasks"))
            for task in tasks.values():
                if task.get("state") == "SUCCESS" and job_id in str(task.get("args")):
                    assert isinstance(task, dict)
                    return task
            return None

        task = wait_until(finished_task, "the finished task in Flower's /api/tasks")
        listing = http_get(f"{flower_url}/api/tasks")

    requests = webhook_server.requests_to("/flower")
    assert len(requests) == 1
    assert requests[0].header("Authorization") == f"Bearer {BEARER_TOKEN}"
    assert requests[0].header("X-Api-Key") == HEADER_SECRET
    assert task["name"] == "webhook_step.execute"
    assert task["args"] == (
        f"(job_id={job_id}, tenant=acme, order=ORD-FLOWER-1, connector=Webhook)"
    )
    assert task["kwargs"] == "{}"
    assert task["result"] == (
        f"(job_id={job_id}, action_status=Success, cancel_workflow=false)"
    )
    for leaked in (CUSTOMER_EMAIL, "MarketId", "Approved", BEARER_TOKEN, HEADER_SECRET):
        assert leaked not in listing, leaked
