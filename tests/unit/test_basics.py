"""worker.headers, worker.casing and worker.secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from worker import secrets
from worker.casing import camel_case, canonical_keys, find_key, get_any_case
from worker.errors import ConfigError
from worker.headers import header_problem, is_sensitive_header


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Api-Key", "abc"),
        ("Accept", "application/json"),
        ("X-Tab", "a\tb"),
        ("X-Empty", ""),
        ("X-Unicode", "\u00e5"),
        ("x!#$%&'*+.^_`|~1", "v"),
    ],
)
def test_header_valid(name: str, value: str) -> None:
    assert header_problem(name, value) is None


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        ("", "x", "not a valid HTTP token"),
        ("X A", "x", "not a valid HTTP token"),
        ("X:A", "x", "not a valid HTTP token"),
        ("X-\u00e5", "x", "not a valid HTTP token"),
        ("X-A\n", "x", "not a valid HTTP token"),
        ("Content-Type", "x", "set by the worker"),
        ("content-length", "1", "set by the worker"),
        ("HOST", "h", "set by the worker"),
        ("Idempotency-Key", "k", "set by the worker"),
        ("Transfer-Encoding", "chunked", "set by the worker"),
        ("X-A", "a\nb", "control character"),
        ("X-A", "a\rb", "control character"),
        ("X-A", "a\x00", "control character"),
        ("X-A", "\x7f", "control character"),
        ("X-A", "\x1f", "control character"),
    ],
)
def test_header_invalid(name: str, value: str, reason: str) -> None:
    problem = header_problem(name, value)
    assert problem is not None
    assert reason in problem


def test_header_problem_hides_value() -> None:
    problem = header_problem("X-A", "hv-9f2e7\n")
    assert problem is not None
    assert "hv-9f2e7" not in problem


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("Authorization", True),
        ("X-Auth-Token", True),
        ("X-API-Key", True),
        ("x-apikey", True),
        ("X-Api_Key", True),
        ("Cookie", True),
        ("X-Client-Secret", True),
        ("X-Signature", True),
        ("X-Password", True),
        ("X-Credential-Id", True),
        ("Accept", False),
        ("X-Shop", False),
    ],
)
def test_sensitive_header(name: str, expected: bool) -> None:
    assert is_sensitive_header(name) is expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [("OrderType", "orderType"), ("Id", "id"), ("id", "id"), ("", ""), ("X", "x")],
)
def test_camel_case(name: str, expected: str) -> None:
    assert camel_case(name) == expected


@pytest.mark.parametrize(
    ("mapping", "name", "expected"),
    [
        ({"Status": 1}, "Status", "Status"),
        ({"status": 1}, "Status", "status"),
        ({"STATUS": 1}, "status", "STATUS"),
        ({"status": 1, "Status": 2}, "Status", "Status"),
        ({"status": 1, "Status": 2}, "status", "status"),
        ({"sTATUS": 1, "STATUS": 2, "status": 3}, "STATUS", "STATUS"),
        ({"sTATUS": 1, "Status": 2}, "stAtus", "Status"),
        ({"sTATUS": 1, "status": 2}, "stAtus", "sTATUS"),
        ({"Other": 1}, "Status", None),
        ({}, "Status", None),
    ],
)
def test_find_key(mapping: dict[str, Any], name: str, expected: str | None) -> None:
    assert find_key(mapping, name) == expected


def test_get_any_case_value() -> None:
    assert get_any_case({"orderType": "A"}, "OrderType") == "A"


def test_get_any_case_default() -> None:
    assert get_any_case({}, "OrderType", "none") == "none"


def test_get_any_case_none_default() -> None:
    assert get_any_case({}, "OrderType") is None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"name": 1, "host": 2}, {"Name": 1, "Host": 2}),
        ({"NAME": 1}, {"Name": 1}),
        ({"name": 1, "Name": 2}, {"Name": 2}),
        ({"Name": 2, "name": 1}, {"Name": 2}),
        ({"nAme": 1, "name": 2}, {"Name": 1}),
        ({"extra": 1}, {"extra": 1}),
    ],
)
def test_canonical_keys(data: dict[str, Any], expected: dict[str, Any]) -> None:
    assert canonical_keys(data, ["Name", "Host"]) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${A}", True),
        ("x ${file:/p} y", True),
        ("$A", False),
        ("{A}", False),
        ("", False),
    ],
)
def test_has_reference(text: str, expected: bool) -> None:
    assert secrets.has_reference(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("${TOKEN}", "t-1"),
        ("Bearer ${TOKEN}", "Bearer t-1"),
        ("${TOKEN}:${USER}", "t-1:svc"),
        ("${EMPTY}", ""),
        ("plain", "plain"),
    ],
)
def test_expand_env(text: str, expected: str) -> None:
    environ = {"TOKEN": "t-1", "USER": "svc", "EMPTY": ""}
    assert secrets.expand_references(text, "where", environ) == expected


def test_expand_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("from-file\r\n", encoding="utf-8")
    text = "${file:" + str(secret_file) + "}"
    assert secrets.expand_references(text, "where", {}) == "from-file"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("${MISSING}", "environment variable MISSING is not set"),
        ("${1BAD}", "is not a valid reference"),
        ("${}", "is not a valid reference"),
        ("${A-B}", "is not a valid reference"),
        ("${file:/nonexistent/secret-9f2e7}", "cannot read secret file"),
    ],
)
def test_expand_invalid(text: str, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        secrets.expand_references(text, "settings.x", {})
    assert reason in str(caught.value)
    assert str(caught.value).startswith("settings.x: ")


def test_register_secrets() -> None:
    secrets.register_secrets(["long-secret-9f2e7", "abc"])
    known = secrets.known_secrets()
    assert "long-secret-9f2e7" in known
    assert "abc" not in known
