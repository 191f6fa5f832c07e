"""Secret references in tenant settings, and the set of values logs must never show.

A string setting may contain ``${NAME}``, read from the environment variable
NAME, or ``${file:/path}``, read from a mounted secret file (trailing newline
removed). Every value read this way is registered so the log redaction can
replace it wherever it appears.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path

from worker.errors import ConfigError

_REFERENCE = re.compile(r"\$\{([^}]*)\}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Shorter values would redact ordinary words in log lines.
MIN_REDACTED_LENGTH = 4

# Short-lived secrets such as OAuth access tokens: only the newest this many are
# kept, so a rotating token does not grow the set that each log line is checked
# against. A token that old has expired long ago.
MAX_TEMPORARY_SECRETS = 1024

_lock = threading.Lock()
_known_secrets: frozenset[str] = frozenset()
_permanent_secrets: frozenset[str] = frozenset()
# Insertion-ordered, oldest first.
_temporary_secrets: dict[str, None] = {}


def has_reference(text: str) -> bool:
    return _REFERENCE.search(text) is not None


def expand_references(text: str, where: str, environ: Mapping[str, str]) -> str:
    """Replace each ``${...}`` in ``text``; ``where`` names the setting in errors."""

    def replace(match: re.Match[str]) -> str:
        reference = match[1]
        if reference.startswith("file:"):
            path = Path(reference.removeprefix("file:"))
            try:
                return path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as error:
                raise ConfigError(
                    f"{where}: cannot read secret file {str(path)!r} "
                    f"({error.strerror}); mount the file or fix the path"
                ) from error
        if not _ENV_NAME.fullmatch(reference):
            raise ConfigError(
                f"{where}: ${{{reference}}} is not a valid reference; "
                "write ${ENV_VAR_NAME} or ${file:/path/to/secret}"
            )
        if reference not in environ:
            raise ConfigError(
                f"{where}: environment variable {reference} is not set; "
                f"set {reference} for the worker or remove the reference"
            )
        return environ[reference]

    return _REFERENCE.sub(replace, text)


def register_secrets(values: Iterable[str]) -> None:
    """Add values that log lines must never show."""
    global _known_secrets, _permanent_secrets
    fresh = {value for value in values if len(value) >= MIN_REDACTED_LENGTH}
    if not fresh - _permanent_secrets:
        return
    with _lock:
        _permanent_secrets = _permanent_secrets | fresh
        _known_secrets = _permanent_secrets | frozenset(_temporary_secrets)


def register_temporary_secret(value: str) -> None:
    """Add a short-lived value, such as an access token, that logs must never show.

    Only the newest ``MAX_TEMPORARY_SECRETS`` such values are kept.
    """
    global _known_secrets
    if len(value) < MIN_REDACTED_LENGTH or value in _known_secrets:
        return
    with _lock:
        _temporary_secrets[value] = None
        while len(_temporary_secrets) > MAX_TEMPORARY_SECRETS:
            del _temporary_secrets[next(iter(_temporary_secrets))]
        _known_secrets = _permanent_secrets | frozenset(_temporary_secrets)


def known_secrets() -> frozenset[str]:
    return _known_secrets


def environ() -> Mapping[str, str]:
    return os.environ
