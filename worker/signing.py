"""Signed webhook requests, as the Standard Webhooks specification defines them.

Each request carries three headers: ``webhook-id`` (the JobId, the same on every
retry), ``webhook-timestamp`` (Unix seconds when the attempt was sent) and
``webhook-signature``: ``v1,`` followed by the base64 HMAC-SHA256 of
``<id>.<timestamp>.<body>`` under the connector's ``SigningSecret``. A secret
written as ``whsec_<base64>`` is decoded first, as the specification's
libraries do; any other string is used as its UTF-8 bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import time
from collections.abc import Mapping

from worker.errors import ConfigError

SECRET_PREFIX = "whsec_"
# Receivers should reject a timestamp further than this from their own clock.
DEFAULT_TOLERANCE_S = 300


def secret_key(secret: str) -> bytes:
    """Return the HMAC key for a SigningSecret.

    Raises:
        ConfigError: a ``whsec_`` secret whose rest is not base64.
    """
    if not secret.startswith(SECRET_PREFIX):
        return secret.encode("utf-8")
    try:
        return base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(
            "SigningSecret starts with whsec_ but the rest is not base64; "
            "give the secret exactly as the receiver generated it"
        ) from None


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """Return the ``v1,<base64>`` signature of one request."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def signature_headers(
    key: bytes, message_id: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    """Return the three headers that sign ``body``."""
    timestamp = int(now if now is not None else time.time())
    return {
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": sign(key, message_id, timestamp, body),
    }


def verify(
    key: bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> str | None:
    """Check a signed request as a receiver would; return the problem, or None."""
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id = lowered.get("webhook-id")
    timestamp_text = lowered.get("webhook-timestamp", "")
    signatures = lowered.get("webhook-signature", "")
    if not message_id or not timestamp_text.isascii() or not timestamp_text.isdigit():
        return "missing or invalid webhook-id or webhook-timestamp header"
    timestamp = int(timestamp_text)
    current = now if now is not None else time.time()
    if abs(current - timestamp) > tolerance_s:
        return f"webhook-timestamp is more than {tolerance_s} s from now"
    expected = sign(key, message_id, timestamp, body)
    # The header may list several space-separated signatures, one per key.
    for candidate in signatures.split():
        if hmac.compare_digest(candidate, expected):
            return None
    return "no signature in webhook-signature matches"
