"""Short tables of results for people: the demo and ``results --table``."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

COLUMNS = ("order", "connector", "status", "workflow", "changed", "reason")


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
        "stop" if result.get("CancelWorkflow") else "continue",
        changed,
        reason[:70] + ("..." if len(reason) > 70 else ""),
    )


def render_table(results: Iterable[dict[str, Any]]) -> str:
    rows = [COLUMNS, *(result_row(result) for result in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = []
    for index, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return "\n".join(lines)


def parse_result(text: str | bytes) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(text)
    return parsed
