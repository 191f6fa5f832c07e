"""Fixtures shared by all tests: a private Redis per session, clean keys per test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.redis_server import RedisServer
from tests.support.webhook_server import WebhookServer, running_server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    client = redis_server.client()
    client.flushdb()
    yield client
    client.close()


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "tenants"
    directory.mkdir()
    return directory


@pytest.fixture
def webhook_server() -> Iterator[WebhookServer]:
    with running_server() as server:
        yield server


@pytest.fixture
def aof_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """Yield a private append-only redis-server, so its data survives a restart."""
    directory = tmp_path / "redis"
    directory.mkdir()
    server = RedisServer(directory, appendonly=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()
