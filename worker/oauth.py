"""OAuth 2.0 client credentials tokens for connectors, shared by all workers.

A connector with an ``OAuth`` setting gets its access token from the token
endpoint (RFC 6749 section 4.4) and sends it as ``Authorization: Bearer``. The
token is cached in Redis, under ``<key_prefix>:oauth:<sha256>``, until 30 s
before it expires, so every worker uses one token per connector. A short
Redis lock (``SET NX PX``) lets one worker fetch while the others wait for its
token. Without Redis (``run-step``) the cache is this process's memory.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import quote_plus, urlsplit

import redis
import structlog

from worker import __version__, secrets
from worker.errors import (
    InvalidResponseBody,
    WebhookError,
    WebhookRejected,
    WebhookTimeout,
    WebhookUnavailable,
)
from worker.tenants import ConnectorSettings, OAuthSettings
from worker.webhook import (
    TRANSIENT_STATUSES,
    FormResponse,
    TlsFiles,
    WebhookClient,
    safe_url,
)

log = structlog.get_logger(__name__)

# A token is dropped from the cache this long before the expiry that the token
# endpoint reports, so a call never starts with a token about to run out.
EXPIRY_MARGIN_S = 30.0
MIN_CACHE_TTL_S = 1.0
# Cache lifetime of a token whose response has no expires_in.
DEFAULT_TOKEN_TTL_S = 300.0
# How long a worker waits for another worker's token request before it sends
# its own; the attempt's deadline also bounds the wait.
MAX_LOCK_WAIT_S = 5.0
LOCK_POLL_S = 0.05

_USER_AGENT = f"webhook-step-worker/{__version__}"
# RFC 6749 section 5.2: an error code is printable ASCII without '"' and '\'.
_ERROR_CODE = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]{1,64}")

# Delete the cached token only if it is still the one that was rejected, since
# another worker may have stored a fresh one meanwhile. Also releases locks.
_DELETE_IF_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


class TokenCache(Protocol):
    """Storage for access tokens and the locks around fetching them."""

    def get(self, key: str) -> str | None: ...

    def put(self, key: str, token: str, ttl_ms: int) -> None: ...

    def discard(self, key: str, token: str) -> None:
        """Delete the token stored under ``key`` if it is ``token``."""

    def lock(self, key: str, owner: str, ttl_ms: int) -> bool:
        """Take the fetch lock of ``key`` for ``ttl_ms``; return False if it is held."""

    def unlock(self, key: str, owner: str) -> None: ...


class RedisTokenCache:
    """Tokens in Redis, shared by every worker that uses the same key prefix."""

    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self._delete_if = client.register_script(_DELETE_IF_SCRIPT)

    def _key(self, key: str) -> str:
        return f"{self.key_prefix}:oauth:{key}"

    def get(self, key: str) -> str | None:
        value = self.client.get(self._key(key))
        if value is None:
            return None
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    def put(self, key: str, token: str, ttl_ms: int) -> None:
        self.client.set(self._key(key), token, px=ttl_ms)

    def discard(self, key: str, token: str) -> None:
        self._delete_if(keys=[self._key(key)], args=[token])

    def lock(self, key: str, owner: str, ttl_ms: int) -> bool:
        return bool(
            self.client.set(self._key(key) + ":lock", owner, nx=True, px=ttl_ms)
        )

    def unlock(self, key: str, owner: str) -> None:
        self._delete_if(keys=[self._key(key) + ":lock"], args=[owner])


class MemoryTokenCache:
    """Tokens in this process's memory, for runs without Redis. Thread-safe."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def _live(self, name: str) -> str | None:
        entry = self._values.get(name)
        if entry is None:
            return None
        if entry[1] <= time.monotonic():
            del self._values[name]
            return None
        return entry[0]

    def get(self, key: str) -> str | None:
        with self._lock:
            return self._live(key)

    def put(self, key: str, token: str, ttl_ms: int) -> None:
        with self._lock:
            self._values[key] = (token, time.monotonic() + ttl_ms / 1000)

    def discard(self, key: str, token: str) -> None:
        with self._lock:
            if self._live(key) == token:
                del self._values[key]

    def lock(self, key: str, owner: str, ttl_ms: int) -> bool:
        name = key + ":lock"
        with self._lock:
            if self._live(name) is not None:
                return False
            self._values[name] = (owner, time.monotonic() + ttl_ms / 1000)
            return True

    def unlock(self, key: str, owner: str) -> None:
        self.discard(key + ":lock", owner)


def cache_key(tenant_id: str, connector: ConnectorSettings) -> str:
    """Return the hex SHA-256 that names a connector's token in the cache.

    The client secret is part of it, so a tenant file that copies another
    tenant's ClientId without its secret never gets that tenant's token, and
    a rotated secret fetches a new token.
    """
    oauth = _oauth(connector)
    secret_digest = hashlib.sha256(oauth.client_secret.encode("utf-8")).hexdigest()
    parts = (
        tenant_id,
        connector.label,
        oauth.token_url,
        oauth.client_id,
        oauth.scope or "",
        oauth.resource or "",
        secret_digest,
    )
    return hashlib.sha256("\n".join(parts).encode("utf-8")).hexdigest()


def _oauth(connector: ConnectorSettings) -> OAuthSettings:
    if connector.oauth is None:
        raise ValueError(f"connector {connector.label!r} has no OAuth settings")
    return connector.oauth


@dataclass(frozen=True)
class TokenRequest:
    """One connector's token, as one attempt needs it."""

    tenant_id: str
    connector: ConnectorSettings
    session_key: str
    tls: TlsFiles | None
    # time.monotonic() value at which the attempt's time runs out.
    deadline_at: float

    @property
    def oauth(self) -> OAuthSettings:
        return _oauth(self.connector)

    def remaining_s(self) -> float:
        return self.deadline_at - time.monotonic()


class TokenProvider:
    """Fetches, caches and drops the access tokens of OAuth connectors."""

    def __init__(self, client: WebhookClient, cache: TokenCache) -> None:
        self.client = client
        self.cache = cache

    def token(self, request: TokenRequest) -> str:
        """Return a cached token, or fetch one while holding the connector's lock.

        Raises:
            WebhookError: the token request failed; ``retryable`` is True when
                a later attempt can help.
        """
        key = cache_key(request.tenant_id, request.connector)
        owner = uuid.uuid4().hex
        wait_until = min(request.deadline_at, time.monotonic() + MAX_LOCK_WAIT_S)
        while True:
            cached = self.cache.get(key)
            if cached:
                secrets.register_temporary_secret(cached)
                return cached
            lock_ttl_ms = max(1, math.ceil(request.remaining_s() * 1000)) + 100
            if self.cache.lock(key, owner, lock_ttl_ms):
                try:
                    # Another worker may have stored a token just before the lock.
                    cached = self.cache.get(key)
                    if cached:
                        secrets.register_temporary_secret(cached)
                        return cached
                    return self._fetch(request, key)
                finally:
                    self.cache.unlock(key, owner)
            if time.monotonic() >= wait_until:
                break
            time.sleep(LOCK_POLL_S)
        # The worker holding the lock has not stored a token in time. It may be
        # stuck, so this worker sends its own request.
        log.info("oauth.lock_wait_expired", connector=request.connector.label)
        return self._fetch(request, key)

    def discard(self, tenant_id: str, connector: ConnectorSettings, token: str) -> None:
        """Drop ``token`` from the cache, after the webhook rejected it."""
        self.cache.discard(cache_key(tenant_id, connector), token)

    def _fetch(self, request: TokenRequest, key: str) -> str:
        oauth = request.oauth
        shown_url = safe_url(oauth.token_url)
        timeout_s = request.remaining_s()
        if timeout_s <= 0:
            raise WebhookTimeout(
                f"OAuth token request to {shown_url} was not sent: the connector's "
                "TimeOut ran out while waiting for another worker's token request",
                url=shown_url,
            )
        fields, headers = _token_form(oauth)
        started = time.monotonic()
        try:
            response = self.client.post_form(
                session_key=request.session_key,
                url=oauth.token_url,
                fields=fields,
                headers=headers,
                timeout_s=timeout_s,
                tls=request.tls,
                call_name="request",
            )
            token, ttl_s = _read_token(response, shown_url)
        except WebhookError as error:
            failure = _token_failure(error, shown_url)
            log.warning(
                "oauth.token_request_failed",
                connector=request.connector.label,
                host=urlsplit(oauth.token_url).hostname,
                elapsed_ms=round((time.monotonic() - started) * 1000),
                retryable=failure.retryable,
                error=str(failure),
            )
            raise failure from None
        secrets.register_temporary_secret(token)
        self.cache.put(key, token, round(ttl_s * 1000))
        log.info(
            "oauth.token_fetched",
            connector=request.connector.label,
            host=urlsplit(oauth.token_url).hostname,
            status=response.status,
            elapsed_ms=round((time.monotonic() - started) * 1000),
            cached_s=round(ttl_s, 3),
        )
        return token


def _token_form(oauth: OAuthSettings) -> tuple[dict[str, str], dict[str, str]]:
    """Return the form fields and headers of a client credentials token request."""
    fields = {"grant_type": "client_credentials"}
    if oauth.scope:
        fields["scope"] = oauth.scope
    if oauth.resource:
        fields["resource"] = oauth.resource
    headers = {"Accept": "application/json", "User-Agent": _USER_AGENT}
    if oauth.client_authentication == "Body":
        fields["client_id"] = oauth.client_id
        fields["client_secret"] = oauth.client_secret
    else:
        # RFC 6749 section 2.3.1: both parts are form-encoded before base64.
        pair = f"{quote_plus(oauth.client_id)}:{quote_plus(oauth.client_secret)}"
        credentials = base64.b64encode(pair.encode("utf-8")).decode("ascii")
        secrets.register_secrets([credentials])
        headers["Authorization"] = f"Basic {credentials}"
    return fields, headers


def _read_token(response: FormResponse, shown_url: str) -> tuple[str, float]:
    """Return the access token and how long to cache it, in seconds.

    Raises:
        WebhookError: the response is not a successful token response.
    """
    status, body = response.status, response.body
    answered = f"the token endpoint {shown_url} answered {_status_text(status)}"
    if not 200 <= status < 300:
        code = body.get("error") if isinstance(body, dict) else None
        if isinstance(code, str) and _ERROR_CODE.fullmatch(code):
            answered += f" with error {code!r}"
        if status >= 500 or status in TRANSIENT_STATUSES:
            raise WebhookUnavailable(
                answered, url=shown_url, retry_after_s=response.retry_after_s
            )
        raise WebhookRejected(
            f"{answered}; check the connector's OAuth settings (TokenUrl, ClientId, "
            "ClientSecret, Scope, Resource, ClientAuthentication)",
            url=shown_url,
        )
    if not isinstance(body, dict):
        raise InvalidResponseBody(
            f"{answered} without a JSON object; a token response is JSON with "
            "access_token",
            url=shown_url,
        )
    token = body.get("access_token")
    if not isinstance(token, str) or not token:
        raise InvalidResponseBody(
            f"{answered} without an access_token string", url=shown_url
        )
    token_type = body.get("token_type")
    if isinstance(token_type, str) and token_type.lower() != "bearer":
        raise InvalidResponseBody(
            f"{answered} with token_type {token_type[:40]!r}; only Bearer tokens "
            "are supported",
            url=shown_url,
        )
    return token, _cache_ttl_s(body.get("expires_in"))


def _cache_ttl_s(expires_in: Any) -> float:
    """Return how long to cache a token whose answer has this ``expires_in``."""
    seconds: float | None = None
    if isinstance(expires_in, int | float) and not isinstance(expires_in, bool):
        seconds = float(expires_in)
    elif isinstance(expires_in, str) and expires_in.strip().isdigit():
        # Some token endpoints send the number as a string.
        seconds = float(expires_in.strip())
    if seconds is None or not math.isfinite(seconds):
        return DEFAULT_TOKEN_TTL_S
    return max(MIN_CACHE_TTL_S, seconds - EXPIRY_MARGIN_S)


def _token_failure(error: WebhookError, shown_url: str) -> WebhookError:
    """Return ``error`` as a failure of the token request, of the same class.

    The status is left out: a result's HttpStatus is the webhook's status,
    and the token endpoint's status is in the message.
    """
    return type(error)(
        f"OAuth token request failed: {error}",
        url=shown_url,
        retry_after_s=error.retry_after_s,
    )


def _status_text(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)
