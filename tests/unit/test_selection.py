"""select_connector on the four priority levels."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.tenant_files import connector
from worker.errors import NoEndpoint
from worker.selection import is_allowed_for, select_connector
from worker.tenants import TenantSettings

GROUPS = {"nordic": ["SE", "NO", "DK"], "dach": ["DE", "AT", "CH"]}


def _settings(*connectors: dict[str, Any]) -> TenantSettings:
    return TenantSettings.model_validate(
        {"MarketGroups": GROUPS, "Connectors": list(connectors)}
    )


def _chosen(
    settings: TenantSettings | None,
    market: str | None,
    name: str = "erp",
    connector_id: str | None = None,
) -> str:
    found = select_connector(settings, "acme", name, connector_id, market)
    return found.label


# One connector on each of levels 2 to 4, plus one reached only by ConnectorId.
LAYERED = _settings(
    connector(ConnectorId="by-market", EnabledForMarkets=["SE", "FI"]),
    connector(ConnectorId="by-group", EnabledForMarketGroups=["nordic", "dach"]),
    connector(ConnectorId="fallback", DisabledForMarkets=["AT"]),
    connector(ConnectorId="special", EnabledForMarkets=["XX"]),
    connector(Name="crm", ConnectorId="crm-1"),
)


@pytest.mark.parametrize(
    ("market", "expected"),
    [
        ("SE", "by-market"),
        ("FI", "by-market"),
        ("NO", "by-group"),
        ("DE", "by-group"),
        ("AT", "by-group"),
        ("US", "fallback"),
        (None, "fallback"),
        # Comparisons are case-sensitive, so "se" matches no list.
        ("se", "fallback"),
        ("no", "fallback"),
    ],
)
def test_select_by_level(market: str | None, expected: str) -> None:
    assert _chosen(LAYERED, market) == expected


@pytest.mark.parametrize(
    ("connector_id", "market"),
    [
        ("by-market", "SE"),
        ("by-group", "DK"),
        ("fallback", "SE"),
        ("fallback", None),
        ("special", "XX"),
    ],
)
def test_select_connector_id_wins(connector_id: str, market: str | None) -> None:
    assert _chosen(LAYERED, market, connector_id=connector_id) == connector_id


def test_select_level_one_beats_two() -> None:
    assert _chosen(LAYERED, "SE", connector_id="by-group") == "by-group"


@pytest.mark.parametrize(
    ("connector_id", "market", "reason"),
    [
        ("missing", "SE", "connector 'missing' not found for tenant 'acme'"),
        ("BY-MARKET", "SE", "not found"),
        ("by-market", "NO", "is not enabled for market 'NO'"),
        ("by-market", None, "is not enabled for market None"),
        ("fallback", "AT", "is not enabled for market 'AT'"),
        ("crm-1", "SE", "has Name 'crm', but the step asks for a 'erp' connector"),
    ],
)
def test_select_connector_id_no_fallback(
    connector_id: str, market: str | None, reason: str
) -> None:
    with pytest.raises(NoEndpoint, match=reason):
        _chosen(LAYERED, market, connector_id=connector_id)


def test_select_unknown_id_lists_known() -> None:
    with pytest.raises(NoEndpoint) as caught:
        _chosen(LAYERED, "SE", connector_id="missing")
    assert "by-group, by-market, crm-1, fallback, special" in str(caught.value)


@pytest.mark.parametrize(
    ("connectors", "market", "expected"),
    [
        (
            [
                connector(
                    ConnectorId="se",
                    EnabledForMarkets=["SE"],
                    DisabledForMarkets=["SE"],
                ),
                connector(ConnectorId="nordic", EnabledForMarketGroups=["nordic"]),
            ],
            "SE",
            "nordic",
        ),
        (
            [
                connector(ConnectorId="nordic", EnabledForMarketGroups=["nordic"]),
                connector(ConnectorId="all"),
            ],
            "SE",
            "nordic",
        ),
        (
            [
                connector(
                    ConnectorId="nordic",
                    EnabledForMarketGroups=["nordic"],
                    DisabledForMarkets=["NO"],
                ),
                connector(ConnectorId="all"),
            ],
            "NO",
            "all",
        ),
        (
            [
                connector(ConnectorId="se", EnabledForMarkets=["SE"]),
                connector(ConnectorId="all", DisabledForMarketGroups=["dach"]),
            ],
            "DK",
            "all",
        ),
    ],
    ids=["market disabled", "group", "group disabled", "other group disabled"],
)
def test_select_disabled_skipped(
    connectors: list[dict[str, Any]], market: str, expected: str
) -> None:
    assert _chosen(_settings(*connectors), market) == expected


@pytest.mark.parametrize(
    ("fields", "market"),
    [
        ({"DisabledForMarkets": ["SE"]}, "SE"),
        ({"DisabledForMarketGroups": ["nordic"]}, "NO"),
        ({"EnabledForMarkets": ["SE"], "DisabledForMarkets": ["SE"]}, "SE"),
        (
            {
                "EnabledForMarketGroups": ["nordic"],
                "DisabledForMarketGroups": ["nordic"],
            },
            "DK",
        ),
    ],
)
def test_select_disabled_never_chosen(fields: dict[str, Any], market: str) -> None:
    settings = _settings(connector(**fields))
    with pytest.raises(NoEndpoint, match=f"is enabled for market '{market}'"):
        _chosen(settings, market)


@pytest.mark.parametrize("market", ["FI", "se", None])
def test_select_enabled_lists_only(market: str | None) -> None:
    settings = _settings(
        connector(ConnectorId="se", EnabledForMarkets=["SE"]),
        connector(ConnectorId="dach", EnabledForMarketGroups=["dach"]),
    )
    with pytest.raises(NoEndpoint, match="is enabled for market"):
        _chosen(settings, market)


@pytest.mark.parametrize("name", ["ERP", "Erp", "pim"])
def test_select_name_case_sensitive(name: str) -> None:
    with pytest.raises(NoEndpoint, match=f"no connector named '{name}'"):
        _chosen(LAYERED, "SE", name=name)


def test_select_unknown_name_lists_known() -> None:
    with pytest.raises(NoEndpoint, match="known names: crm, erp"):
        _chosen(LAYERED, "SE", name="pim")


def test_select_other_name_ignored() -> None:
    settings = _settings(
        connector(Name="crm", EnabledForMarkets=["SE"]),
        connector(),
    )
    found = select_connector(settings, "acme", "erp", None, "SE")
    assert found.name == "erp"


def test_select_group_case_sensitive() -> None:
    settings = TenantSettings.model_validate(
        {
            "MarketGroups": {"nordic": ["se"]},
            "Connectors": [connector(EnabledForMarketGroups=["nordic"])],
        }
    )
    with pytest.raises(NoEndpoint):
        _chosen(settings, "SE")


def test_select_no_tenant_file() -> None:
    with pytest.raises(NoEndpoint, match="has no settings file"):
        _chosen(None, "SE")


def test_select_no_tenant_file_with_id() -> None:
    with pytest.raises(NoEndpoint, match="has no settings file"):
        _chosen(None, "SE", connector_id="by-market")


def test_select_empty_connectors() -> None:
    with pytest.raises(NoEndpoint, match="known names: none"):
        _chosen(_settings(), "SE")


@pytest.mark.parametrize(
    ("fields", "market", "expected"),
    [
        ({}, None, True),
        ({}, "SE", True),
        ({"EnabledForMarkets": ["SE"]}, None, False),
        ({"EnabledForMarkets": ["SE"]}, "SE", True),
        ({"EnabledForMarketGroups": ["nordic"]}, "DK", True),
        ({"EnabledForMarketGroups": ["nordic"]}, "DE", False),
        ({"DisabledForMarkets": ["SE"]}, "SE", False),
        ({"DisabledForMarkets": ["SE"]}, None, True),
        ({"DisabledForMarketGroups": ["dach"]}, "AT", False),
    ],
)
def test_allowed_for(
    fields: dict[str, Any], market: str | None, expected: bool
) -> None:
    settings = _settings(connector(**fields))
    assert is_allowed_for(settings, settings.connectors[0], market) is expected
