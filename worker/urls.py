"""Checks and display of Redis URL settings, which may contain a password.

Nothing here repeats any part of a URL's user or password in a message: a
password with an unencoded ``/`` or ``#`` would otherwise show up in the
parser's own error text.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# URL schemes that both kombu's broker transport and redis-py understand.
REDIS_SCHEMES = ("redis", "rediss", "sentinel")
_SCHEME = re.compile(r"[a-z][a-z0-9+.-]{0,20}")
_ENCODE_HINT = (
    "percent-encode special characters in the user and password "
    "(/ as %2F, # as %23, @ as %40, : as %3A)"
)


def url_problem(value: str) -> str | None:
    """Return what is wrong with a Redis URL setting, or None when it parses.

    A ``sentinel://`` value may list several Sentinels separated by ``;``.
    """
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme not in REDIS_SCHEMES:
        problem = (
            f"its scheme {scheme}:// is not supported"
            if _SCHEME.fullmatch(scheme)
            else "it has no URL scheme"
        )
        return (
            f"{problem}; use redis://host:port/db, rediss://host:port/db or "
            "sentinel://host:port (Unix sockets and other brokers are not supported)"
        )
    parts = value.split(";") if scheme == "sentinel" else [value]
    for number, part in enumerate(parts, start=1):
        where = f"part {number} of the URL" if len(parts) > 1 else "the URL"
        try:
            split = urlsplit(part.strip())
            split.port  # noqa: B018 (parsing the port raises ValueError)
        except ValueError:
            return f"{where} has an invalid port or address; {_ENCODE_HINT}"
        if not split.hostname:
            return f"{where} names no host; {_ENCODE_HINT}"
        if split.fragment:
            return f"{where} contains '#'; {_ENCODE_HINT}"
    return None


def masked_url(value: str) -> str:
    """Return ``value`` with each user and password replaced by ``***``."""
    parts = []
    for part in value.split(";"):
        try:
            split = urlsplit(part)
            host = split.hostname
            port = split.port
        except ValueError:
            return "(a URL that does not parse)"
        if split.username is None and split.password is None:
            parts.append(part)
            continue
        netloc = f"***@{host or ''}" + (f":{port}" if port is not None else "")
        parts.append(split._replace(netloc=netloc).geturl())
    return ";".join(parts)
