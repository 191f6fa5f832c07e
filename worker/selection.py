"""Choose the connector for a step, in the order system's priority order.

1. The step's ConnectorId picks that instance (no fall-back when it is unusable).
2. A connector of the step's Connector name enabled for the order's market.
3. One enabled for a market group that contains the market.
4. The connector of that name with no EnabledFor lists.

A connector whose disabled lists cover the market is never chosen. All
comparisons are case-sensitive.
"""

from __future__ import annotations

from collections.abc import Iterator

from worker.errors import NoEndpoint
from worker.tenants import ConnectorSettings, TenantSettings


def is_disabled_for(
    settings: TenantSettings, connector: ConnectorSettings, market: str | None
) -> bool:
    if market is None:
        return False
    if market in connector.disabled_for_markets:
        return True
    return bool(settings.groups_of(market) & set(connector.disabled_for_market_groups))


def is_allowed_for(
    settings: TenantSettings, connector: ConnectorSettings, market: str | None
) -> bool:
    """Return True when the connector may serve orders of ``market``."""
    if is_disabled_for(settings, connector, market):
        return False
    if not connector.has_enabled_lists():
        return True
    if market is None:
        return False
    if market in connector.enabled_for_markets:
        return True
    return bool(settings.groups_of(market) & set(connector.enabled_for_market_groups))


def candidates_by_level(
    settings: TenantSettings, name: str, market: str | None
) -> Iterator[tuple[int, list[ConnectorSettings]]]:
    """Yield (level, candidates) for levels 2 to 4, highest priority first."""
    usable = [
        connector
        for connector in settings.connectors
        if connector.name == name and not is_disabled_for(settings, connector, market)
    ]
    groups = settings.groups_of(market) if market is not None else set()
    yield (
        2,
        [c for c in usable if market is not None and market in c.enabled_for_markets],
    )
    yield (
        3,
        [
            c
            for c in usable
            if c.enabled_for_market_groups and groups & set(c.enabled_for_market_groups)
        ],
    )
    yield 4, [c for c in usable if not c.has_enabled_lists()]


def select_connector(
    settings: TenantSettings | None,
    tenant_id: str,
    name: str,
    connector_id: str | None,
    market: str | None,
) -> ConnectorSettings:
    """Return the connector that serves the step.

    Raises:
        NoEndpoint: no connector matches; the message names what was looked for.
    """
    connectors = settings.connectors if settings is not None else []
    if settings is None:
        raise NoEndpoint(
            f"tenant {tenant_id!r} has no settings file, so it has no connectors; "
            "add a Host property to the step or create the tenant's settings file"
        )

    if connector_id is not None:
        chosen = next((c for c in connectors if c.connector_id == connector_id), None)
        if chosen is None:
            known = ", ".join(
                sorted(c.connector_id for c in connectors if c.connector_id)
            )
            raise NoEndpoint(
                f"connector {connector_id!r} not found for tenant {tenant_id!r}; "
                f"known ids: {known or 'none'}"
            )
        if chosen.name != name:
            raise NoEndpoint(
                f"connector {connector_id!r} has Name {chosen.name!r}, but the step "
                f"asks for a {name!r} connector; fix the step's Connector or "
                "ConnectorId"
            )
        if not is_allowed_for(settings, chosen, market):
            raise NoEndpoint(
                f"connector {connector_id!r} is not enabled for market {market!r}"
            )
        return chosen

    for _level, candidates in candidates_by_level(settings, name, market):
        if candidates:
            # Ties are rejected when the settings load, so one candidate remains.
            return candidates[0]

    if not any(c.name == name for c in connectors):
        known_names = ", ".join(sorted({c.name for c in connectors}))
        raise NoEndpoint(
            f"no connector named {name!r} for tenant {tenant_id!r}; "
            f"known names: {known_names or 'none'}"
        )
    raise NoEndpoint(
        f"no {name!r} connector of tenant {tenant_id!r} is enabled for market "
        f"{market!r}"
    )
