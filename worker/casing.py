"""Case-insensitive property names: the order system writes PascalCase and camelCase."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def camel_case(name: str) -> str:
    """Return the camelCase spelling of a PascalCase name: ``orderType``."""
    return name[:1].lower() + name[1:]


def find_key(mapping: Mapping[str, Any], name: str) -> str | None:
    """Return the key of ``mapping`` that spells ``name`` in any casing.

    The exact spelling wins, then PascalCase, then the first other match.
    """
    if name in mapping:
        return name
    wanted = name.lower()
    matches = [key for key in mapping if isinstance(key, str) and key.lower() == wanted]
    if not matches:
        return None
    for key in matches:
        if key[:1].isupper():
            return key
    return matches[0]


def get_any_case(mapping: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """Return the value stored under ``name`` in any casing, else ``default``."""
    key = find_key(mapping, name)
    return default if key is None else mapping[key]


def canonical_keys(data: Mapping[str, Any], names: Iterable[str]) -> dict[str, Any]:
    """Return ``data`` with keys that match ``names`` in any casing renamed to them.

    Keys that match no name are kept as they are, so a model can reject or
    ignore them. When one name appears in several casings, the PascalCase
    spelling wins.
    """
    by_lower = {name.lower(): name for name in names}
    result: dict[str, Any] = {}
    chosen: dict[str, str] = {}
    for key, value in data.items():
        name = by_lower.get(key.lower()) if isinstance(key, str) else None
        if name is None:
            result[key] = value
            continue
        previous = chosen.get(name)
        if previous is not None and not (
            key[:1].isupper() and not previous[:1].isupper()
        ):
            continue
        chosen[name] = key
        result[name] = value
    return result
