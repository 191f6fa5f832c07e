"""Redis clients and Celery broker options from the worker's Redis URLs.

Three URL forms are understood, the same ones kombu takes for the broker
(settings reject any other scheme):

- ``redis://[user:password@]host:port/db``: plain connections;
- ``rediss://…``: TLS that verifies the server against ``REDIS_CA_FILE`` (the
  system's CA certificates without it), with an optional client certificate;
- ``sentinel://host:port;sentinel://host:port/db``: Redis Sentinel. The client
  queries the Sentinels for the master named by ``SENTINEL_MASTER``, again
  after a connection fails, so it follows a failover.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from redis.sentinel import Sentinel

from worker.errors import ConfigError
from worker.settings import ENV_PREFIX, WorkerSettings

SENTINEL_SCHEME = "sentinel"
DEFAULT_SENTINEL_PORT = 26379


@dataclass(frozen=True)
class SentinelUrl:
    """The parts of a ``sentinel://`` URL: Sentinel addresses, database, credentials.

    ``username`` and ``password`` authenticate at the master, not at the Sentinels.
    """

    sentinels: tuple[tuple[str, int], ...]
    db: int
    username: str | None
    password: str | None


def is_sentinel_url(url: str) -> bool:
    return url.lower().startswith(f"{SENTINEL_SCHEME}://")


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Split a ``;``-separated list of ``sentinel://`` URLs.

    kombu 5.7 reads the database and the credentials from the first URL only,
    so a later URL that names other ones is rejected rather than silently
    giving the broker and the result client different databases.

    Raises:
        ConfigError: a part is not a ``sentinel://`` URL with a host, or the
            parts disagree on the database or the credentials.
    """
    parts = [part.strip() for part in url.split(";") if part.strip()]
    if not parts:
        raise ConfigError("the sentinel URL is empty")
    sentinels = []
    details = []
    for index, part in enumerate(parts):
        split = urlsplit(part)
        if split.scheme.lower() != SENTINEL_SCHEME or not split.hostname:
            raise ConfigError(
                f"part {index + 1} of the sentinel URL is not sentinel://host:port "
                f"(got scheme {split.scheme!r}); separate Sentinels with ';'"
            )
        try:
            port = split.port or DEFAULT_SENTINEL_PORT
        except ValueError:
            raise ConfigError(
                f"part {index + 1} of the sentinel URL has an invalid port"
            ) from None
        sentinels.append((split.hostname, port))
        details.append((_database(split.path, index), split.username, split.password))
    db, username, password = details[0]
    for index, (other_db, other_username, other_password) in enumerate(
        details[1:], start=2
    ):
        other_db_differs = other_db is not None and other_db != (db or 0)
        if other_db_differs or (other_username, other_password) not in (
            (None, None),
            (username, password),
        ):
            raise ConfigError(
                f"part {index} of the sentinel URL names a database or credentials "
                "other than the first part's; kombu uses those of the first part "
                "only, so write them there"
            )
    return SentinelUrl(
        sentinels=tuple(sentinels),
        db=db or 0,
        username=unquote(username) if username else None,
        password=unquote(password) if password else None,
    )


def _database(path: str, index: int) -> int | None:
    text = path.strip("/")
    if not text:
        return None
    if not text.isdigit():
        raise ConfigError(
            f"part {index + 1} of the sentinel URL has the path /{text}; "
            "expected a database number such as /0"
        )
    return int(text)


def tls_options(settings: WorkerSettings) -> dict[str, Any]:
    """Return the TLS keyword arguments of redis-py's ``SSLConnection``.

    The server's certificate and host name are always verified. kombu's
    ``broker_use_ssl`` takes the same keys.
    """
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.redis_ca_file is not None:
        options["ssl_ca_certs"] = str(settings.redis_ca_file)
    if settings.redis_cert_file is not None and settings.redis_key_file is not None:
        options["ssl_certfile"] = str(settings.redis_cert_file)
        options["ssl_keyfile"] = str(settings.redis_key_file)
    return options


def redis_from_url(
    url: str, settings: WorkerSettings, **connection_options: Any
) -> redis.Redis:
    """Return a client for ``url``, with TLS and Sentinel taken from the settings.

    ``connection_options`` (for example ``socket_timeout``) apply to the Redis
    connections, and to the Sentinel connections of a ``sentinel://`` URL.

    Raises:
        ConfigError: a sentinel URL is invalid or ``SENTINEL_MASTER`` is unset.
    """
    if is_sentinel_url(url):
        return _sentinel_master(url, settings, connection_options)
    if url.lower().startswith("rediss://"):
        connection_options = {**tls_options(settings), **connection_options}
    return redis.Redis.from_url(url, **connection_options)


def _sentinel_master(
    url: str, settings: WorkerSettings, connection_options: dict[str, Any]
) -> redis.Redis:
    if not settings.sentinel_master:
        raise ConfigError(
            f"{url.split(';')[0]}… is a sentinel URL; set "
            f"{ENV_PREFIX}SENTINEL_MASTER to the name of the monitored master"
        )
    parsed = parse_sentinel_url(url)
    sentinel_options = dict(connection_options)
    master_options: dict[str, Any] = {
        **connection_options,
        "db": parsed.db,
        "username": parsed.username,
        "password": parsed.password,
    }
    if settings.sentinel_password is not None:
        sentinel_options["password"] = settings.sentinel_password.get_secret_value()
    if settings.sentinel_tls:
        # NOTE: only unit tests check these options; no test runs Sentinels with TLS.
        tls = {"ssl": True, **tls_options(settings)}
        sentinel_options.update(tls)
        master_options.update(tls)
    sentinel = Sentinel(
        list(parsed.sentinels), sentinel_kwargs=sentinel_options, **master_options
    )
    master: redis.Redis = sentinel.master_for(
        settings.sentinel_master, redis_class=redis.Redis
    )
    return master


def broker_options(settings: WorkerSettings) -> dict[str, Any]:
    """Return Celery settings that point the broker at Sentinel and TLS.

    The result merges into ``app.conf``; its ``broker_transport_options`` are
    added to the ones the application sets itself.
    """
    url = settings.broker_url
    options: dict[str, Any] = {"broker_transport_options": {}}
    if is_sentinel_url(url):
        transport = options["broker_transport_options"]
        transport["master_name"] = settings.sentinel_master
        # kombu gives the Sentinel connections sentinel_kwargs only, and
        # broker_use_ssl to the master's connections.
        sentinel_kwargs: dict[str, Any] = {}
        if settings.sentinel_password is not None:
            sentinel_kwargs["password"] = settings.sentinel_password.get_secret_value()
        if settings.sentinel_tls:
            sentinel_kwargs.update({"ssl": True, **tls_options(settings)})
            options["broker_use_ssl"] = tls_options(settings)
        if sentinel_kwargs:
            transport["sentinel_kwargs"] = sentinel_kwargs
    elif url.lower().startswith("rediss://"):
        options["broker_use_ssl"] = tls_options(settings)
    return options
