"""Standard Webhooks signatures: the signing module, and the requests a connector sends.

The example receiver in config/examples/receivers checks each signed request
against the exact bytes the test server received.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
import structlog

from tests.security.helpers import (
    JOB_ID,
    hook_connector,
    make_job,
    make_runner,
    run_to_end,
    write_tenant,
)
from tests.support.webhook_server import Reply, Request, WebhookServer
from worker.errors import ConfigError
from worker.logs import configure_logging
from worker.signing import secret_key, sign, signature_headers, verify
from worker.tenants import parse_tenant_file

RECEIVER_PATH = (
    Path(__file__).resolve().parents[2]
    / "config"
    / "examples"
    / "receivers"
    / "verifying_receiver.py"
)
RAW_KEY = b"\x00\x17signing-key-bytes\xff\x80"
WHSEC = "whsec_" + base64.b64encode(RAW_KEY).decode("ascii")
PLAIN_SECRET = "plain-signing-secret-4d2e"
BODY = b'{"Id":"1001","Total":99.90}'
NOW = 1_780_000_000


def load_receiver() -> ModuleType:
    spec = importlib.util.spec_from_file_location("verifying_receiver", RECEIVER_PATH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def receiver() -> ModuleType:
    return load_receiver()


# --- the signing module ----------------------------------------------------


def test_round_trip() -> None:
    headers = signature_headers(RAW_KEY, "msg-1", BODY, now=NOW)
    assert headers["webhook-id"] == "msg-1"
    assert headers["webhook-timestamp"] == str(NOW)
    assert headers["webhook-signature"].startswith("v1,")
    assert verify(RAW_KEY, headers, BODY, now=NOW) is None


def test_known_signature() -> None:
    # HMAC-SHA256 of "msg-1.1780000000.<body>", computed independently of sign().
    import hashlib
    import hmac

    digest = hmac.new(RAW_KEY, b"msg-1.1780000000." + BODY, hashlib.sha256)
    expected = "v1," + base64.b64encode(digest.digest()).decode("ascii")
    assert sign(RAW_KEY, "msg-1", NOW, BODY) == expected


def test_whsec_key_decoded() -> None:
    assert secret_key(WHSEC) == RAW_KEY


def test_plain_key_utf8() -> None:
    assert secret_key(PLAIN_SECRET) == PLAIN_SECRET.encode("utf-8")
    assert secret_key("n\u00e4ckel-\u00fc") == "n\u00e4ckel-\u00fc".encode()


def test_whsec_differs_from_text() -> None:
    by_key = sign(secret_key(WHSEC), "m", NOW, BODY)
    by_text = sign(WHSEC.encode("utf-8"), "m", NOW, BODY)
    assert by_key != by_text


def test_header_names_any_case() -> None:
    headers = signature_headers(RAW_KEY, "msg-1", BODY, now=NOW)
    upper = {name.upper(): value for name, value in headers.items()}
    assert verify(RAW_KEY, upper, BODY, now=NOW) is None


def test_several_signatures() -> None:
    headers = signature_headers(RAW_KEY, "msg-1", BODY, now=NOW)
    other = sign(b"rotated-key", "msg-1", NOW, BODY)
    headers["webhook-signature"] = f"{other} {headers['webhook-signature']}"
    assert verify(RAW_KEY, headers, BODY, now=NOW) is None


def test_tampered_body() -> None:
    headers = signature_headers(RAW_KEY, "msg-1", BODY, now=NOW)
    problem = verify(RAW_KEY, headers, BODY.replace(b"99.90", b"0.01"), now=NOW)
    assert problem == "no signature in webhook-signature matches"


def test_tampered_id() -> None:
    headers = signature_headers(RAW_KEY, "msg-1", BODY, now=NOW)
    headers["webhook-id"] = "msg-2"
    assert verify(RAW_KEY, headers, BODY, now=NOW) is not None


def test_wrong_key() -> None:
    headers = signature_headers(RAW_KEY, "msg-1", BODY, now=NOW)
    problem = verify(b"another-key", headers, BODY, now=NOW)
    assert problem == "no signature in webhook-signature matches"


@pytest.mark.parametrize("offset_s", [-301, 301, -86_400])
def test_timestamp_out_of_tolerance(offset_s: int) -> None:
    headers = signature_headers(RAW_KEY, "msg-1", BODY, now=NOW + offset_s)
    problem = verify(RAW_KEY, headers, BODY, now=NOW)
    assert problem == "webhook-timestamp is more than 300 s from now"


def test_timestamp_at_tolerance() -> None:
    headers = signature_headers(RAW_KEY, "msg-1", BODY, now=NOW - 300)
    assert verify(RAW_KEY, headers, BODY, now=NOW) is None


@pytest.mark.parametrize(
    "changes",
    [
        {"webhook-id": ""},
        {"webhook-timestamp": "12e3"},
        {"webhook-timestamp": "\u0661\u0662"},
        {"webhook-timestamp": "-5"},
        {"webhook-signature": ""},
        {"webhook-signature": "v1,"},
    ],
)
def test_malformed_headers(changes: dict[str, str]) -> None:
    headers = {**signature_headers(RAW_KEY, "msg-1", BODY, now=NOW), **changes}
    assert verify(RAW_KEY, headers, BODY, now=NOW) is not None


@pytest.mark.parametrize("secret", ["whsec_not base64!", "whsec_abc"])
def test_invalid_whsec(secret: str) -> None:
    with pytest.raises(ConfigError) as caught:
        secret_key(secret)
    assert "SigningSecret" in str(caught.value)
    assert secret.removeprefix("whsec_") not in str(caught.value)


def test_non_ascii_whsec() -> None:
    with pytest.raises(ConfigError):
        secret_key("whsec_\u00e9\u00e9\u00e9\u00e9")


@pytest.mark.parametrize(
    "bad_secret", ["whsec_%%%not-base64%%%", "whsec_\u00e9\u00e9\u00e9\u00e9"]
)
def test_invalid_whsec_tenant(tmp_path: Path, bad_secret: str) -> None:
    path = tmp_path / "acme.json"
    connector = hook_connector("https://hooks.example/x", SigningSecret="${SIGN}")
    path.write_text(json.dumps({"Connectors": [connector]}), encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        parse_tenant_file(path, "acme", env={"SIGN": bad_secret})

    message = str(caught.value)
    assert "SigningSecret" in message
    assert "hook-1" in message
    assert str(path) in message
    assert bad_secret not in message


def test_literal_secret_rejected(tmp_path: Path) -> None:
    path = tmp_path / "acme.json"
    connector = hook_connector("https://hooks.example/x", SigningSecret=WHSEC)
    path.write_text(json.dumps({"Connectors": [connector]}), encoding="utf-8")

    with pytest.raises(ConfigError) as caught:
        parse_tenant_file(path, "acme", env={})

    assert "SigningSecret" in str(caught.value)
    assert WHSEC not in str(caught.value)


# --- signed requests from a connector --------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def received_headers(request: Request) -> dict[str, str]:
    return {name.lower(): value for name, value in request.headers.items()}


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("secret", [WHSEC, PLAIN_SECRET], ids=["whsec", "plain"])
def test_connector_signs(
    config_dir: Path,
    webhook_server: WebhookServer,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    receiver: ModuleType,
    secret: str,
) -> None:
    monkeypatch.setenv("SIGN_SECRET", secret)
    connector = hook_connector(
        webhook_server.url("/hook"),
        SigningSecret="${SIGN_SECRET}",
        DisableStandardErrorPolicy=False,
    )
    write_tenant(config_dir, connector)
    answers = iter([Reply(status=500), Reply.json('{"Status":"Approved"}')])
    webhook_server.route("/hook", lambda _r: next(answers))
    runner = make_runner(config_dir)
    configure_logging("json", "INFO")
    started = int(time.time())

    try:
        result = run_to_end(runner, make_job())
    finally:
        runner.client.close()

    logged = capfd.readouterr().err
    requests = webhook_server.requests_to("/hook")
    key = receiver.hmac_key(secret)
    assert result["ActionStatus"] == "Success"
    assert len(requests) == 2
    for request in requests:
        headers = received_headers(request)
        assert receiver.signature_problem(key, headers, request.body) is None
        assert headers["webhook-id"] == JOB_ID
        assert abs(int(headers["webhook-timestamp"]) - started) <= 5
        assert headers["webhook-signature"].startswith("v1,")
    assert "webhook.call" in logged
    assert secret not in logged
    assert secret not in json.dumps(result)


def test_unsigned_without_secret(
    config_dir: Path, webhook_server: WebhookServer
) -> None:
    write_tenant(config_dir, hook_connector(webhook_server.url("/hook")))
    webhook_server.route("/hook", lambda _r: Reply.json("{}"))
    runner = make_runner(config_dir)

    try:
        run_to_end(runner, make_job())
    finally:
        runner.client.close()

    headers = received_headers(webhook_server.requests[0])
    assert "webhook-signature" not in headers
    assert "webhook-id" not in headers


def test_receiver_rejects_tamper(
    config_dir: Path,
    webhook_server: WebhookServer,
    monkeypatch: pytest.MonkeyPatch,
    receiver: ModuleType,
) -> None:
    monkeypatch.setenv("SIGN_SECRET", WHSEC)
    connector = hook_connector(
        webhook_server.url("/hook"), SigningSecret="${SIGN_SECRET}"
    )
    write_tenant(config_dir, connector)
    webhook_server.route("/hook", lambda _r: Reply.json("{}"))
    runner = make_runner(config_dir)

    try:
        run_to_end(runner, make_job())
    finally:
        runner.client.close()

    request = webhook_server.requests[0]
    headers = received_headers(request)
    tampered = request.body.replace(b"99.90", b"99.91")
    assert tampered != request.body
    assert receiver.signature_problem(receiver.hmac_key(WHSEC), headers, tampered)
    assert receiver.signature_problem(b"wrong", headers, request.body)


def test_inline_host_unsigned(
    config_dir: Path,
    webhook_server: WebhookServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SIGN_SECRET", WHSEC)
    connector = hook_connector(
        webhook_server.url("/hook"), SigningSecret="${SIGN_SECRET}"
    )
    write_tenant(config_dir, connector)
    webhook_server.route("/inline", lambda _r: Reply.json("{}"))
    host = {"Key": "Host", "Value": webhook_server.url("/inline")}
    runner = make_runner(config_dir)

    try:
        result = run_to_end(runner, make_job(Properties=[host]))
    finally:
        runner.client.close()

    headers = received_headers(webhook_server.requests_to("/inline")[0])
    assert result["ActionStatus"] == "Success"
    assert "webhook-signature" not in headers
