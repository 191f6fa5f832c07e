"""The README's first command: the demo, run on the private Redis."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.redis_server import RedisServer


def test_demo_gets_expected_results(redis_server: RedisServer) -> None:
    environment = dict(os.environ)
    environment["WEBHOOK_WORKER_BROKER_URL"] = redis_server.url
    environment.pop("WEBHOOK_WORKER_REDIS_URL", None)

    completed = subprocess.run(
        [sys.executable, "-m", "worker.cli", "demo"],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    assert "all 8 example jobs got the expected result" in completed.stdout
    for order_id in ("ORD-1001", "ORD-1004", "ORD-1008"):
        assert order_id in completed.stdout
