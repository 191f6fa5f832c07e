"""Reading the result stream: the ``results`` command and the demo share this."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import redis


@dataclass(frozen=True)
class StreamEntry:
    """One result stream entry: its id and the result JSON text."""

    entry_id: bytes
    result_text: bytes


def newest_entry_id(client: redis.Redis, stream: str) -> bytes | str:
    """Return the id of the stream's newest entry, or ``"0-0"`` when it is empty."""
    newest = cast(list[Any], client.xrevrange(stream, count=1))
    return cast(bytes, newest[0][0]) if newest else "0-0"


def read_entries(
    client: redis.Redis, stream: str, after: bytes | str, block_ms: int
) -> list[StreamEntry]:
    """Return the entries after id ``after``, waiting up to ``block_ms`` for one."""
    response = cast(
        list[Any] | None,
        client.xread({stream: after}, count=100, block=block_ms),
    )
    entries = []
    for _stream, messages in response or []:
        for entry_id, fields in messages:
            entries.append(StreamEntry(entry_id, fields.get(b"result", b"")))
    return entries
