"""Short tables of results for people: the demo and ``results --table``."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

COLUMNS = ("order", "connector", "status", "tries", "workflow", "changed", "reason")
# Column widths for rows printed one at a time, before all results are known.
STREAM_WIDTHS = (12, 22, 26, 5, 8, 30, 0)


def result_row(result: dict[str, Any]) -> tuple[str, ...]:
    """Return the table cells for one result."""
    status = str(result.get("ActionStatus"))
    if result.get("TriggerNewStatus"):
        status += f" -> {result['TriggerNewStatus']}"
    connector = result.get("ConnectorId") or result.get("ConnectorName") or "(inline)"
    if result.get("Attempts", 0) == 0:
        connector = result.get("ConnectorId") or "-"
    changed = ", ".join(result.get("ChangedProperties") or []) or "-"
    reason = result.get("ErrorReason") or ""
    return (
        str(result.get("OrderId") or "-"),
        str(connector),
        status,
        str(result.get("Attempts", 0)),
        "stop" if result.get("CancelWorkflow") else "continue",
        changed,
        reason[:70] + ("..." if len(reason) > 70 else ""),
    )


def render_table(results: Iterable[dict[str, Any]]) -> str:
    """Return the results as a table with a header, each column as wide as needed."""
    rows = [COLUMNS, *(result_row(result) for result in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for index, row in enumerate(rows):
        lines.append(
            "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip()
        )
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def format_row(cells: tuple[str, ...]) -> str:
    """Return one row padded to STREAM_WIDTHS, for output that streams."""
    padded = (
        cell.ljust(width) for cell, width in zip(cells, STREAM_WIDTHS, strict=True)
    )
    return "  ".join(padded).rstrip()


def parse_result(text: str | bytes) -> dict[str, Any]:
    """Parse a result's JSON text; numbers become floats, which is fine for display."""
    parsed: dict[str, Any] = json.loads(text)
    return parsed
