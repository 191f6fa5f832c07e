"""jsontext: exact numbers and the kombu codec."""

from __future__ import annotations

import copy
import math
import pickle
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

import pytest
from kombu import serialization

from worker import jsontext
from worker.jsontext import JsonNumber


@pytest.mark.parametrize(
    "text",
    [
        "99.90",
        "0.1000",
        "1e400",
        "-1e400",
        "1E+2",
        "1.0",
        "-0.0",
        "-0",
        "0",
        "12345678901234567890123456789012345678901234567890",
        "-98765432109876543210",
        "3.141592653589793238462643383279",
        "1e-400",
        "5e-324",
    ],
)
def test_number_round_trip(text: str) -> None:
    assert jsontext.dumps(jsontext.loads(text)) == text


def test_number_in_document() -> None:
    text = '{"Price":99.90,"Lines":[{"Qty":1,"Amount":0.1000}],"Big":1e400}'
    assert jsontext.dumps(jsontext.loads(text)) == text


def test_huge_integer_round_trip() -> None:
    text = "9" * 5000
    assert jsontext.dumps(jsontext.loads(text)) == text


def test_number_types() -> None:
    parsed = jsontext.loads('{"a": 99.90, "b": 7, "c": 1e400}')
    assert isinstance(parsed["a"], JsonNumber)
    assert type(parsed["b"]) is int
    assert parsed["a"] == pytest.approx(99.9)
    assert math.isinf(parsed["c"])


def test_number_text_attribute() -> None:
    assert jsontext.loads("0.1000").text == "0.1000"


def test_number_deepcopy_keeps_text() -> None:
    number = jsontext.loads("99.90")
    assert copy.deepcopy(number).text == "99.90"


def test_number_pickle_keeps_text() -> None:
    number = jsontext.loads("99.90")
    assert pickle.loads(pickle.dumps(number)).text == "99.90"


def test_loads_bytes() -> None:
    assert jsontext.loads('{"n": "\u00e5", "p": 1.50}'.encode()) == {
        "n": "\u00e5",
        "p": 1.5,
    }


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ({"a": "\u00e5\n"}, '{"a":"\\u00e5\\n"}'),
        ([True, False, None], "[true,false,null]"),
        ((1, 2), "[1,2]"),
        (0.5, "0.5"),
        (Decimal("1.10"), "1.10"),
        (UUID(int=1), '"00000000-0000-0000-0000-000000000001"'),
        (date(2024, 5, 1), '"2024-05-01"'),
        (datetime(2024, 5, 1, 12, 0, tzinfo=UTC), '"2024-05-01T12:00:00+00:00"'),
    ],
)
def test_dumps_values(value: Any, expected: str) -> None:
    assert jsontext.dumps(value) == expected


def test_dumps_sort_keys() -> None:
    assert jsontext.dumps({"b": 1, "a": 2}, sort_keys=True) == '{"a":2,"b":1}'


def test_dumps_keeps_key_order() -> None:
    assert jsontext.dumps({"b": 1, "a": 2}) == '{"b":1,"a":2}'


@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_dumps_non_finite_float(value: float) -> None:
    with pytest.raises(ValueError, match="cannot write the float"):
        jsontext.dumps(value)


@pytest.mark.parametrize("value", [{1: "a"}, {"a": object()}, {"a": {1, 2}}])
def test_dumps_unsupported(value: Any) -> None:
    with pytest.raises(TypeError):
        jsontext.dumps(value)


@pytest.mark.parametrize(
    "text",
    [
        '{"__type__": "datetime", "__value__": "2024-05-01T00:00:00"}',
        '{"__type__": "bytes", "__value__": "AAE="}',
        '{"Order": {"__type__": "decimal", "__value__": "1.10"}}',
    ],
)
def test_type_objects_unchanged(text: str) -> None:
    parsed = jsontext.loads(text)
    assert jsontext.loads(jsontext.dumps(parsed)) == parsed
    assert isinstance(parsed, dict)


def test_type_object_stays_dict() -> None:
    parsed = jsontext.loads('{"__type__": "datetime", "__value__": "2024-05-01"}')
    assert parsed == {"__type__": "datetime", "__value__": "2024-05-01"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1.0", 1.0),
        ("1e2", 100.0),
        ("1.5", 1.5),
        ("-0", 0),
    ],
)
def test_to_plain_numbers(text: str, expected: float) -> None:
    plain = jsontext.to_plain(jsontext.loads(text))
    assert plain == expected
    assert not isinstance(plain, JsonNumber)


def test_to_plain_int_from_text() -> None:
    assert type(jsontext.to_plain(jsontext.loads("-0"))) is int


def test_to_plain_nested() -> None:
    plain = jsontext.to_plain(jsontext.loads('{"a": [1.50, {"b": 2.0}]}'))
    assert plain == {"a": [1.5, {"b": 2.0}]}
    assert not isinstance(plain["a"][0], JsonNumber)


def _kombu_round_trip(value: Any) -> Any:
    jsontext.register_kombu_codec()
    content_type, encoding, payload = serialization.dumps(value, serializer="json")
    return serialization.loads(payload, content_type, encoding)


def test_kombu_codec_registered() -> None:
    jsontext.register_kombu_codec()
    content_type, encoding, _ = serialization.dumps({"a": 1}, serializer="json")
    assert content_type == "application/json"
    assert encoding == "utf-8"


def test_kombu_payload_digits() -> None:
    jsontext.register_kombu_codec()
    order = jsontext.loads('{"Price": 99.90, "Big": 1e400}')
    _, _, payload = serialization.dumps(order, serializer="json")
    text = payload.decode() if isinstance(payload, bytes) else payload
    assert text == '{"Price":99.90,"Big":1e400}'


@pytest.mark.parametrize(
    "text",
    [
        '{"Price": 99.90, "Rate": 0.1000, "Huge": 1e400}',
        '{"Id": 123456789012345678901234567890}',
        '{"__type__": "datetime", "__value__": "2024-05-01T00:00:00"}',
        '{"Order": {"__type__": "uuid", "__value__": "x"}, "Tags": ["a"]}',
    ],
)
def test_kombu_round_trip(text: str) -> None:
    value = jsontext.loads(text)
    back = _kombu_round_trip(value)
    assert back == value
    assert jsontext.dumps(back) == jsontext.dumps(value)


def test_kombu_round_trip_bytes_payload() -> None:
    jsontext.register_kombu_codec()
    payload = b'{"Price": 99.90}'
    back = serialization.loads(payload, "application/json", "utf-8")
    assert jsontext.dumps(back) == '{"Price":99.90}'
