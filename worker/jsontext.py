"""JSON that keeps every number's source text.

Orders carry prices such as ``99.90``. The standard ``json`` module would read
that as the float ``99.9`` and write it back as ``99.9``, so a receiver that
compares texts or hashes the order sees a change that nobody made. ``loads``
wraps each non-integer number in :class:`JsonNumber`, a ``float`` that also
stores its source text, and ``dumps`` writes that text back unchanged.
Integers stay plain ``int`` because Python keeps all their digits.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import date, datetime, time
from decimal import Decimal
from typing import Any
from uuid import UUID

from kombu import serialization

CONTENT_TYPE = "application/json"

# CPython refuses to convert integers longer than this many digits (3.11+).
_MAX_INT_DIGITS = 4000

_encode_string = json.encoder.encode_basestring_ascii


class JsonNumber(float):
    """A float read from JSON, with the exact text it was written as."""

    text: str

    def __new__(cls, text: str) -> JsonNumber:
        try:
            value = float(text)
        except OverflowError:
            value = math.copysign(math.inf, -1.0 if text.startswith("-") else 1.0)
        number = super().__new__(cls, value)
        number.text = text
        return number

    def __repr__(self) -> str:
        return self.text

    def __reduce__(self) -> tuple[type[JsonNumber], tuple[str]]:
        return (JsonNumber, (self.text,))


def _parse_int(text: str) -> int | JsonNumber:
    # "-0" and integers too long for int() keep their text as a JsonNumber.
    if text == "-0" or len(text) > _MAX_INT_DIGITS:
        return JsonNumber(text)
    return int(text)


def loads(data: str | bytes | bytearray) -> Any:
    """Parse JSON text, keeping each number's source text."""
    if isinstance(data, bytes | bytearray):
        data = data.decode("utf-8")
    return json.loads(
        data,
        parse_float=JsonNumber,
        parse_int=_parse_int,
        parse_constant=_reject_constant,
    )


def _reject_constant(name: str) -> Any:
    # Python's json reads NaN and Infinity, which JSON does not allow.
    raise ValueError(f"{name} is not valid JSON; send numbers as digits")


def _encode_other(value: Any) -> str:
    if isinstance(value, datetime | date | time):
        return _encode_string(value.isoformat())
    if isinstance(value, UUID):
        return _encode_string(str(value))
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(
        f"cannot write a value of type {type(value).__name__} as JSON; "
        "convert it to a str, number, bool, None, list or dict first"
    )


def _encode(value: Any, sort_keys: bool, parts: list[str]) -> None:
    if isinstance(value, str):
        parts.append(_encode_string(value))
    elif value is None:
        parts.append("null")
    elif value is True:
        parts.append("true")
    elif value is False:
        parts.append("false")
    elif isinstance(value, JsonNumber):
        parts.append(value.text)
    elif isinstance(value, int):
        parts.append(int.__repr__(value))
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write the float {value!r} as JSON")
        parts.append(float.__repr__(value))
    elif isinstance(value, dict):
        items = sorted(value.items()) if sort_keys else value.items()
        parts.append("{")
        first = True
        for key, item in items:
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be str, not {key!r}")
            if not first:
                parts.append(",")
            first = False
            parts.append(_encode_string(key))
            parts.append(":")
            _encode(item, sort_keys, parts)
        parts.append("}")
    elif isinstance(value, list | tuple):
        parts.append("[")
        for index, item in enumerate(value):
            if index:
                parts.append(",")
            _encode(item, sort_keys, parts)
        parts.append("]")
    else:
        parts.append(_encode_other(value))


def dumps(value: Any, *, sort_keys: bool = False) -> str:
    """Write compact ASCII JSON, with each JsonNumber as its source text."""
    parts: list[str] = []
    _encode(value, sort_keys, parts)
    return "".join(parts)


def register_kombu_codec() -> None:
    """Replace kombu's ``json`` serializer with this module's codec.

    kombu's own codec loses number digits and rewrites objects shaped like
    ``{"__type__": ..., "__value__": ...}`` before task code runs. Registering
    under the same name and content type makes Celery use this codec both for
    the messages the worker reads and the ones it publishes.
    """
    encoder: Callable[[Any], str] = dumps
    serialization.register(  # type: ignore[no-untyped-call]
        "json",
        encoder,
        loads,
        content_type=CONTENT_TYPE,
        content_encoding="utf-8",
    )


def to_plain(value: Any) -> Any:
    """Return a copy in which every JsonNumber is a plain int or float."""
    if isinstance(value, JsonNumber):
        as_float = float(value)
        if (
            as_float.is_integer()
            and "." not in value.text
            and "e" not in value.text.lower()
        ):
            return int(as_float)
        return as_float
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [to_plain(item) for item in value]
    return value
