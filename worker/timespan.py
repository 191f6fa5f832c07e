"""Parse .NET ``TimeSpan`` strings, as the order system writes timeouts.

The invariant form is ``[-][d.]hh:mm[:ss[.fffffff]]``: hours 0-23, minutes and
seconds 0-59, one to seven fraction digits, days 0-10675199. Like .NET, a
three-part value whose first part is over 23 (``"24:00:00"``) and a four-part
value (``"1:02:03:04"``) read the first part as days, and a bare integer is a
number of days.
"""

from __future__ import annotations

import re
from datetime import timedelta

from worker.errors import ConfigError

MAX_DAYS = 10_675_199

_PATTERN = re.compile(
    r"""
    (?P<sign>-)?
    (?:(?P<days>[0-9]+)\.)?
    (?P<parts>[0-9]+(?::[0-9]+){1,3})
    (?:\.(?P<fraction>[0-9]+))?
    """,
    re.VERBOSE,
)


class TimeSpanError(ConfigError):
    """A TimeSpan string is malformed or out of range."""


def _fail(text: str, reason: str) -> TimeSpanError:
    return TimeSpanError(
        f"invalid TimeSpan {text!r}: {reason}; "
        'write it as [-][d.]hh:mm[:ss[.fffffff]], for example "00:00:30"'
    )


def _split_parts(text: str, days_prefix: str | None, parts: list[int]) -> list[int]:
    """Return [days, hours, minutes, seconds] from the colon-separated parts."""
    if len(parts) == 4:
        if days_prefix is not None:
            raise _fail(text, "days are given twice")
        return parts
    if len(parts) == 3 and days_prefix is None and parts[0] > 23:
        return [parts[0], parts[1], parts[2], 0]
    days = int(days_prefix) if days_prefix is not None else 0
    hours, minutes = parts[0], parts[1]
    seconds = parts[2] if len(parts) == 3 else 0
    return [days, hours, minutes, seconds]


def parse_timespan(text: str, *, allow_days_only: bool = True) -> timedelta:
    """Parse a .NET TimeSpan string.

    Raises:
        TimeSpanError: the text is malformed, a component is out of range, or
            it is a bare number of days while ``allow_days_only`` is false.
    """
    stripped = text.strip()
    if re.fullmatch(r"-?[0-9]+", stripped):
        if not allow_days_only:
            raise _fail(
                text,
                "a bare number means days in .NET; write hh:mm:ss, "
                "or give the milliseconds as a JSON number",
            )
        days = int(stripped)
        if abs(days) > MAX_DAYS:
            raise _fail(text, f"days must be at most {MAX_DAYS}")
        return timedelta(days=days)

    match = _PATTERN.fullmatch(stripped)
    if match is None:
        raise _fail(text, "malformed")

    fraction = match["fraction"]
    if fraction is not None and len(fraction) > 7:
        raise _fail(text, "at most seven fraction digits are allowed")
    if fraction is not None and match["parts"].count(":") == 1:
        raise _fail(text, "a fraction needs seconds (hh:mm:ss.fffffff)")

    raw_parts = [int(part) for part in match["parts"].split(":")]
    days, hours, minutes, seconds = _split_parts(text, match["days"], raw_parts)
    if days > MAX_DAYS:
        raise _fail(text, f"days must be at most {MAX_DAYS}")
    if hours > 23:
        raise _fail(text, "hours must be 0-23")
    if minutes > 59:
        raise _fail(text, "minutes must be 0-59")
    if seconds > 59:
        raise _fail(text, "seconds must be 0-59")

    ticks = int((fraction or "0").ljust(7, "0"))  # one tick is 100 ns
    value = timedelta(
        days=days,
        hours=hours,
        minutes=minutes,
        seconds=seconds,
        # timedelta counts whole microseconds: round a partial one up, so that
        # a positive value stays positive and a limit check sees the excess.
        microseconds=-(-ticks // 10),
    )
    return -value if match["sign"] else value
