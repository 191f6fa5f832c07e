"""parse_tenant_file and TenantStore."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.unit.tenant_files import HOST, connector, write_tenant
from worker import secrets
from worker.errors import ConfigError
from worker.tenants import TenantStore, parse_tenant_file


def _parse(directory: Path, data: Any, env: dict[str, str] | None = None) -> Any:
    path = write_tenant(directory, data)
    return parse_tenant_file(path, "acme", env=env or {})


def _error(directory: Path, data: Any, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        _parse(directory, data, env)
    return str(caught.value)


def test_tenant_file_valid(tmp_path: Path) -> None:
    data = {
        "MarketGroups": {"nordic": ["SE", "NO"]},
        "Connectors": [
            connector(
                ConnectorId="erp-nordic",
                BearerToken="${ERP_TOKEN}",
                TimeOut="00:00:10",
                EnabledForMarketGroups=["nordic"],
                DisabledForMarkets=["NO"],
                KeepExistingListItems=False,
                CustomHeaders=[{"Key": "X-Shop", "Value": "main"}],
            ),
            connector(ConnectorId="erp-default"),
        ],
    }
    tenant = _parse(tmp_path, data, {"ERP_TOKEN": "token-value-1"})
    assert tenant.tenant_id == "acme"
    assert tenant.path == tmp_path / "acme.json"
    assert len(tenant.settings.connectors) == 2
    assert tenant.settings.market_groups == {"nordic": ["SE", "NO"]}
    assert "token-value-1" in tenant.secret_values

    first = tenant.settings.connectors[0]
    assert first.name == "erp"
    assert first.connector_id == "erp-nordic"
    assert first.host == HOST
    assert first.bearer_token == "token-value-1"
    assert first.timeout.total_seconds() == 10
    assert first.enabled_for_market_groups == ["nordic"]
    assert first.disabled_for_markets == ["NO"]
    assert first.keep_existing_list_items is False
    assert first.keep_existing_custom_properties is True

    header = first.custom_headers[0]
    assert header.key == "X-Shop"
    assert header.value == "main"


def test_tenant_file_empty_object(tmp_path: Path) -> None:
    assert _parse(tmp_path, {}).settings.connectors == []


@pytest.mark.parametrize(
    "data",
    [
        {
            "connectors": [
                {
                    "name": "erp",
                    "host": HOST,
                    "connectorId": "c1",
                    "timeOut": "00:00:05",
                    "enabledForMarkets": ["SE"],
                    "customHeaders": [
                        {"key": "X-A", "value": "${X_A}", "secret": True}
                    ],
                }
            ]
        },
        {
            "Connectors": [
                {
                    "Name": "erp",
                    "Host": HOST,
                    "ConnectorId": "c1",
                    "TimeOut": "00:00:05",
                    "EnabledForMarkets": ["SE"],
                    "CustomHeaders": [
                        {"Key": "X-A", "Value": "${X_A}", "Secret": True}
                    ],
                }
            ]
        },
        {
            "CONNECTORS": [
                {
                    "NAME": "erp",
                    "host": HOST,
                    "connectorid": "c1",
                    "TIMEOUT": "00:00:05",
                    "enabledformarkets": ["SE"],
                    "CustomHeaders": [
                        {"KEY": "X-A", "value": "${X_A}", "secret": True}
                    ],
                }
            ]
        },
    ],
    ids=["camelCase", "PascalCase", "other casing"],
)
def test_tenant_keys_any_case(tmp_path: Path, data: dict[str, Any]) -> None:
    found = _parse(tmp_path, data, env={"X_A": "1"}).settings.connectors[0]
    assert found.name == "erp"
    assert found.connector_id == "c1"
    assert found.timeout.total_seconds() == 5
    assert found.enabled_for_markets == ["SE"]
    assert found.custom_headers[0].key == "X-A"
    assert found.custom_headers[0].secret is True


def test_tenant_pascal_wins_over_camel(tmp_path: Path) -> None:
    data = {"Connectors": [{"name": "camel", "Name": "pascal", "Host": HOST}]}
    assert _parse(tmp_path, data).settings.connectors[0].name == "pascal"


def test_tenant_secret_from_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_ERP_PASSWORD", "pw-from-env")
    data = {"Connectors": [connector(Username="svc", Password="${ACME_ERP_PASSWORD}")]}
    path = write_tenant(tmp_path, data)
    tenant = parse_tenant_file(path, "acme")
    assert tenant.settings.connectors[0].password == "pw-from-env"
    assert "pw-from-env" in tenant.secret_values


def test_tenant_secret_inside_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_KEY", "k-123")
    header = {"Key": "X-Api-Key", "Value": "Key ${ACME_KEY}"}
    data = {"Connectors": [connector(CustomHeaders=[header])]}
    path = write_tenant(tmp_path, data)
    tenant = parse_tenant_file(path, "acme")
    assert tenant.settings.connectors[0].custom_headers[0].value == "Key k-123"
    assert "Key k-123" in tenant.secret_values


def test_tenant_secret_from_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "token.txt"
    secret_file.write_text("file-token\n", encoding="utf-8")
    data = {"Connectors": [connector(BearerToken="${file:" + str(secret_file) + "}")]}
    tenant = _parse(tmp_path, data)
    assert tenant.settings.connectors[0].bearer_token == "file-token"


def test_tenant_missing_env_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ACME_MISSING_TOKEN", raising=False)
    data = {"Connectors": [connector(BearerToken="${ACME_MISSING_TOKEN}")]}
    path = write_tenant(tmp_path, data)
    with pytest.raises(ConfigError) as caught:
        parse_tenant_file(path, "acme")
    message = str(caught.value)
    assert "ACME_MISSING_TOKEN" in message
    assert "is not set" in message
    assert str(path) in message


def test_tenant_sensitive_header_is_secret(tmp_path: Path) -> None:
    header = {"Key": "Authorization", "Value": "${ERP_AUTH}"}
    data = {"Connectors": [connector(CustomHeaders=[header])]}
    tenant = _parse(tmp_path, data, env={"ERP_AUTH": "Basic abcd"})
    assert "Basic abcd" in tenant.secret_values


@pytest.mark.parametrize(
    "header",
    [
        {"Key": "Authorization", "Value": "Basic abcd"},
        {"Key": "X-Api-Key", "Value": "k-123"},
        {"Key": "X-Plain", "Value": "v", "Secret": True},
    ],
    ids=["authorization", "api-key", "marked-secret"],
)
def test_tenant_literal_secret_header_rejected(
    tmp_path: Path, header: dict[str, Any]
) -> None:
    message = _error(tmp_path, {"Connectors": [connector(CustomHeaders=[header])]})
    assert "CustomHeaders[0]" in message
    assert "secrets must not be written in the file" in message


def test_tenant_reports_every_problem(tmp_path: Path) -> None:
    data = {
        "Connectors": [
            connector(ConnectorId="a", BearerToken="${MISSING_ONE}"),
            connector(ConnectorId="b", Name="other", Password="literal", Username="u"),
        ]
    }
    message = _error(tmp_path, data)
    assert "connector 'a' field BearerToken" in message
    assert "MISSING_ONE" in message
    assert "connector 'b' field Password" in message


def test_tenant_plain_header_not_secret(tmp_path: Path) -> None:
    header = {"Key": "X-Shop", "Value": "main-shop"}
    tenant = _parse(tmp_path, {"Connectors": [connector(CustomHeaders=[header])]})
    assert "main-shop" not in tenant.secret_values


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"BearerToken": "Tk-9f2e7"}, "BearerToken"),
        ({"bearerToken": "Tk-9f2e7"}, "BearerToken"),
        ({"Username": "svc", "Password": "Pw-9f2e7"}, "Password"),
        ({"username": "svc", "password": "Pw-9f2e7"}, "Password"),
    ],
)
def test_tenant_literal_secret_rejected(
    tmp_path: Path, fields: dict[str, str], field: str
) -> None:
    message = _error(tmp_path, {"Connectors": [connector(**fields)]})
    assert f"field {field}" in message
    assert "secrets must not be written in the file" in message
    assert "connector 'erp'" in message
    assert "9f2e7" not in message


@pytest.mark.parametrize(
    "value",
    ["a\nb", "a\rb", "a\x00b", "a\x7fb", "a\x1bb"],
    ids=["LF", "CR", "NUL", "DEL", "ESC"],
)
def test_tenant_header_control_rejected(tmp_path: Path, value: str) -> None:
    header = {"Key": "X-A", "Value": value}
    message = _error(tmp_path, {"Connectors": [connector(CustomHeaders=[header])]})
    assert "field CustomHeaders.0" in message
    assert "control character" in message


def test_tenant_header_tab_allowed(tmp_path: Path) -> None:
    header = {"Key": "X-A", "Value": "a\tb"}
    tenant = _parse(tmp_path, {"Connectors": [connector(CustomHeaders=[header])]})
    assert tenant.settings.connectors[0].custom_headers[0].value == "a\tb"


def test_tenant_header_env_control_rejected(tmp_path: Path) -> None:
    header = {"Key": "X-A", "Value": "${ACME_HEADER}"}
    data = {"Connectors": [connector(CustomHeaders=[header])]}
    message = _error(tmp_path, data, {"ACME_HEADER": "x\r\nInjected: 1"})
    assert "control character" in message
    assert "Injected" not in message


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"Key": "Bad Name", "Value": "x"}, "not a valid HTTP token"),
        ({"Key": "Content-Type", "Value": "x"}, "set by the worker"),
        ({"Key": "", "Value": "x"}, "CustomHeaders.0.Key"),
    ],
)
def test_tenant_header_name_rejected(
    tmp_path: Path, header: dict[str, str], reason: str
) -> None:
    message = _error(tmp_path, {"Connectors": [connector(CustomHeaders=[header])]})
    assert reason in message


def test_tenant_unknown_field(tmp_path: Path) -> None:
    message = _error(tmp_path, {"Connectors": [connector(TimeoutSeconds=5)]})
    assert "connector 'erp' field TimeoutSeconds" in message
    assert "unknown property" in message


def test_tenant_unknown_top_field(tmp_path: Path) -> None:
    message = _error(tmp_path, {"Connectors": [], "Conectors": []})
    assert "field Conectors: unknown property" in message


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{", "not valid JSON"),
        ("[]", "top level must be an object"),
        ('"text"', "top level must be an object"),
    ],
)
def test_tenant_file_not_object(tmp_path: Path, text: str, reason: str) -> None:
    message = _error(tmp_path, text)
    assert reason in message
    assert str(tmp_path / "acme.json") in message


def test_tenant_file_missing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        parse_tenant_file(tmp_path / "none.json", "none", env={})


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"Host": "ftp://erp.test/"}, "absolute http:// or https://"),
        ({"Host": "/relative"}, "absolute http:// or https://"),
        ({"Host": "https://user:pw@erp.test/"}, "must not contain user info"),
        ({"Host": "https://erp.test:0/"}, "port 0"),
        ({"Host": "https:///path"}, "no host name"),
        ({"Username": "svc"}, "needs both Username and Password"),
        ({"Username": "a:b", "Password": "${P}"}, "must not contain ':'"),
        (
            {"BearerToken": "${P}", "Username": "u", "Password": "${P}"},
            "not both",
        ),
        ({"Name": ""}, "field Name"),
    ],
)
def test_tenant_connector_invalid(
    tmp_path: Path, fields: dict[str, str], reason: str
) -> None:
    message = _error(tmp_path, {"Connectors": [connector(**fields)]}, {"P": "pw12"})
    assert reason in message


def test_tenant_host_error_hides_secret(tmp_path: Path) -> None:
    data = {"Connectors": [connector(Host="${ACME_HOST}")]}
    message = _error(tmp_path, data, {"ACME_HOST": "https://u:pw-9f2e7@erp.test/"})
    assert "pw-9f2e7" not in message


def test_tenant_same_name_without_id(tmp_path: Path) -> None:
    data = {"Connectors": [connector(ConnectorId="a"), connector()]}
    message = _error(tmp_path, data)
    assert "2 connectors named 'erp'" in message
    assert "give each of them a ConnectorId" in message


def test_tenant_same_name_no_ids(tmp_path: Path) -> None:
    message = _error(tmp_path, {"Connectors": [connector(), connector()]})
    assert "2 connectors named 'erp'" in message


def test_tenant_duplicate_connector_id(tmp_path: Path) -> None:
    data = {
        "Connectors": [
            connector(ConnectorId="a"),
            connector(Name="crm", ConnectorId="a"),
        ]
    }
    assert "ConnectorId 'a' is used twice" in _error(tmp_path, data)


def test_tenant_same_name_distinct_lists(tmp_path: Path) -> None:
    data = {
        "MarketGroups": {"nordic": ["SE", "NO"]},
        "Connectors": [
            connector(ConnectorId="se", EnabledForMarkets=["SE"]),
            connector(ConnectorId="nordic", EnabledForMarketGroups=["nordic"]),
            connector(ConnectorId="all"),
        ],
    }
    assert len(_parse(tmp_path, data).settings.connectors) == 3


@pytest.mark.parametrize(
    ("connectors", "groups", "expected"),
    [
        (
            [
                connector(ConnectorId="a", EnabledForMarkets=["SE"]),
                connector(ConnectorId="b", EnabledForMarkets=["SE", "NO"]),
            ],
            {},
            "connectors 'a', 'b' (Name 'erp') tie at level 2 for market 'SE'",
        ),
        (
            [
                connector(ConnectorId="a", EnabledForMarketGroups=["nordic"]),
                connector(ConnectorId="b", EnabledForMarketGroups=["north"]),
            ],
            {"nordic": ["SE", "NO"], "north": ["NO"]},
            "connectors 'a', 'b' (Name 'erp') tie at level 3 for market 'NO'",
        ),
        (
            [connector(ConnectorId="a"), connector(ConnectorId="b")],
            {},
            "connectors 'a', 'b' (Name 'erp') tie at level 4",
        ),
        (
            [
                connector(ConnectorId="a", DisabledForMarkets=["SE"]),
                connector(ConnectorId="b", DisabledForMarkets=["NO"]),
            ],
            {},
            "tie at level 4",
        ),
    ],
    ids=["markets", "groups", "no lists", "no lists, other disabled"],
)
def test_tenant_tie_rejected(
    tmp_path: Path,
    connectors: list[dict[str, Any]],
    groups: dict[str, list[str]],
    expected: str,
) -> None:
    message = _error(tmp_path, {"MarketGroups": groups, "Connectors": connectors})
    assert expected in message


def test_tenant_tie_names_file(tmp_path: Path) -> None:
    data = {"Connectors": [connector(ConnectorId="a"), connector(ConnectorId="b")]}
    assert str(tmp_path / "acme.json") in _error(tmp_path, data)


def test_tenant_disabled_breaks_tie(tmp_path: Path) -> None:
    data = {
        "MarketGroups": {"nordic": ["SE", "NO"]},
        "Connectors": [
            connector(ConnectorId="a", EnabledForMarkets=["SE"]),
            connector(
                ConnectorId="b",
                EnabledForMarkets=["SE", "NO"],
                DisabledForMarketGroups=["nordic"],
            ),
        ],
    }
    assert len(_parse(tmp_path, data).settings.connectors) == 2


def test_tenant_other_names_no_tie(tmp_path: Path) -> None:
    data = {"Connectors": [connector(), connector(Name="crm")]}
    assert len(_parse(tmp_path, data).settings.connectors) == 2


@pytest.mark.parametrize(
    "fields",
    [
        {"EnabledForMarketGroups": ["baltic"]},
        {"DisabledForMarketGroups": ["baltic"]},
        {"EnabledForMarketGroups": ["Nordic"]},
    ],
    ids=["enabled", "disabled", "other case"],
)
def test_tenant_unknown_market_group(tmp_path: Path, fields: dict[str, Any]) -> None:
    data = {"MarketGroups": {"nordic": ["SE"]}, "Connectors": [connector(**fields)]}
    message = _error(tmp_path, data)
    assert "is not defined in MarketGroups" in message
    assert "(defined: nordic)" in message
    assert "connector 'erp'" in message


def test_tenant_no_market_groups(tmp_path: Path) -> None:
    data = {"Connectors": [connector(EnabledForMarketGroups=["nordic"])]}
    assert "(defined: none)" in _error(tmp_path, data)


def _bump_mtime(path: Path) -> None:
    """Move the file's modification time forward so the store detects a change."""
    stat = path.stat()
    later = stat.st_mtime_ns + 5_000_000_000
    os.utime(path, ns=(stat.st_atime_ns, later))


def test_store_no_file(tmp_path: Path) -> None:
    assert TenantStore(tmp_path).get("acme") is None


def test_store_reads_file(tmp_path: Path) -> None:
    write_tenant(tmp_path, {"Connectors": [connector()]})
    tenant = TenantStore(tmp_path).get("acme")
    assert tenant is not None
    assert tenant.settings.connectors[0].name == "erp"


def test_store_caches_unchanged(tmp_path: Path) -> None:
    write_tenant(tmp_path, {"Connectors": [connector()]})
    store = TenantStore(tmp_path)
    assert store.get("acme") is store.get("acme")


def test_store_reloads_changed(tmp_path: Path) -> None:
    path = write_tenant(tmp_path, {"Connectors": [connector()]})
    store = TenantStore(tmp_path)
    store.get("acme")
    write_tenant(tmp_path, {"Connectors": [connector(Name="crm")]})
    _bump_mtime(path)
    tenant = store.get("acme")
    assert tenant is not None
    assert tenant.settings.connectors[0].name == "crm"


def test_store_keeps_last_good(tmp_path: Path) -> None:
    path = write_tenant(tmp_path, {"Connectors": [connector()]})
    store = TenantStore(tmp_path)
    good = store.get("acme")
    write_tenant(tmp_path, {"Connectors": [connector(Unknown=1)]})
    _bump_mtime(path)
    assert store.get("acme") is good
    assert store.get("acme") is good


def test_store_recovers_after_fix(tmp_path: Path) -> None:
    path = write_tenant(tmp_path, {"Connectors": [connector()]})
    store = TenantStore(tmp_path)
    store.get("acme")
    write_tenant(tmp_path, "{ not json")
    _bump_mtime(path)
    store.get("acme")
    write_tenant(tmp_path, {"Connectors": [connector(Name="crm")]})
    _bump_mtime(path)
    tenant = store.get("acme")
    assert tenant is not None
    assert tenant.settings.connectors[0].name == "crm"


def test_store_invalid_first_raises(tmp_path: Path) -> None:
    write_tenant(tmp_path, {"Connectors": [connector(Unknown=1)]})
    with pytest.raises(ConfigError, match="unknown property"):
        TenantStore(tmp_path).get("acme")


def test_store_deleted_file(tmp_path: Path) -> None:
    path = write_tenant(tmp_path, {"Connectors": [connector()]})
    store = TenantStore(tmp_path)
    store.get("acme")
    path.unlink()
    assert store.get("acme") is None


def test_store_registers_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ACME_STORE_TOKEN", "store-token-xyz")
    write_tenant(
        tmp_path, {"Connectors": [connector(BearerToken="${ACME_STORE_TOKEN}")]}
    )
    TenantStore(tmp_path).get("acme")
    assert "store-token-xyz" in secrets.known_secrets()


def test_store_load_all(tmp_path: Path) -> None:
    write_tenant(tmp_path, {"Connectors": [connector()]}, tenant_id="good")
    write_tenant(tmp_path, {"Connectors": [connector(X=1)]}, tenant_id="bad")
    errors = TenantStore(tmp_path).load_all()
    assert len(errors) == 1
    assert "bad.json" in str(errors[0])


def test_store_load_all_no_folder(tmp_path: Path) -> None:
    errors = TenantStore(tmp_path / "missing").load_all()
    assert "does not exist" in str(errors[0])
