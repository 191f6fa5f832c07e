"""Jobs, tenants and counts shared by the reliability tests."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import redis

from tests.support.webhook_server import Handler, Reply, Request
from tests.support.worker_process import PROJECT_ROOT, project_python, read_stream

TENANT_ID = "reliability"


def write_tenant(config_dir: Path, webhook_url: str) -> None:
    """Write a tenant file with one Webhook connector that calls ``webhook_url``."""
    connector = {
        "Name": "Webhook",
        "ConnectorId": "reliability-hook",
        "Host": webhook_url,
        "TimeOut": "00:00:05",
    }
    document = {"Connectors": [connector], "MarketGroups": {}}
    (config_dir / f"{TENANT_ID}.json").write_text(json.dumps(document))


def job(
    job_id: str | None,
    *,
    delayed: bool = False,
    properties: list[dict[str, str]] | None = None,
    order_id: str | None = None,
    **order: Any,
) -> dict[str, Any]:
    """Return a job for the test tenant, with ``order`` added to the order's fields."""
    document: dict[str, Any] = {
        "TenantId": TENANT_ID,
        "CorrelationId": f"corr-{job_id}",
        "Step": {
            "Name": "WebhookWorkflowStep",
            "Connector": "Webhook",
            "RunAfterOrderIsSaved": delayed,
            "Properties": properties or [],
        },
        "Order": {
            "Id": order_id or f"ORD-{job_id}",
            "MarketId": "SE",
            "Status": "New",
            **order,
        },
    }
    if job_id is not None:
        document["JobId"] = job_id
    return document


def args_json(*args: Any) -> str:
    """Return the JSON text of a task's positional arguments."""
    return json.dumps(list(args), separators=(",", ":"))


def result_counts(client: redis.Redis, stream: str) -> Counter[str]:
    """Return how many result entries each JobId has on ``stream``."""
    return Counter(
        entry.fields.get("job_id", "") for entry in read_stream(client, stream)
    )


def duplicates(counts: Mapping[str, int]) -> int:
    """Return the number of result entries beyond the first for each JobId."""
    return sum(count - 1 for count in counts.values() if count > 1)


def run_health(env: Mapping[str, str]) -> tuple[int, str]:
    """Run ``webhook-step-worker health`` with ``env``, return exit code and output."""
    completed = subprocess.run(
        [project_python(), "-m", "worker.cli", "health"],
        cwd=PROJECT_ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return completed.returncode, (completed.stdout + completed.stderr).strip()


def answer_after(min_s: float, max_s: float) -> Handler:
    """Return a webhook handler that replies ``{}`` after a delay in [min_s, max_s]."""
    lock = threading.Lock()
    state = {"step": 0}

    def handler(_request: Request) -> Reply:
        with lock:
            state["step"] = (state["step"] + 7) % 31
            fraction = state["step"] / 30
        return Reply.json("{}", delay_s=min_s + (max_s - min_s) * fraction)

    return handler


def wait_until(
    condition: Callable[[], bool], timeout_s: float, interval_s: float = 0.1
) -> tuple[bool, float]:
    """Poll ``condition()`` until it is true or ``timeout_s`` passes.

    Returns whether the condition was met and the seconds waited.
    """
    started = time.monotonic()
    deadline = started + timeout_s
    while True:
        if condition():
            return True, time.monotonic() - started
        if time.monotonic() >= deadline:
            return False, time.monotonic() - started
        time.sleep(interval_s)
