"""OAuth 2.0 client credentials on connectors, against real loopback servers.

A ``TokenEndpoint`` on the same WebhookServer as the webhook issues tokens and
counts the token requests. The webhook returns 401 unless it gets a token that
was issued and not revoked. Tests with Redis use the private ``redis_server``.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote_plus

import pytest
import redis
import structlog

from tests.support.redis_server import RedisServer, free_port
from tests.support.token_endpoint import TokenEndpoint
from tests.support.webhook_server import Reply, Request, WebhookServer
from worker import secrets
from worker.errors import ConfigError
from worker.logs import configure_logging
from worker.oauth import cache_key
from worker.runtime import build_runner
from worker.settings import WorkerSettings
from worker.step import Finished, Outcome, Reschedule, StepRunner
from worker.tenants import TenantStore, parse_tenant_file
from worker.webhook import WebhookClient

TENANT = "acme"
CLIENT_ID = "shop client"
CLIENT_SECRET = "cs-7d41e9b2+/="
KEY_PREFIX = "webhook_steps"
ORDER = {"Id": "1001", "MarketId": "SE", "Status": "New"}


# --- helpers ---------------------------------------------------------------


def oauth_connector(
    server: WebhookServer, token_url: str | None = None, **oauth: Any
) -> dict[str, Any]:
    return {
        "Name": "Hook",
        "ConnectorId": "hook-1",
        "Host": server.url("/hook"),
        "TimeOut": "00:00:05",
        "OAuth": {
            "TokenUrl": token_url or server.url("/token"),
            "ClientId": CLIENT_ID,
            "ClientSecret": "${HOOK_CLIENT_SECRET}",
            "Scope": "orders.write",
            "Resource": "https://api.example.com/",
            **oauth,
        },
    }


def write_tenant(config_dir: Path, *connectors: dict[str, Any]) -> Path:
    path = config_dir / f"{TENANT}.json"
    path.write_text(json.dumps({"Connectors": list(connectors)}), encoding="utf-8")
    return path


def make_job(job_id: str) -> dict[str, Any]:
    return {
        "JobId": job_id,
        "TenantId": TENANT,
        "Step": {"Name": "Export", "Connector": "Hook", "StopOnError": True},
        "Order": dict(ORDER),
    }


def finished(outcome: Outcome) -> dict[str, Any]:
    assert isinstance(outcome, Finished), outcome
    result: dict[str, Any] = json.loads(outcome.result_json)
    return result


def approve(_request: Request) -> Reply:
    return Reply.json('{"Status":"Approved"}')


def memory_runner(config_dir: Path, **client_options: Any) -> StepRunner:
    options = {"allow_private_networks": True, **client_options}
    client = WebhookClient(max_response_bytes=1_000_000, **options)
    return StepRunner(tenants=TenantStore(config_dir), client=client, store=None)


def redis_runner(redis_server: RedisServer, config_dir: Path) -> StepRunner:
    settings = WorkerSettings(
        redis_url=redis_server.url,
        config_dir=config_dir,
        allow_private_networks=True,
        key_prefix=KEY_PREFIX,
    )
    return build_runner(settings)


def close(runner: StepRunner) -> None:
    runner.client.close()
    if runner.store is not None:
        runner.store.client.close()


def token_keys(client: redis.Redis) -> list[str]:
    keys: list[bytes] = client.keys(f"{KEY_PREFIX}:oauth:*")  # type: ignore[assignment]
    return sorted(key.decode() for key in keys)


@pytest.fixture(autouse=True)
def client_secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_CLIENT_SECRET", CLIENT_SECRET)


@pytest.fixture
def tokens(webhook_server: WebhookServer) -> TokenEndpoint:
    endpoint = TokenEndpoint(CLIENT_ID, CLIENT_SECRET)
    webhook_server.route("/token", endpoint.handle)
    webhook_server.route("/hook", endpoint.protect(approve))
    return endpoint


@pytest.fixture
def runner(
    redis_server: RedisServer, redis_client: redis.Redis, config_dir: Path
) -> Iterator[StepRunner]:
    step_runner = redis_runner(redis_server, config_dir)
    yield step_runner
    close(step_runner)


# --- tokens and the cache --------------------------------------------------


def test_token_sent_and_cached(
    runner: StepRunner,
    redis_client: redis.Redis,
    config_dir: Path,
    webhook_server: WebhookServer,
    tokens: TokenEndpoint,
) -> None:
    write_tenant(config_dir, oauth_connector(webhook_server))

    first = finished(runner.run((make_job("job-1"),), {}))
    second = finished(runner.run((make_job("job-2"),), {}))

    assert first["ActionStatus"] == "Success"
    assert second["ActionStatus"] == "Success"
    assert first["Attempts"] == 1
    assert tokens.rejections == []
    assert tokens.token_requests() == 1
    assert tokens.forms[0] == {
        "grant_type": "client_credentials",
        "scope": "orders.write",
        "resource": "https://api.example.com/",
    }
    calls = webhook_server.requests_to("/hook")
    assert len(calls) == 2
    for call in calls:
        assert call.header("Authorization") == f"Bearer {tokens.issued[0]}"
    token_request = webhook_server.requests_to("/token")[0]
    assert token_request.header("Accept") == "application/json"
    connector = TenantStore(config_dir).get(TENANT)
    assert connector is not None
    key = f"{KEY_PREFIX}:oauth:{cache_key(TENANT, connector.settings.connectors[0])}"
    assert token_keys(redis_client) == [key]
    assert redis_client.get(key) == tokens.issued[0].encode()
    ttl_ms = int(redis_client.pttl(key))
    assert 3_560_000 < ttl_ms <= 3_570_000


def test_body_client_authentication(
    config_dir: Path, webhook_server: WebhookServer
) -> None:
    endpoint = TokenEndpoint(CLIENT_ID, CLIENT_SECRET, client_authentication="Body")
    webhook_server.route("/token", endpoint.handle)
    webhook_server.route("/hook", endpoint.protect(approve))
    connector = oauth_connector(webhook_server, ClientAuthentication="Body", Scope=None)
    del connector["OAuth"]["Scope"], connector["OAuth"]["Resource"]
    write_tenant(config_dir, connector)
    runner = memory_runner(config_dir)

    result = finished(runner.run((make_job("job-1"),), {}))
    runner.client.close()

    assert result["ActionStatus"] == "Success"
    assert endpoint.rejections == []
    assert endpoint.forms == [
        {
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        }
    ]


def test_memory_cache_without_store(
    config_dir: Path, webhook_server: WebhookServer, tokens: TokenEndpoint
) -> None:
    write_tenant(config_dir, oauth_connector(webhook_server))
    runner = memory_runner(config_dir)

    results = [finished(runner.run((make_job(f"job-{n}"),), {})) for n in range(3)]
    runner.client.close()

    assert [r["ActionStatus"] for r in results] == ["Success"] * 3
    assert tokens.token_requests() == 1
    assert len(webhook_server.requests_to("/hook")) == 3


def test_token_shared_by_two_runners(
    redis_server: RedisServer,
    redis_client: redis.Redis,
    config_dir: Path,
    webhook_server: WebhookServer,
    tokens: TokenEndpoint,
) -> None:
    write_tenant(config_dir, oauth_connector(webhook_server))
    # A slow token endpoint: the second runner arrives while the first waits.
    tokens.delay_s = 0.5
    runners = [redis_runner(redis_server, config_dir) for _ in range(2)]
    outcomes: dict[int, Outcome] = {}

    def run(index: int) -> None:
        outcomes[index] = runners[index].run((make_job(f"job-{index}"),), {})

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=15)
        later = finished(runners[1].run((make_job("job-later"),), {}))
    finally:
        for step_runner in runners:
            close(step_runner)

    assert sorted(outcomes) == [0, 1]
    assert finished(outcomes[0])["ActionStatus"] == "Success"
    assert finished(outcomes[1])["ActionStatus"] == "Success"
    assert later["ActionStatus"] == "Success"
    assert tokens.token_requests() == 1
    authorizations = {c.header("Authorization") for c in webhook_server.requests}
    assert f"Bearer {tokens.issued[0]}" in authorizations
    assert len(webhook_server.requests_to("/hook")) == 3
    assert not any(key.endswith(":lock") for key in token_keys(redis_client))


def test_token_expiry(
    runner: StepRunner,
    redis_client: redis.Redis,
    config_dir: Path,
    webhook_server: WebhookServer,
    tokens: TokenEndpoint,
) -> None:
    # 31 s minus the 30 s margin: the token stays cached for 1 s.
    tokens.expires_in = 31
    write_tenant(config_dir, oauth_connector(webhook_server))

    first = finished(runner.run((make_job("job-1"),), {}))
    ttl_ms = int(redis_client.pttl(token_keys(redis_client)[0]))
    time.sleep(1.2)
    second = finished(runner.run((make_job("job-2"),), {}))

    assert 0 < ttl_ms <= 1000
    assert first["ActionStatus"] == "Success"
    assert second["ActionStatus"] == "Success"
    assert tokens.token_requests() == 2
    calls = webhook_server.requests_to("/hook")
    assert calls[0].header("Authorization") == f"Bearer {tokens.issued[0]}"
    assert calls[1].header("Authorization") == f"Bearer {tokens.issued[1]}"


def test_no_expires_in_caches_five_minutes(
    runner: StepRunner,
    redis_client: redis.Redis,
    config_dir: Path,
    webhook_server: WebhookServer,
    tokens: TokenEndpoint,
) -> None:
    tokens.expires_in = None
    write_tenant(config_dir, oauth_connector(webhook_server))

    result = finished(runner.run((make_job("job-1"),), {}))

    assert result["ActionStatus"] == "Success"
    ttl_ms = int(redis_client.pttl(token_keys(redis_client)[0]))
    assert 290_000 < ttl_ms <= 300_000


# --- 401 from the webhook --------------------------------------------------


def test_401_gets_new_token_once(
    runner: StepRunner,
    redis_client: redis.Redis,
    config_dir: Path,
    webhook_server: WebhookServer,
    tokens: TokenEndpoint,
) -> None:
    write_tenant(config_dir, oauth_connector(webhook_server))
    finished(runner.run((make_job("job-1"),), {}))
    # The authorization server revokes the cached token before it expires.
    tokens.revoke_all()

    result = finished(runner.run((make_job("job-2"),), {}))

    assert result["ActionStatus"] == "Success"
    assert result["Attempts"] == 1
    assert result["HttpStatus"] == 200
    assert tokens.token_requests() == 2
    calls = webhook_server.requests_to("/hook")
    assert len(calls) == 3
    assert calls[1].header("Authorization") == f"Bearer {tokens.issued[0]}"
    assert calls[2].header("Authorization") == f"Bearer {tokens.issued[1]}"
    cached = redis_client.get(token_keys(redis_client)[0])
    assert cached == tokens.issued[1].encode()


def test_401_twice_is_final(
    runner: StepRunner,
    config_dir: Path,
    webhook_server: WebhookServer,
    tokens: TokenEndpoint,
) -> None:
    write_tenant(config_dir, oauth_connector(webhook_server))
    webhook_server.route("/hook", lambda _r: Reply.json("{}", status=401))

    result = finished(runner.run((make_job("job-1"),), {}))

    assert result["ActionStatus"] == "Error"
    assert result["Attempts"] == 1
    assert result["HttpStatus"] == 401
    assert result["ErrorReason"].endswith("answered 401 Unauthorized")
    assert tokens.token_requests() == 2
    assert len(webhook_server.requests_to("/hook")) == 2


# --- a failing token endpoint ----------------------------------------------


def test_token_endpoint_refused_is_retried(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    token_url = f"http://127.0.0.1:{free_port()}/token"
    write_tenant(config_dir, oauth_connector(webhook_server, token_url))

    outcome = runner.run((make_job("job-1"),), {})

    assert isinstance(outcome, Reschedule)
    assert outcome.countdown_s == 1.0
    assert outcome.reason == (
        f"OAuth token request failed: connection to {token_url} failed: "
        "connection refused"
    )
    assert outcome.progress.attempts == 1
    assert webhook_server.requests_to("/hook") == []


@pytest.mark.parametrize("status", [503, 429, 500])
def test_token_endpoint_transient_status(
    runner: StepRunner,
    config_dir: Path,
    webhook_server: WebhookServer,
    status: int,
) -> None:
    write_tenant(config_dir, oauth_connector(webhook_server))
    webhook_server.route(
        "/token",
        lambda _r: Reply.json("{}", status=status, headers={"Retry-After": "3"}),
    )

    outcome = runner.run((make_job("job-1"),), {})

    assert isinstance(outcome, Reschedule)
    assert outcome.countdown_s == 3.0
    assert webhook_server.url("/token") in outcome.reason
    assert f"answered {status} " in outcome.reason
    assert webhook_server.requests_to("/hook") == []


def test_token_endpoint_invalid_client_is_final(
    runner: StepRunner, config_dir: Path, webhook_server: WebhookServer
) -> None:
    write_tenant(config_dir, oauth_connector(webhook_server))
    # Some servers echo the request in their description; it must not leak.
    answer = {"error": "invalid_client", "error_description": f"bad {CLIENT_SECRET}"}
    webhook_server.route(
        "/token", lambda _r: Reply.json(json.dumps(answer), status=400)
    )

    outcome = runner.run((make_job("job-1"),), {})
    result = finished(outcome)

    token_url = webhook_server.url("/token")
    assert result["ActionStatus"] == "Error"
    assert result["CancelWorkflow"] is True
    assert result["Attempts"] == 1
    assert result["HttpStatus"] is None
    assert result["ErrorReason"] == (
        f"OAuth token request failed: the token endpoint {token_url} answered "
        "400 Bad Request with error 'invalid_client'; check the connector's OAuth "
        "settings (TokenUrl, ClientId, ClientSecret, Scope, Resource, "
        "ClientAuthentication)"
    )
    assert isinstance(outcome, Finished)
    assert CLIENT_SECRET not in outcome.result_json
    assert webhook_server.requests_to("/hook") == []


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ("not json", "without a JSON object"),
        ('{"token_type":"Bearer"}', "without an access_token string"),
        ('{"access_token":"at-1234","token_type":"mac"}', "token_type 'mac'"),
    ],
)
def test_token_answer_unusable(
    config_dir: Path, webhook_server: WebhookServer, body: str, reason: str
) -> None:
    write_tenant(config_dir, oauth_connector(webhook_server))
    webhook_server.route("/token", lambda _r: Reply.json(body))
    runner = memory_runner(config_dir)

    result = finished(runner.run((make_job("job-1"),), {}))
    runner.client.close()

    assert result["ActionStatus"] == "Error"
    assert reason in result["ErrorReason"]
    assert webhook_server.url("/token") in result["ErrorReason"]
    assert webhook_server.requests_to("/hook") == []


def test_token_url_address_guarded(
    config_dir: Path, webhook_server: WebhookServer, tokens: TokenEndpoint
) -> None:
    write_tenant(config_dir, oauth_connector(webhook_server))
    runner = memory_runner(config_dir, allow_private_networks=False)

    result = finished(runner.run((make_job("job-1"),), {}))
    runner.client.close()

    assert result["ActionStatus"] == "Error"
    assert "OAuth token request failed: host '127.0.0.1'" in result["ErrorReason"]
    assert "may not reach" in result["ErrorReason"]
    assert webhook_server.requests == []


def test_slow_token_endpoint_times_out(
    config_dir: Path, webhook_server: WebhookServer, tokens: TokenEndpoint
) -> None:
    connector = oauth_connector(webhook_server)
    connector["TimeOut"] = "00:00:00.5"
    write_tenant(config_dir, connector)
    tokens.delay_s = 2.0
    runner = memory_runner(config_dir)

    started = time.monotonic()
    outcome = runner.run((make_job("job-1"),), {})
    elapsed_s = time.monotonic() - started
    runner.client.close()

    assert isinstance(outcome, Reschedule)
    assert "OAuth token request failed: request to" in outcome.reason
    assert "timed out" in outcome.reason
    assert elapsed_s < 1.5
    assert webhook_server.requests_to("/hook") == []


# --- secrets ---------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def echo_authorization(request: Request) -> Reply:
    """Answer with the request's Authorization header as the order's Name."""
    name = request.header("Authorization") or ""
    return Reply.json(json.dumps({"Name": name, "Status": "Approved"}))


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("scenario", ["success", "401", "invalid_client"])
def test_oauth_secrets_not_logged(
    runner: StepRunner,
    config_dir: Path,
    webhook_server: WebhookServer,
    tokens: TokenEndpoint,
    capfd: pytest.CaptureFixture[str],
    scenario: str,
) -> None:
    write_tenant(config_dir, oauth_connector(webhook_server))
    if scenario == "401":
        webhook_server.route("/hook", lambda _r: Reply.json("{}", status=401))
    else:
        webhook_server.route("/hook", tokens.protect(echo_authorization))
    if scenario == "invalid_client":
        tokens.client_secret = "another-secret"
    configure_logging("json", "INFO")

    outcome = runner.run((make_job("job-1"),), {})

    assert isinstance(outcome, Finished)
    logged = capfd.readouterr().err
    events = [json.loads(line)["event"] for line in logged.splitlines() if line]
    assert "job.finished" in events
    if scenario == "invalid_client":
        assert "oauth.token_request_failed" in events
    else:
        assert "oauth.token_fetched" in events
    pair = f"{quote_plus(CLIENT_ID)}:{quote_plus(CLIENT_SECRET)}"
    basic = base64.b64encode(pair.encode()).decode()
    assert tokens.issued or scenario == "invalid_client"
    for secret in (CLIENT_SECRET, basic, *tokens.issued):
        assert secret not in logged
        assert secret not in outcome.result_json
    if scenario == "success":
        assert json.loads(outcome.result_json)["Order"]["Name"] == "Bearer [REDACTED]"


def test_basic_credentials_form_encoded(
    config_dir: Path, webhook_server: WebhookServer, tokens: TokenEndpoint
) -> None:
    write_tenant(config_dir, oauth_connector(webhook_server))
    runner = memory_runner(config_dir)

    finished(runner.run((make_job("job-1"),), {}))
    runner.client.close()

    header = webhook_server.requests_to("/token")[0].header("Authorization") or ""
    decoded = base64.b64decode(header.removeprefix("Basic ")).decode()
    assert decoded == "shop+client:cs-7d41e9b2%2B%2F%3D"
    assert header.removeprefix("Basic ") in secrets.known_secrets()


def test_step_authorization_header_skips_token(
    config_dir: Path, webhook_server: WebhookServer, tokens: TokenEndpoint
) -> None:
    write_tenant(config_dir, oauth_connector(webhook_server))
    webhook_server.route("/hook", approve)
    job = make_job("job-1")
    job["Step"]["Properties"] = [
        {
            "Key": "Authorization",
            "Value": "Bearer step-token-1",
            "KeyGroup": "RequestHeaders",
        }
    ]
    runner = memory_runner(config_dir)

    result = finished(runner.run((job,), {}))
    runner.client.close()

    assert result["ActionStatus"] == "Success"
    assert tokens.token_requests() == 0
    call = webhook_server.requests_to("/hook")[0]
    assert call.header("Authorization") == "Bearer step-token-1"


# --- settings --------------------------------------------------------------


def parse_error(config_dir: Path, connector: dict[str, Any]) -> str:
    path = write_tenant(config_dir, connector)
    with pytest.raises(ConfigError) as caught:
        parse_tenant_file(path, TENANT, env={"HOOK_CLIENT_SECRET": CLIENT_SECRET})
    return str(caught.value)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            {"BearerToken": "${HOOK_CLIENT_SECRET}"},
            "OAuth cannot be combined with BearerToken",
        ),
        (
            {"Username": "shop", "Password": "${HOOK_CLIENT_SECRET}"},
            "OAuth cannot be combined with Username and Password",
        ),
        (
            {"IsAuthenticatedManually": True},
            "OAuth cannot be combined with IsAuthenticatedManually",
        ),
        (
            {
                "CustomHeaders": [
                    {"Key": "authorization", "Value": "${HOOK_CLIENT_SECRET}"}
                ]
            },
            "OAuth cannot be combined with a custom Authorization header",
        ),
    ],
)
def test_oauth_exclusive(
    config_dir: Path, webhook_server: WebhookServer, extra: dict[str, Any], message: str
) -> None:
    error = parse_error(config_dir, {**oauth_connector(webhook_server), **extra})

    assert "connector 'hook-1'" in error
    assert message in error


def test_client_secret_must_be_reference(
    config_dir: Path, webhook_server: WebhookServer
) -> None:
    connector = oauth_connector(webhook_server, ClientSecret="literal-secret-1")

    error = parse_error(config_dir, connector)

    assert "connector 'hook-1' field OAuth.ClientSecret: secrets must not be" in error
    assert "literal-secret-1" not in error


@pytest.mark.parametrize(
    ("oauth", "message"),
    [
        ({"TokenUrl": "ftp://127.0.0.1/token"}, "field OAuth: TokenUrl 'ftp"),
        (
            {"TokenUrl": "https://user:pw@idp.example.com/t"},
            "must not contain user info",
        ),
        ({"ClientAuthentication": "Header"}, "field OAuth.ClientAuthentication"),
        ({"ClientId": ""}, "field OAuth.ClientId"),
        ({"Audience": "x"}, "field OAuth.Audience: unknown property"),
    ],
)
def test_oauth_settings_invalid(
    config_dir: Path, webhook_server: WebhookServer, oauth: dict[str, Any], message: str
) -> None:
    error = parse_error(config_dir, oauth_connector(webhook_server, **oauth))

    assert "connector 'hook-1'" in error
    assert message in error
    assert "pw@" not in error


def test_client_secret_registered(
    config_dir: Path, webhook_server: WebhookServer
) -> None:
    path = write_tenant(config_dir, oauth_connector(webhook_server))

    loaded = parse_tenant_file(path, TENANT, env={"HOOK_CLIENT_SECRET": CLIENT_SECRET})

    assert CLIENT_SECRET in loaded.secret_values
    oauth = loaded.settings.connectors[0].oauth
    assert oauth is not None
    assert CLIENT_SECRET not in repr(oauth)
    assert oauth.client_authentication == "Basic"
