"""An OAuth 2.0 client credentials token endpoint, as a WebhookServer handler.

``TokenEndpoint.handle`` checks the grant type and the client credentials
(HTTP Basic or form fields, RFC 6749 section 2.3.1) and issues a fresh random
token on each request. ``TokenEndpoint.protect`` wraps a webhook handler so
that it returns 401 unless the request carries a token that was issued and not
revoked.
"""

from __future__ import annotations

import base64
import json
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import parse_qs, unquote_plus

from tests.support.webhook_server import Reply, Request

Handler = Callable[[Request], Reply]


@dataclass
class TokenEndpoint:
    """A token endpoint for one client; records issued tokens and rejected requests."""

    client_id: str
    client_secret: str
    client_authentication: Literal["Basic", "Body"] = "Basic"
    # None leaves expires_in out of the response.
    expires_in: int | None = 3600
    delay_s: float = 0.0
    issued: list[str] = field(default_factory=list)
    revoked: set[str] = field(default_factory=set)
    rejections: list[str] = field(default_factory=list)
    forms: list[dict[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def handle(self, request: Request) -> Reply:
        form = {
            name: values[0]
            for name, values in parse_qs(request.body.decode("ascii")).items()
        }
        with self._lock:
            self.forms.append(form)
        problem = self._problem(request, form)
        if problem is not None:
            with self._lock:
                self.rejections.append(problem)
            return Reply.json('{"error":"invalid_client"}', status=401)
        token = "at-" + secrets.token_hex(16)
        with self._lock:
            self.issued.append(token)
        answer: dict[str, object] = {"access_token": token, "token_type": "Bearer"}
        if self.expires_in is not None:
            answer["expires_in"] = self.expires_in
        return Reply.json(json.dumps(answer), delay_s=self.delay_s)

    def _problem(self, request: Request, form: dict[str, str]) -> str | None:
        if form.get("grant_type") != "client_credentials":
            return f"grant_type is {form.get('grant_type')!r}"
        content_type = request.header("Content-Type") or ""
        if not content_type.startswith("application/x-www-form-urlencoded"):
            return f"Content-Type is {content_type!r}"
        if self.client_authentication == "Body":
            if request.header("Authorization") is not None:
                return "Authorization header sent with Body authentication"
            pair = (form.get("client_id"), form.get("client_secret"))
        else:
            if "client_secret" in form:
                return "client_secret sent in the body with Basic authentication"
            pair = _basic_pair(request.header("Authorization") or "")
        if pair != (self.client_id, self.client_secret):
            return "wrong client credentials"
        return None

    def token_requests(self) -> int:
        with self._lock:
            return len(self.forms)

    def revoke_all(self) -> None:
        with self._lock:
            self.revoked.update(self.issued)

    def protect(self, handler: Handler) -> Handler:
        """Return ``handler`` behind a check of the request's Bearer token."""

        def checked(request: Request) -> Reply:
            header = request.header("Authorization") or ""
            token = header.removeprefix("Bearer ")
            with self._lock:
                valid = (
                    header.startswith("Bearer ")
                    and token in self.issued
                    and token not in self.revoked
                )
            if not valid:
                return Reply.json('{"error":"invalid_token"}', status=401)
            return handler(request)

        return checked


def _basic_pair(header: str) -> tuple[str | None, str | None]:
    """Decode an HTTP Basic header whose parts are form-encoded, per RFC 6749 2.3.1."""
    if not header.startswith("Basic "):
        return None, None
    decoded = base64.b64decode(header.removeprefix("Basic ")).decode("utf-8")
    user, _, password = decoded.partition(":")
    return unquote_plus(user), unquote_plus(password)
