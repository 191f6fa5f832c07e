"""Sentinel URL parsing, TLS options and Celery broker options."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from pydantic import ValidationError
from redis.sentinel import SentinelConnectionPool

from worker.errors import ConfigError
from worker.redis_client import (
    broker_options,
    parse_sentinel_url,
    redis_from_url,
    tls_options,
)
from worker.settings import WorkerSettings, load_settings
from worker.startup import startup_problems
from worker.urls import masked_url

SENTINELS = "sentinel://127.0.0.1:26379;sentinel://127.0.0.1:26380"


def test_sentinel_url_database_on_last_part() -> None:
    parsed = parse_sentinel_url(f"{SENTINELS}/0")
    assert parsed.sentinels == (("127.0.0.1", 26379), ("127.0.0.1", 26380))
    assert parsed.db == 0
    assert parsed.password is None


def test_sentinel_url_first_part_credentials() -> None:
    parsed = parse_sentinel_url("sentinel://:p%40ss@a:1/2;sentinel://b")
    assert parsed.sentinels == (("a", 1), ("b", 26379))
    assert parsed.db == 2
    assert parsed.password == "p@ss"


@pytest.mark.parametrize(
    "url",
    [
        # kombu reads the database of the first part only.
        "sentinel://a:1;sentinel://b:2/3",
        "sentinel://a:1;sentinel://:secret@b:2",
        "sentinel://a:1;redis://b:2",
        "sentinel://a:1/x",
        "sentinel://a:99999",
        "",
    ],
)
def test_sentinel_url_invalid(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_sentinel_url(url)


def test_sentinel_requires_master_name() -> None:
    with pytest.raises(ValidationError, match="SENTINEL_MASTER"):
        WorkerSettings(broker_url=SENTINELS)


@pytest.mark.parametrize(
    ("variable", "url", "expected"),
    [
        ("BROKER_URL", "unix://:hunter2@/run/redis.sock", "scheme unix://"),
        ("BROKER_URL", "redis+socket:///run/redis.sock", "scheme redis+socket://"),
        ("REDIS_URL", "127.0.0.1:6379", "no URL scheme"),
        ("REDIS_URL", "amqp://guest:hunter2@127.0.0.1//", "scheme amqp://"),
        # An unencoded / or # in a password makes the rest parse as a path or
        # a fragment, so the parser's own error would show part of it.
        ("BROKER_URL", "redis://:hunter2/x@127.0.0.1:6379/0", "invalid port"),
        ("BROKER_URL", "redis://:hunter2#x@127.0.0.1:6379/0", "invalid port"),
        ("BROKER_URL", "redis://:12/hunter2@127.0.0.1/0", "names no host"),
        ("REDIS_URL", "sentinel://a:1;sentinel://:hunter2#@b:2", "part 2"),
    ],
)
def test_invalid_url_setting(
    monkeypatch: pytest.MonkeyPatch, variable: str, url: str, expected: str
) -> None:
    monkeypatch.setenv(f"WEBHOOK_WORKER_{variable}", url)
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert f"WEBHOOK_WORKER_{variable}: " in message
    assert expected in message
    # Each message names the fix.
    fix = "redis://host:port/db" if "scheme" in expected else "percent-encode"
    assert fix in message
    # The URL may hold a password, so the message never repeats it.
    assert "hunter2" not in message
    assert url not in message


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:hunter2@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
        ("rediss://user:hunter2@h/1", "rediss://***@h/1"),
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        (
            "sentinel://:hunter2@a:1;sentinel://b:2/0",
            "sentinel://***@a:1;sentinel://b:2/0",
        ),
        ("redis://:hunter2/x@h:1/0", "(a URL that does not parse)"),
    ],
)
def test_masked_url(url: str, shown: str) -> None:
    assert masked_url(url) == shown


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "REDISS://h:6380/1", f"{SENTINELS}/0"]
)
def test_supported_url_schemes(url: str) -> None:
    settings = WorkerSettings(broker_url=url, redis_url=url, sentinel_master="m")
    assert settings.broker_url == url


def test_client_certificate_needs_key(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="REDIS_KEY_FILE"):
        WorkerSettings(redis_cert_file=tmp_path / "client.crt")


def test_sentinel_client_asks_for_master() -> None:
    settings = WorkerSettings(broker_url=SENTINELS, sentinel_master="main")
    client = redis_from_url(SENTINELS.replace(";", "/4;", 1), settings)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool)
    assert pool.service_name == "main"
    assert pool.connection_kwargs["db"] == 4


def test_rediss_client_verifies_server(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.crt"
    settings = WorkerSettings(redis_ca_file=ca_file)
    client = redis_from_url("rediss://127.0.0.1:6380/0", settings)
    kwargs = client.connection_pool.connection_kwargs
    assert kwargs["ssl_cert_reqs"] == ssl.CERT_REQUIRED
    assert kwargs["ssl_ca_certs"] == str(ca_file)


def test_broker_options_sentinel_tls(tmp_path: Path) -> None:
    settings = WorkerSettings(
        broker_url=SENTINELS,
        sentinel_master="main",
        sentinel_tls=True,
        redis_ca_file=tmp_path / "ca.crt",
    )
    options = broker_options(settings)
    transport = options["broker_transport_options"]
    assert transport["master_name"] == "main"
    assert transport["sentinel_kwargs"]["ssl"] is True
    assert options["broker_use_ssl"] == tls_options(settings)


def test_broker_options_sentinel_password(tmp_path: Path) -> None:
    settings = WorkerSettings(
        broker_url=SENTINELS,
        sentinel_master="main",
        sentinel_password="sentinel-secret",
        sentinel_tls=True,
        redis_ca_file=tmp_path / "ca.crt",
    )
    sentinel_kwargs = broker_options(settings)["broker_transport_options"][
        "sentinel_kwargs"
    ]
    assert sentinel_kwargs["password"] == "sentinel-secret"
    assert sentinel_kwargs["ssl"] is True


def test_sentinel_password_needs_sentinel_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBHOOK_WORKER_SENTINEL_PASSWORD", "hunter2-sentinel")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "SENTINEL_PASSWORD is set" in message
    assert "hunter2-sentinel" not in message


def test_broker_options_plain_redis() -> None:
    options = broker_options(WorkerSettings(broker_url="redis://127.0.0.1:6379/0"))
    assert options == {"broker_transport_options": {}}


def test_startup_reports_sentinel_url_mismatch(tmp_path: Path) -> None:
    settings = WorkerSettings(
        broker_url="sentinel://:one@a:1;sentinel://:hunter2@b:2",
        sentinel_master="main",
        config_dir=tmp_path,
    )
    problems = startup_problems(settings)
    assert len(problems) == 1
    assert problems[0].startswith("WEBHOOK_WORKER_BROKER_URL: part 2")
    assert "hunter2" not in problems[0]
