"""Step filters: the markets, stores and tags a step runs for.

A step may carry ``EnabledForMarkets``, ``DisabledForMarkets``,
``EnabledForStores``, ``DisabledForStores``, ``EnabledForTags`` and
``DisabledForTags``. An empty list does not filter. An order that a filter
excludes is not sent: the step succeeds with a message that says why, as the
order system does for a step that does not apply. Comparisons are
case-sensitive, like connector selection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from worker.casing import get_any_case


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _tags(order: Mapping[str, Any]) -> list[str]:
    tags = get_any_case(order, "Tags")
    if not isinstance(tags, list):
        return []
    return [tag for tag in tags if isinstance(tag, str)]


def _check(
    label: str,
    value: str | None,
    enabled: Sequence[str],
    disabled: Sequence[str],
) -> str | None:
    if enabled and value not in enabled:
        return (
            f"the step is enabled only for {label}s {', '.join(enabled)}, and the "
            f"order's {label} is {value if value is not None else 'not set'}"
        )
    if value is not None and value in disabled:
        return f"the step is disabled for {label} {value}"
    return None


def skip_reason(step: Any, order: Mapping[str, Any]) -> str | None:
    """Return why the step's filters exclude ``order``, or None when it runs."""
    market = _check(
        "market",
        _text(get_any_case(order, "MarketId")),
        step.enabled_for_markets,
        step.disabled_for_markets,
    )
    if market:
        return market
    store = _check(
        "store",
        _text(get_any_case(order, "StoreId")),
        step.enabled_for_stores,
        step.disabled_for_stores,
    )
    if store:
        return store
    tags = _tags(order)
    if step.enabled_for_tags and not set(step.enabled_for_tags) & set(tags):
        return (
            f"the step is enabled only for orders tagged "
            f"{', '.join(step.enabled_for_tags)}, and the order has none of them"
        )
    excluded = [tag for tag in tags if tag in step.disabled_for_tags]
    if excluded:
        return f"the step is disabled for orders tagged {', '.join(excluded)}"
    return None
