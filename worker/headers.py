"""Checks for HTTP header names and values that come from settings or jobs."""

from __future__ import annotations

import re

# RFC 9110 token characters.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Control characters other than horizontal tab could split or smuggle headers.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")

# Headers the worker sets itself; a setting or job cannot replace them.
RESERVED_HEADERS = frozenset(
    {
        "content-type",
        "content-length",
        "host",
        "idempotency-key",
        "transfer-encoding",
        "webhook-id",
        "webhook-timestamp",
        "webhook-signature",
    }
)

# Names whose values are treated as secrets even when not marked so.
_SENSITIVE_NAME = re.compile(
    r"authorization|token|secret|password|api[-_]?key|cookie|signature|credential",
    re.IGNORECASE,
)


def header_problem(name: str, value: str) -> str | None:
    """Return why a header cannot be sent, or None. The reason never shows the value."""
    if not _TOKEN.fullmatch(name):
        return f"header name {name!r} is not a valid HTTP token"
    if name.lower() in RESERVED_HEADERS:
        return f"header {name!r} is set by the worker and cannot be configured"
    if _CONTROL.search(value):
        return f"the value of header {name!r} contains a control character"
    if value != value.strip(" \t"):
        return f"the value of header {name!r} starts or ends with whitespace"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return (
            f"the value of header {name!r} contains characters outside ISO-8859-1; "
            "encode it (for example as base64) first"
        )
    return None


def is_sensitive_header(name: str) -> bool:
    """Return True for header names that usually carry credentials."""
    return bool(_SENSITIVE_NAME.search(name))
