"""Documentation that must match the code."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from worker.settings import ENV_PREFIX, WorkerSettings

ROOT = Path(__file__).resolve().parents[2]


def test_every_setting_documented() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    for name in WorkerSettings.model_fields:
        assert f"`{ENV_PREFIX}{name.upper()}`" in text, name


def test_readme_message_body_is_the_shown_job() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", readme, flags=re.DOTALL)
    message = json.loads(blocks[0])
    shown_body = json.loads(blocks[1])

    decoded = json.loads(base64.b64decode(message["body"]))

    assert decoded == shown_body
    assert message["headers"]["task"] == "webhook_step.execute"
    assert message["properties"]["delivery_info"]["routing_key"] == "webhook_steps"


def test_task_envelope_matches_readme_shape() -> None:
    from worker.message import task_envelope

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    shown = json.loads(re.findall(r"```json\n(.*?)```", readme, flags=re.DOTALL)[0])
    built = json.loads(task_envelope("webhook_steps", '[{"JobId":"j-1"}]'))

    body = json.loads(base64.b64decode(built["body"]))
    assert set(built) == set(shown)
    assert set(built["headers"]) >= set(shown["headers"]) - {"root_id"}
    assert built["properties"]["delivery_info"] == shown["properties"]["delivery_info"]
    assert body[0] == [{"JobId": "j-1"}]
    assert body[1] == {}
