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
