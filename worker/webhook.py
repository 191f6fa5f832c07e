"""The HTTP call to a webhook: one POST, bounded in time and size, never redirected."""

from __future__ import annotations

import http.client
import http.cookiejar
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode, urlsplit

import requests
import structlog
from requests.adapters import HTTPAdapter

from worker import jsontext
from worker.deadline import Deadline, deadline_scope
from worker.errors import (
    BlockedAddress,
    InvalidResponseBody,
    WebhookRedirected,
    WebhookRejected,
    WebhookTimeout,
    WebhookUnavailable,
)
from worker.netguard import AddressNotAllowed, AddressPolicy, check_host, pool_classes

log = structlog.get_logger(__name__)

TRANSIENT_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_READ_CHUNK_BYTES = 64 * 1024
# Largest total size of a response's header lines. http.client alone allows
# 100 lines of 64 KiB each.
DEFAULT_MAX_HEADER_BYTES = 64 * 1024


_DIGITS = re.compile(r"[0-9]+")


def safe_url(url: str) -> str:
    """Return the URL without user info, query or fragment, for messages and logs."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Return the delay in seconds that a Retry-After header requests, or None."""
    if not value:
        return None
    text = value.strip()
    if _DIGITS.fullmatch(text):
        return float(text)
    try:
        moment = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    now = now or datetime.now(UTC)
    return max(0.0, (moment - now).total_seconds())


@dataclass(frozen=True)
class TlsFiles:
    """A connector's client certificate, its private key and CA bundle (PEM paths)."""

    certificate_file: str | None = None
    key_file: str | None = None
    ca_bundle_file: str | None = None


@dataclass(frozen=True)
class FormResponse:
    """Any response to a form POST: the status, the JSON body, and Retry-After.

    ``body`` is None when the body is empty or not valid JSON.
    """

    status: int
    body: Any
    retry_after_s: float | None


@dataclass(frozen=True)
class WebhookResponse:
    """A 2xx response: the status and the parsed body (None for empty or null)."""

    status: int
    body: dict[str, Any] | None
    elapsed_ms: int


class _NoRedirectSession(requests.Session):
    """A session that never looks at a redirect's Location.

    With ``allow_redirects=False`` requests still parses the Location to
    prepare the next request, and raises ValueError on a malformed one. The
    worker follows no redirect, so it needs no Location parsed.
    """

    def get_redirect_target(self, resp: requests.Response) -> None:
        return None


class _GuardedAdapter(HTTPAdapter):
    """An adapter whose proxy connections also obey the call's deadline.

    requests builds a separate pool manager per proxy, which would use plain
    urllib3 connections. The proxy itself is a trusted setting, so its address
    is not checked; the webhook's address is checked before the request.
    """

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        manager.pool_classes_by_scheme = pool_classes(
            AddressPolicy(allow_private_networks=True)
        )
        return manager


class WebhookClient:
    """POSTs to webhooks over one keep-alive session per connector. Thread-safe."""

    def __init__(
        self,
        *,
        allow_private_networks: bool = False,
        max_response_bytes: int,
        pool_size: int = 32,
        policy: AddressPolicy | None = None,
        proxy_url: str | None = None,
        ca_bundle: str | None = None,
        max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    ) -> None:
        self.policy = policy or AddressPolicy(
            allow_private_networks=allow_private_networks
        )
        self.max_response_bytes = max_response_bytes
        self.pool_size = pool_size
        self.proxy_url = proxy_url
        self.ca_bundle = ca_bundle
        self.max_header_bytes = max_header_bytes
        self._sessions: dict[str, requests.Session] = {}
        self._lock = threading.Lock()

    def _new_session(self, tls: TlsFiles | None) -> requests.Session:
        session = _NoRedirectSession()
        # Proxies and .netrc credentials from the environment are never used;
        # a proxy comes only from WEBHOOK_WORKER_PROXY_URL.
        session.trust_env = False
        if self.proxy_url:
            session.proxies = {"http": self.proxy_url, "https": self.proxy_url}
        if self.ca_bundle:
            session.verify = self.ca_bundle
        if tls is not None:
            if tls.ca_bundle_file:
                session.verify = tls.ca_bundle_file
            if tls.certificate_file and tls.key_file:
                session.cert = (tls.certificate_file, tls.key_file)
            elif tls.certificate_file:
                session.cert = tls.certificate_file
        session.cookies.set_policy(
            http.cookiejar.DefaultCookiePolicy(allowed_domains=[])
        )
        adapter = _GuardedAdapter(
            pool_connections=4, pool_maxsize=self.pool_size, max_retries=0
        )
        adapter.poolmanager.pool_classes_by_scheme = pool_classes(self.policy)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session

    def session_for(self, key: str, tls: TlsFiles | None = None) -> requests.Session:
        """Return the session of one connector, creating it on first use.

        ``tls`` applies only when the session is created, so ``key`` must
        change whenever the connector's TLS files do.
        """
        session = self._sessions.get(key)
        if session is None:
            with self._lock:
                session = self._sessions.get(key)
                if session is None:
                    session = self._new_session(tls)
                    self._sessions[key] = session
        return session

    def close(self) -> None:
        with self._lock:
            sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            session.close()

    def post(
        self,
        *,
        session_key: str,
        url: str,
        headers: dict[str, str],
        body: bytes,
        timeout_s: float,
        attempt: int,
        tls: TlsFiles | None = None,
    ) -> WebhookResponse:
        """POST ``body`` and return the parsed 2xx answer.

        ``timeout_s`` bounds the whole call: connect, send, wait and read.

        Raises:
            WebhookError: a subclass that says whether a retry can help.
        """
        shown_url = safe_url(url)
        parts = urlsplit(url)
        started = time.monotonic()
        status: int | None = None
        try:
            with deadline_scope(timeout_s) as deadline:
                session = self.session_for(session_key, tls)
                status, parsed = self._exchange(
                    session, url, shown_url, headers, body, deadline, timeout_s
                )
        except Exception as error:
            log.warning(
                "webhook.call",
                host=parts.hostname,
                path=parts.path,
                status=getattr(error, "status", status),
                elapsed_ms=_elapsed_ms(started),
                attempt=attempt,
                outcome=type(error).__name__,
                error=str(error),
            )
            raise
        elapsed_ms = _elapsed_ms(started)
        log.info(
            "webhook.call",
            host=parts.hostname,
            path=parts.path,
            status=status,
            elapsed_ms=elapsed_ms,
            attempt=attempt,
            outcome="ok",
        )
        return WebhookResponse(status, parsed, elapsed_ms)

    def post_form(
        self,
        *,
        session_key: str,
        url: str,
        fields: dict[str, str],
        headers: dict[str, str],
        timeout_s: float,
        tls: TlsFiles | None = None,
        call_name: str = "form POST",
    ) -> FormResponse:
        """POST ``fields`` form-encoded and return the answer, whatever its status.

        The call goes through the session of ``session_key`` with the same
        address checks, deadline, header limit and body limit as a webhook
        call. ``call_name`` names the call in error messages.

        Raises:
            WebhookError: no answer arrived (connection error, timeout, blocked
                address) or the answer is over the size limits.
        """
        shown_url = safe_url(url)
        body = urlencode(fields).encode("ascii")
        form_headers = {
            **headers,
            "Content-Type": "application/x-www-form-urlencoded",
        }
        with deadline_scope(timeout_s) as deadline:
            session = self.session_for(session_key, tls)
            response = self._send(
                session,
                url,
                shown_url,
                form_headers,
                body,
                deadline,
                timeout_s,
                call_name,
            )
            with response:
                status = response.status_code
                self._check_header_size(response, shown_url)
                content = self._read_body(
                    response, deadline, shown_url, timeout_s, call_name
                )
        try:
            parsed = jsontext.loads(content.decode("utf-8").removeprefix("\ufeff"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            parsed = None
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        return FormResponse(status, parsed, retry_after)

    def _exchange(
        self,
        session: requests.Session,
        url: str,
        shown_url: str,
        headers: dict[str, str],
        body: bytes,
        deadline: Deadline,
        timeout_s: float,
    ) -> tuple[int, dict[str, Any] | None]:
        response = self._send(
            session, url, shown_url, headers, body, deadline, timeout_s
        )
        with response:
            status = response.status_code
            self._check_header_size(response, shown_url)
            _check_status(response, shown_url)
            content = self._read_body(response, deadline, shown_url, timeout_s)
        return status, _parse_body(content, shown_url, status)

    def _send(
        self,
        session: requests.Session,
        url: str,
        shown_url: str,
        headers: dict[str, str],
        body: bytes,
        deadline: Deadline,
        timeout_s: float,
        call_name: str = "webhook call",
    ) -> requests.Response:
        """POST and return the streamed response, once its headers have arrived."""
        if self.proxy_url:
            # The proxy, not this worker, opens the connection to the webhook,
            # so the address check runs here, before the request.
            parts = urlsplit(url)
            try:
                check_host(parts.hostname or "", parts.port or 443, self.policy)
            except AddressNotAllowed as error:
                raise BlockedAddress(str(error), url=shown_url) from None
            except OSError as error:
                raise WebhookUnavailable(
                    f"cannot resolve the host of {shown_url}: {error}", url=shown_url
                ) from None
        try:
            response = session.post(
                url,
                data=body,
                headers=headers,
                timeout=(timeout_s, timeout_s),
                allow_redirects=False,
                stream=True,
            )
        except AddressNotAllowed as error:
            raise BlockedAddress(str(error), url=shown_url) from None
        except requests.exceptions.InvalidHeader:
            # The exception's message quotes the header value, which may be a secret.
            raise WebhookRejected(
                f"a request header for {shown_url} is invalid, so nothing was sent; "
                "check the connector's headers and the step's RequestHeaders",
                url=shown_url,
            ) from None
        except requests.RequestException as error:
            if deadline.expired or isinstance(error, requests.Timeout):
                raise _timeout(shown_url, timeout_s, call_name) from None
            if _headers_too_large(error):
                raise InvalidResponseBody(
                    f"the response headers of {shown_url} exceed the limits of "
                    "Python's http.client (100 lines of at most 64 KiB); send fewer "
                    "or shorter headers",
                    url=shown_url,
                ) from None
            if isinstance(error, requests.exceptions.SSLError):
                raise WebhookUnavailable(
                    f"TLS connection to {shown_url} failed: {_reason(error)}; check "
                    "the server's certificate against the CA bundle, and the "
                    "connector's client certificate if the server requires one",
                    url=shown_url,
                ) from None
            raise WebhookUnavailable(
                f"connection to {shown_url} failed: {_reason(error)}", url=shown_url
            ) from None
        return response

    def _check_header_size(self, response: requests.Response, shown_url: str) -> None:
        header_bytes = sum(
            len(name) + len(value) + 4 for name, value in response.headers.items()
        )
        if header_bytes > self.max_header_bytes:
            response.close()
            raise InvalidResponseBody(
                f"the response headers of {shown_url} are {header_bytes} bytes, "
                f"more than the limit of {self.max_header_bytes}",
                url=shown_url,
                status=response.status_code,
            )

    def _read_body(
        self,
        response: requests.Response,
        deadline: Deadline,
        shown_url: str,
        timeout_s: float,
        call_name: str = "webhook call",
    ) -> bytes:
        limit = self.max_response_bytes
        declared = response.headers.get("Content-Length", "")
        if _DIGITS.fullmatch(declared) and int(declared) > limit:
            raise _too_large(shown_url, response.status_code, limit)

        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                chunk = response.raw.read(_READ_CHUNK_BYTES, decode_content=True)
                if not chunk:
                    break
                size += len(chunk)
                if size > limit:
                    raise _too_large(shown_url, response.status_code, limit)
                chunks.append(chunk)
        except InvalidResponseBody:
            raise
        except Exception as error:
            if deadline.expired:
                raise _timeout(shown_url, timeout_s, call_name) from None
            raise WebhookUnavailable(
                f"reading the response of {shown_url} failed: {_reason(error)}",
                url=shown_url,
                status=response.status_code,
            ) from None
        if deadline.expired:
            raise _timeout(shown_url, timeout_s, call_name)
        return b"".join(chunks)


def _headers_too_large(error: BaseException) -> bool:
    """Return True when http.client gave up on the response's header lines."""
    seen: BaseException | None = error
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, http.client.LineTooLong):
            return True
        if isinstance(seen, http.client.HTTPException) and "headers" in str(seen):
            return True
        arguments = getattr(seen, "args", ())
        nested = next((a for a in arguments if isinstance(a, BaseException)), None)
        reason = getattr(seen, "reason", None)
        if nested is None and isinstance(reason, BaseException):
            nested = reason
        seen = nested or seen.__context__
    return False


def _elapsed_ms(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _reason(error: BaseException) -> str:
    """Return the innermost cause of a requests or urllib3 error, without URLs."""
    while error.__context__ is not None and error.__cause__ is None:
        error = error.__context__
    inner = error
    for _ in range(5):
        arguments = getattr(inner, "args", ())
        nested = arguments[0] if arguments else None
        if not isinstance(nested, BaseException):
            reason = getattr(inner, "reason", None)
            if not isinstance(reason, BaseException):
                break
            nested = reason
        inner = nested
    text = str(inner)
    if "Connection refused" in text:
        return "connection refused"
    if "reset" in text.lower():
        return "connection reset by peer"
    return f"{type(inner).__name__}: {text}"[:200]


def _timeout(
    shown_url: str, timeout_s: float, call_name: str = "webhook call"
) -> WebhookTimeout:
    return WebhookTimeout(
        f"{call_name} to {shown_url} timed out after {timeout_s:g} s "
        "(the connector's TimeOut bounds the whole call)",
        url=shown_url,
    )


def _too_large(shown_url: str, status: int, limit: int) -> InvalidResponseBody:
    return InvalidResponseBody(
        f"the response of {shown_url} is larger than {limit} bytes; the webhook "
        "should return only the changed properties, or raise "
        "WEBHOOK_WORKER_MAX_RESPONSE_BYTES",
        url=shown_url,
        status=status,
    )


def _status_text(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def _redirect_target(location: str) -> str:
    """Describe a Location header by its host only, since its query may hold tokens."""
    if not location:
        return "without a Location"
    try:
        host = urlsplit(location).hostname
    except ValueError:
        return "to an invalid Location"
    return f"to {host}" if host else "to a relative Location"


def _check_status(response: requests.Response, shown_url: str) -> None:
    status = response.status_code
    if 200 <= status < 300:
        return
    if 300 <= status < 400:
        target = _redirect_target(response.headers.get("Location", ""))
        raise WebhookRedirected(
            f"webhook {shown_url} answered {_status_text(status)} ({target}); "
            "redirects are not followed, so configure the final URL",
            url=shown_url,
            status=status,
        )
    if status in TRANSIENT_STATUSES:
        raise WebhookUnavailable(
            f"webhook {shown_url} answered {_status_text(status)}",
            url=shown_url,
            status=status,
            retry_after_s=parse_retry_after(response.headers.get("Retry-After")),
        )
    raise WebhookRejected(
        f"webhook {shown_url} answered {_status_text(status)}",
        url=shown_url,
        status=status,
    )


def _parse_body(content: bytes, shown_url: str, status: int) -> dict[str, Any] | None:
    if not content.strip():
        return None
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as error:
        raise InvalidResponseBody(
            f"the response of {shown_url} is not UTF-8 "
            f"(invalid byte at position {error.start}); send JSON in UTF-8",
            url=shown_url,
            status=status,
        ) from None
    try:
        parsed = jsontext.loads(text.removeprefix("\ufeff"))
    except RecursionError:
        raise InvalidResponseBody(
            f"the response of {shown_url} is nested too deeply to parse; send a "
            "flat JSON object with the changed order properties",
            url=shown_url,
            status=status,
        ) from None
    except ValueError as error:
        raise InvalidResponseBody(
            f"the response of {shown_url} is not valid JSON ({error}); send a JSON "
            "object with the changed order properties, or an empty body",
            url=shown_url,
            status=status,
        ) from None
    if parsed is None:
        return None
    if not isinstance(parsed, dict):
        kind = "an array" if isinstance(parsed, list) else "a single value"
        raise InvalidResponseBody(
            f"the response of {shown_url} is {kind}; send a JSON object with the "
            "changed order properties, or an empty body",
            url=shown_url,
            status=status,
        )
    return parsed
