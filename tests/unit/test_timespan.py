"""parse_timespan and the connector TimeOut field."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.unit.tenant_files import connector, write_tenant
from worker.errors import ConfigError
from worker.tenants import DEFAULT_TIMEOUT, parse_tenant_file
from worker.timespan import TimeSpanError, parse_timespan


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("00:00:30", timedelta(seconds=30)),
        ("00:02:00", timedelta(minutes=2)),
        ("01:02", timedelta(hours=1, minutes=2)),
        ("1.00:00:00", timedelta(days=1)),
        ("1.02:03", timedelta(days=1, hours=2, minutes=3)),
        ("2.03:04:05", timedelta(days=2, hours=3, minutes=4, seconds=5)),
        ("00:00:00.5000000", timedelta(milliseconds=500)),
        ("00:00:00.5", timedelta(milliseconds=500)),
        ("00:00:01.0000010", timedelta(seconds=1, microseconds=1)),
        ("1.00:00:00.25", timedelta(days=1, milliseconds=250)),
        # .NET reads a first part over 23 as days.
        ("24:00:00", timedelta(days=24)),
        ("30:01:02", timedelta(days=30, hours=1, minutes=2)),
        # d:hh:mm:ss
        ("1:02:03:04", timedelta(days=1, hours=2, minutes=3, seconds=4)),
        ("3:00:00:00.5", timedelta(days=3, milliseconds=500)),
        ("-00:00:01", timedelta(seconds=-1)),
        ("-1.00:00:00", timedelta(days=-1)),
        ("00:00:00", timedelta(0)),
        ("23:59:59", timedelta(hours=23, minutes=59, seconds=59)),
        ("  00:00:30 ", timedelta(seconds=30)),
        ("10675199.00:00:00", timedelta(days=10_675_199)),
        # A bare integer is a number of days.
        ("7", timedelta(days=7)),
        ("-7", timedelta(days=-7)),
    ],
)
def test_timespan_valid(text: str, expected: timedelta) -> None:
    assert parse_timespan(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "malformed"),
        ("   ", "malformed"),
        ("abc", "malformed"),
        ("00:00:30s", "malformed"),
        ("00-00-30", "malformed"),
        ("1:2:3:4:5", "malformed"),
        ("00:00:", "malformed"),
        (":00:30", "malformed"),
        ("00:00:30.", "malformed"),
        ("+00:00:30", "malformed"),
        ("--00:00:01", "malformed"),
        ("00:-1:00", "malformed"),
        ("1.1:00:00:00", "days are given twice"),
        ("00:60:00", "minutes must be 0-59"),
        ("00:00:60", "seconds must be 0-59"),
        ("1.24:00:00", "hours must be 0-23"),
        ("24:00", "hours must be 0-23"),
        ("1:24:00:00", "hours must be 0-23"),
        ("1:00:60:00", "minutes must be 0-59"),
        ("00:00:00.12345678", "at most seven fraction digits"),
        ("00:30.5", "a fraction needs seconds"),
        ("10675200.00:00:00", "days must be at most"),
        ("10675200", "days must be at most"),
    ],
)
def test_timespan_invalid(text: str, reason: str) -> None:
    with pytest.raises(TimeSpanError) as caught:
        parse_timespan(text)
    assert reason in str(caught.value)


def test_timespan_error_shows_input() -> None:
    with pytest.raises(TimeSpanError) as caught:
        parse_timespan("00:99:00")
    assert "'00:99:00'" in str(caught.value)


def test_timespan_error_is_config_error() -> None:
    assert issubclass(TimeSpanError, ConfigError)


@pytest.mark.parametrize("text", ["30", "0", "-5"])
def test_timespan_days_only_rejected(text: str) -> None:
    with pytest.raises(TimeSpanError, match="bare number means days"):
        parse_timespan(text, allow_days_only=False)


def test_timespan_days_only_false_keeps_forms() -> None:
    assert parse_timespan("00:00:30", allow_days_only=False) == timedelta(seconds=30)


@pytest.mark.parametrize("text", ["00:00:\u0663\u0660", "\u0661\u0662"])
def test_timespan_non_ascii_digits(text: str) -> None:
    with pytest.raises(TimeSpanError):
        parse_timespan(text)


_ABSENT = object()


def _timeout_of(directory: Path, value: Any) -> timedelta:
    fields = {} if value is _ABSENT else {"TimeOut": value}
    path = write_tenant(directory, {"Connectors": [connector(**fields)]})
    return parse_tenant_file(path, "acme", env={}).settings.connectors[0].timeout


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (_ABSENT, DEFAULT_TIMEOUT),
        (None, DEFAULT_TIMEOUT),
        ("00:00:00", DEFAULT_TIMEOUT),
        ("0:00", DEFAULT_TIMEOUT),
        (0, DEFAULT_TIMEOUT),
        ("00:00:10", timedelta(seconds=10)),
        ("00:00:00.5", timedelta(milliseconds=500)),
        ("00:02:00", timedelta(seconds=120)),
        (1500, timedelta(milliseconds=1500)),
        (2.5, timedelta(microseconds=2500)),
        (120_000, timedelta(seconds=120)),
        (1, timedelta(milliseconds=1)),
    ],
)
def test_timeout_valid(tmp_path: Path, value: Any, expected: timedelta) -> None:
    assert _timeout_of(tmp_path, value) == expected


def test_timeout_default_is_30s() -> None:
    assert timedelta(seconds=30) == DEFAULT_TIMEOUT


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("30", "bare number means days"),
        ("120", "bare number means days"),
        ("-30", "bare number means days"),
        (-1, "negative"),
        (-0.5, "negative"),
        ("-00:00:01", "negative"),
        (120_001, "maximum of 120 seconds"),
        ("00:02:01", "maximum of 120 seconds"),
        ("1.00:00:00", "maximum of 120 seconds"),
        ("24:00:00", "maximum of 120 seconds"),
        ("00:00:61", "seconds must be 0-59"),
        ("00:61:00", "minutes must be 0-59"),
        ("thirty", "malformed"),
        ("", "malformed"),
        (True, "TimeSpan string"),
        ([30], "TimeSpan string"),
        ({"Seconds": 30}, "TimeSpan string"),
    ],
)
def test_timeout_invalid(tmp_path: Path, value: Any, reason: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _timeout_of(tmp_path, value)
    message = str(caught.value)
    assert reason in message
    assert str(tmp_path / "acme.json") in message
    assert "connector 'erp'" in message
    assert "field TimeOut" in message


def test_timeout_error_names_connector_id(tmp_path: Path) -> None:
    path = write_tenant(
        tmp_path, {"Connectors": [connector(ConnectorId="erp-se", TimeOut="30")]}
    )
    with pytest.raises(ConfigError, match="connector 'erp-se' field TimeOut"):
        parse_tenant_file(path, "acme", env={})


@pytest.mark.parametrize("value", ["1e400", "1e30", "1000000000000000000000000000000"])
def test_timeout_huge_number(tmp_path: Path, value: str) -> None:
    text = '{"Connectors": [{"Name": "erp", "Host": "https://h.test", "TimeOut": %s}]}'
    path = write_tenant(tmp_path, text % value)
    with pytest.raises(ConfigError, match="field TimeOut"):
        parse_tenant_file(path, "acme", env={})


def test_timeout_one_tick_over_maximum(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="field TimeOut"):
        _timeout_of(tmp_path, "00:02:00.0000001")


def test_timeout_one_tick_stays_positive(tmp_path: Path) -> None:
    # timedelta has no 100 ns ticks, so one tick rounds up to one microsecond.
    assert _timeout_of(tmp_path, "00:00:00.0000001") == timedelta(microseconds=1)
