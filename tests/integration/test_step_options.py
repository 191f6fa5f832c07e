"""Step filters and the envelope request format, against a real loopback server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_step_http import (
    finished,
    hook_connector,
    make_job,
    make_runner,
    write_tenant,
)
from tests.support.webhook_server import Reply, WebhookServer


@pytest.mark.parametrize(
    ("step_fields", "reason"),
    [
        ({"EnabledForMarkets": ["NO"]}, "enabled only for markets NO"),
        ({"DisabledForMarkets": ["SE"]}, "disabled for market SE"),
        ({"EnabledForStores": ["web-2"]}, "enabled only for stores web-2"),
        ({"EnabledForTags": ["vip"]}, "enabled only for orders tagged vip"),
        ({"DisabledForTags": ["test"]}, "disabled for orders tagged test"),
    ],
    ids=["market-enabled", "market-disabled", "store", "tag-enabled", "tag-disabled"],
)
def test_filtered_step_not_sent(
    config_dir: Path,
    webhook_server: WebhookServer,
    step_fields: dict[str, Any],
    reason: str,
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    webhook_server.route("/hook", lambda _request: Reply.json("{}"))
    order = '{"Id":"ORD-1","MarketId":"SE","StoreId":"web-1","Tags":["test"]}'
    job = make_job(order_text=order, **step_fields)

    result = finished(make_runner(config_dir).run((job,), {}))

    assert result["ActionStatus"] == "Success"
    assert result["CancelWorkflow"] is False
    assert result["Attempts"] == 0
    assert reason in result["Messages"][0]
    assert result["Events"] == []
    assert webhook_server.requests_to("/hook") == []


def test_matching_filters_send(config_dir: Path, webhook_server: WebhookServer) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    webhook_server.route("/hook", lambda _request: Reply.json("{}"))
    order = '{"Id":"ORD-1","MarketId":"SE","StoreId":"web-1","Tags":["vip"]}'
    job = make_job(
        order_text=order,
        EnabledForMarkets=["SE"],
        EnabledForStores=["web-1"],
        EnabledForTags=["vip"],
    )

    result = finished(make_runner(config_dir).run((job,), {}))

    assert result["Attempts"] == 1
    assert len(webhook_server.requests_to("/hook")) == 1


def test_envelope_format(config_dir: Path, webhook_server: WebhookServer) -> None:
    write_tenant(config_dir, hook_connector(webhook_server, RequestFormat="Envelope"))
    webhook_server.route(
        "/hook", lambda _request: Reply.json('{"Value":{"Status":"Approved"}}')
    )
    secret_header = {"Key": "X-Token", "Value": "tok-55", "KeyGroup": "RequestHeaders"}
    job = make_job(Properties=[secret_header, {"Key": "Note", "Value": "n"}])

    result = finished(make_runner(config_dir).run((job,), {}))

    request = webhook_server.requests_to("/hook")[0]
    sent = json.loads(request.body)
    assert set(sent) == {"Value", "WorkflowStep"}
    assert sent["Value"]["Id"] == job["Order"]["Id"]
    assert sent["WorkflowStep"]["Connector"] == "Hook"
    assert sent["WorkflowStep"]["Properties"] == [{"Key": "Note", "Value": "n"}]
    assert b"tok-55" not in request.body
    assert request.header("X-Token") == "tok-55"
    assert result["Order"]["Status"] == "Approved"


def test_order_format_default(config_dir: Path, webhook_server: WebhookServer) -> None:
    write_tenant(config_dir, hook_connector(webhook_server))
    webhook_server.route("/hook", lambda _request: Reply.json("{}"))
    job = make_job()

    finished(make_runner(config_dir).run((job,), {}))

    sent = json.loads(webhook_server.requests_to("/hook")[0].body)
    assert sent["Id"] == job["Order"]["Id"]
