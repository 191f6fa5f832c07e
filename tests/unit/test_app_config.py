"""Settings that shape the Celery application, read in a fresh interpreter each."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SHOW_CONF = (
    "import json; from worker.app import app; c = app.conf; "
    "print(json.dumps([c.worker_send_task_events, c.task_send_sent_event, "
    "c.broker_transport]))"
)


def app_conf(**env: str) -> list[object]:
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("WEBHOOK_WORKER_")
    }
    environment.update({f"WEBHOOK_WORKER_{key}": value for key, value in env.items()})
    done = subprocess.run(
        [sys.executable, "-c", SHOW_CONF],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(("value", "sent"), [("true", True), ("false", False)])
def test_task_events_setting(value: str, sent: bool) -> None:
    events, sent_event, _transport = app_conf(TASK_EVENTS=value)
    assert events is sent
    assert sent_event is sent


def test_task_events_on_by_default() -> None:
    events, _sent_event, _transport = app_conf()
    assert events is True


def test_sentinel_url_selects_sentinel_transport() -> None:
    *_events, transport = app_conf(
        BROKER_URL="sentinel://127.0.0.1:26379", SENTINEL_MASTER="main"
    )
    assert transport == "worker.broker_transport:SentinelTransport"
