"""Tenant settings: the connectors in ``<CONFIG_DIR>/<TenantId>.json``."""

from __future__ import annotations

import json
import math
import ssl
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import structlog
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from worker import secrets
from worker.casing import canonical_keys
from worker.errors import ConfigError
from worker.headers import header_problem, is_sensitive_header
from worker.signing import secret_key
from worker.timespan import TimeSpanError, parse_timespan

log = structlog.get_logger(__name__)

DEFAULT_TIMEOUT = timedelta(seconds=30)
MAX_TIMEOUT = timedelta(seconds=120)
# Millisecond inputs beyond this overflow timedelta; they are out of range anyway.
MAX_TIMEOUT_MS_INPUT = 1e12


def url_for_message(url: str) -> str:
    """Return ``url`` without user info, query or fragment, which may hold secrets."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return "(an unparsable URL)"
    host = parts.hostname or ""
    if not parts.scheme or not host:
        return repr(parts.path[:200])
    if ":" in host:
        host = f"[{host}]"
    shown_port = f":{port}" if port else ""
    return repr(f"{parts.scheme}://{host}{shown_port}{parts.path}")


def check_webhook_url(url: str) -> str | None:
    """Return why ``url`` cannot be a webhook URL, or None when it can."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as error:
        return f"{error}"
    if parts.scheme not in ("http", "https"):
        return "it must be an absolute http:// or https:// URL"
    if not parts.hostname:
        return "it has no host name"
    if parts.username is not None or parts.password is not None:
        return "it must not contain user info; configure credentials separately"
    if port == 0:
        return "port 0 is not valid"
    return None


class CaseInsensitiveModel(BaseModel):
    """A model whose JSON property names are matched in any casing."""

    model_config = ConfigDict(extra="forbid", populate_by_name=False, frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _canonical_names(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        names = [field.alias or name for name, field in cls.model_fields.items()]
        return canonical_keys(data, names)


class HeaderSetting(CaseInsensitiveModel):
    """One custom request header."""

    key: str = Field(alias="Key", min_length=1)
    value: str = Field(alias="Value")
    secret: bool = Field(False, alias="Secret")

    @model_validator(mode="after")
    def _check_header(self) -> HeaderSetting:
        problem = header_problem(self.key, self.value)
        if problem:
            raise ValueError(problem)
        return self


def _parse_timeout(value: Any) -> timedelta:
    if value is None:
        return DEFAULT_TIMEOUT
    if isinstance(value, bool):
        raise ValueError('must be a TimeSpan string such as "00:00:30" or milliseconds')
    if isinstance(value, int | float):
        if not math.isfinite(value) or abs(value) > MAX_TIMEOUT_MS_INPUT:
            raise ValueError(
                f"{value!r} milliseconds is out of range; give a timeout above 0 "
                "and at most 120000 ms"
            )
        timeout = timedelta(milliseconds=float(value))
    elif isinstance(value, str):
        try:
            timeout = parse_timespan(value, allow_days_only=False)
        except TimeSpanError as error:
            raise ValueError(str(error)) from None
    else:
        raise ValueError('must be a TimeSpan string such as "00:00:30" or milliseconds')
    if timeout == timedelta(0):
        return DEFAULT_TIMEOUT
    if timeout < timedelta(0):
        raise ValueError(f"{value!r} is negative; give a timeout above 0")
    if timeout > MAX_TIMEOUT:
        raise ValueError(
            f'{value!r} is longer than the maximum of 120 seconds ("00:02:00")'
        )
    return timeout


class OAuthSettings(CaseInsensitiveModel):
    """OAuth 2.0 client credentials grant (RFC 6749 section 4.4) of one connector."""

    token_url: str = Field(alias="TokenUrl")
    client_id: str = Field(alias="ClientId", min_length=1)
    client_secret: str = Field(alias="ClientSecret", min_length=1, repr=False)
    scope: str | None = Field(None, alias="Scope", min_length=1)
    resource: str | None = Field(None, alias="Resource", min_length=1)
    client_authentication: Literal["Basic", "Body"] = Field(
        "Basic", alias="ClientAuthentication"
    )

    @model_validator(mode="after")
    def _check_token_url(self) -> OAuthSettings:
        problem = check_webhook_url(self.token_url)
        if problem:
            raise ValueError(
                f"TokenUrl {url_for_message(self.token_url)} is invalid: {problem}"
            )
        return self


def _check_readable_file(value: str | None) -> str | None:
    """Check that ``value`` is an absolute path of a file this process can read."""
    if value is None:
        return None
    if not Path(value).is_absolute():
        raise ValueError(f"{value!r} must be an absolute path")
    try:
        with open(value, "rb") as file:
            file.read(1)
    except OSError as error:
        raise ValueError(
            f"cannot read {value!r} ({error.strerror}); mount the file or fix the path"
        ) from None
    return value


def _tls_files_problem(
    certificate_file: str | None, key_file: str | None, ca_bundle_file: str | None
) -> str | None:
    """Return why the PEM files cannot be loaded by OpenSSL, or None when they can."""
    if key_file is not None and certificate_file is None:
        return "ClientKeyFile needs ClientCertificateFile"
    context = ssl.create_default_context()
    if certificate_file is not None:
        try:
            # An encrypted key gets an empty password and fails here, in place of
            # OpenSSL prompting on the terminal when the first call connects.
            context.load_cert_chain(certificate_file, key_file, password=lambda: b"")
        except ssl.SSLError as error:
            return (
                f"ClientCertificateFile {certificate_file!r} and ClientKeyFile "
                f"{key_file!r} are not a usable PEM certificate and unencrypted "
                f"private key ({error.reason or error})"
            )
    if ca_bundle_file is not None:
        try:
            context.load_verify_locations(cafile=ca_bundle_file)
        except ssl.SSLError as error:
            return (
                f"CaBundleFile {ca_bundle_file!r} is not a PEM bundle of CA "
                f"certificates ({error.reason or error})"
            )
    return None


class CircuitBreakerSettings(CaseInsensitiveModel):
    """Circuit breaker of one connector; ``worker.protection`` applies it."""

    # The breaker opens when the share of failed calls exceeds this.
    failure_ratio: float = Field(0.5, alias="FailureRatio", ge=0, lt=1, strict=True)
    minimum_calls: int = Field(20, alias="MinimumCalls", ge=1, le=100_000, strict=True)
    window_s: int = Field(60, alias="Window", ge=1, le=3600, strict=True)
    cool_down_s: float = Field(30, alias="CoolDown", gt=0, le=3600, strict=True)
    trial_calls: int = Field(3, alias="TrialCalls", ge=1, le=1000, strict=True)


class ConnectorSettings(CaseInsensitiveModel):
    """One HTTP connector of a tenant."""

    name: str = Field(alias="Name", min_length=1)
    connector_id: str | None = Field(None, alias="ConnectorId", min_length=1)
    host: str = Field(alias="Host")
    bearer_token: str | None = Field(None, alias="BearerToken", repr=False)
    username: str | None = Field(None, alias="Username")
    password: str | None = Field(None, alias="Password", repr=False)
    is_authenticated_manually: bool = Field(False, alias="IsAuthenticatedManually")
    custom_headers: list[HeaderSetting] = Field(
        default_factory=list, alias="CustomHeaders"
    )
    timeout: timedelta = Field(DEFAULT_TIMEOUT, alias="TimeOut")
    disable_standard_error_policy: bool = Field(
        False, alias="DisableStandardErrorPolicy"
    )
    enabled_for_markets: list[str] = Field(
        default_factory=list, alias="EnabledForMarkets"
    )
    disabled_for_markets: list[str] = Field(
        default_factory=list, alias="DisabledForMarkets"
    )
    enabled_for_market_groups: list[str] = Field(
        default_factory=list, alias="EnabledForMarketGroups"
    )
    disabled_for_market_groups: list[str] = Field(
        default_factory=list, alias="DisabledForMarketGroups"
    )
    keep_existing_list_items: bool = Field(True, alias="KeepExistingListItems")
    keep_existing_custom_properties: bool = Field(
        True, alias="KeepExistingCustomProperties"
    )
    signing_secret: str | None = Field(None, alias="SigningSecret", repr=False)
    request_format: Literal["Order", "Envelope"] = Field("Order", alias="RequestFormat")
    oauth: OAuthSettings | None = Field(None, alias="OAuth")
    client_certificate_file: str | None = Field(None, alias="ClientCertificateFile")
    client_key_file: str | None = Field(None, alias="ClientKeyFile")
    ca_bundle_file: str | None = Field(None, alias="CaBundleFile")
    circuit_breaker: CircuitBreakerSettings | None = Field(None, alias="CircuitBreaker")
    max_requests_per_second: float | None = Field(
        None, alias="MaxRequestsPerSecond", gt=0, le=100_000, strict=True
    )
    max_concurrent_requests: int | None = Field(
        None, alias="MaxConcurrentRequests", ge=1, le=100_000, strict=True
    )

    @field_validator("client_certificate_file", "client_key_file", "ca_bundle_file")
    @classmethod
    def _check_file(cls, value: str | None) -> str | None:
        return _check_readable_file(value)

    @field_validator("signing_secret")
    @classmethod
    def _check_signing_secret(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                secret_key(value)
            except ConfigError as error:
                raise ValueError(str(error)) from None
        return value

    @field_validator("timeout", mode="before")
    @classmethod
    def _convert_timeout(cls, value: Any) -> timedelta:
        return _parse_timeout(value)

    @model_validator(mode="after")
    def _check_connector(self) -> ConnectorSettings:
        problem = check_webhook_url(self.host)
        if problem:
            raise ValueError(f"Host {url_for_message(self.host)} is invalid: {problem}")
        if self.bearer_token and (self.username or self.password):
            raise ValueError(
                "set either BearerToken or Username and Password, not both"
            )
        if (self.username is None) != (self.password is None):
            raise ValueError("Basic authentication needs both Username and Password")
        if self.username is not None and ":" in self.username:
            raise ValueError("Username must not contain ':'")
        if self.oauth is not None:
            self._check_oauth_alone()
        problem = _tls_files_problem(
            self.client_certificate_file, self.client_key_file, self.ca_bundle_file
        )
        if problem:
            raise ValueError(problem)
        return self

    def _check_oauth_alone(self) -> None:
        """Raise ValueError when another setting also sets the Authorization header."""
        others = [
            name
            for name, value in (
                ("BearerToken", self.bearer_token),
                ("Username", self.username),
                ("Password", self.password),
            )
            if value is not None
        ]
        if others:
            raise ValueError(
                f"OAuth cannot be combined with {' and '.join(others)}; "
                "keep one way to authenticate"
            )
        if self.is_authenticated_manually:
            raise ValueError(
                "OAuth cannot be combined with IsAuthenticatedManually true; "
                "remove one of them"
            )
        if any(h.key.lower() == "authorization" for h in self.custom_headers):
            raise ValueError(
                "OAuth cannot be combined with a custom Authorization header; "
                "remove the header from CustomHeaders"
            )

    @property
    def label(self) -> str:
        """The ConnectorId, else the Name: how messages and error entries name it."""
        return self.connector_id or self.name

    def has_enabled_lists(self) -> bool:
        return bool(self.enabled_for_markets or self.enabled_for_market_groups)

    def tls_files(self) -> tuple[str | None, str | None, str | None]:
        """Return the client certificate, its key and the CA bundle file paths."""
        return (
            self.client_certificate_file,
            self.client_key_file,
            self.ca_bundle_file,
        )


class TenantSettings(CaseInsensitiveModel):
    """The settings file of one tenant."""

    connectors: list[ConnectorSettings] = Field(
        default_factory=list, alias="Connectors"
    )
    market_groups: dict[str, list[str]] = Field(
        default_factory=dict, alias="MarketGroups"
    )

    def groups_of(self, market: str) -> set[str]:
        """Return the names of the market groups that contain ``market``."""
        return {
            name for name, markets in self.market_groups.items() if market in markets
        }


@dataclass(frozen=True)
class LoadedTenant:
    """Validated settings of one tenant, with the values that logs must never show."""

    tenant_id: str
    path: Path
    settings: TenantSettings
    secret_values: frozenset[str]


# Fields whose values must come from ${...} references, never from the file itself.
_SECRET_FIELDS = ("BearerToken", "Password", "SigningSecret")
# The same for fields of a connector's OAuth object.
_OAUTH_SECRET_FIELDS = ("ClientSecret",)


def _expand(
    value: Any,
    where: str,
    found: set[str],
    env: Mapping[str, str],
    problems: list[str],
) -> Any:
    """Expand every ``${...}`` in ``value``; add each failure to ``problems``."""
    if isinstance(value, str):
        if not secrets.has_reference(value):
            return value
        try:
            expanded = secrets.expand_references(value, where, env)
        except ConfigError as error:
            problems.append(str(error))
            return value
        found.add(expanded)
        return expanded
    if isinstance(value, list):
        return [
            _expand(item, f"{where}[{i}]", found, env, problems)
            for i, item in enumerate(value)
        ]
    if isinstance(value, dict):
        prefix = _where_in(where, value)
        joiner = " field " if prefix != where else "."
        return {
            key: _expand(
                item, f"{prefix}{joiner}{key}" if prefix else key, found, env, problems
            )
            for key, item in value.items()
        }
    return value


def _where_in(where: str, mapping: dict[str, Any]) -> str:
    """Name a connector by its id in place of its list index, when it has one."""
    if where.startswith("Connectors[") and where.count("[") == 1:
        label = _connector_label(mapping, 0)
        if not label.startswith("connector #"):
            return label
    return where


def _connector_label(raw: Any, index: int) -> str:
    if isinstance(raw, dict):
        fields = canonical_keys(raw, ["ConnectorId", "Name"])
        for field in ("ConnectorId", "Name"):
            if isinstance(fields.get(field), str):
                return f"connector {fields[field]!r}"
    return f"connector #{index + 1}"


def _describe_errors(error: ValidationError, raw: dict[str, Any]) -> str:
    connectors = canonical_keys(raw, ["Connectors"]).get("Connectors")
    lines = []
    for item in error.errors():
        location = list(item["loc"])
        where = ""
        if (
            len(location) >= 2
            and location[0] == "Connectors"
            and isinstance(location[1], int)
            and isinstance(connectors, list)
            and location[1] < len(connectors)
        ):
            where = _connector_label(connectors[location[1]], location[1]) + " "
            location = location[2:]
        field = ".".join(str(part) for part in location) or "(the connector itself)"
        message = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            message = (
                "unknown property; check the spelling against docs/configuration.md"
            )
        lines.append(f"{where}field {field}: {message}")
    return "; ".join(lines)


def _secret_field_problems(raw: dict[str, Any]) -> list[str]:
    """Return each secret written literally in the file, by connector and field."""
    connectors = canonical_keys(raw, ["Connectors"]).get("Connectors")
    if not isinstance(connectors, list):
        return []
    advice = (
        "secrets must not be written in the file; write ${ENV_VAR} or "
        "${file:/path} and provide the value there"
    )
    problems = []
    for index, connector in enumerate(connectors):
        if not isinstance(connector, dict):
            continue
        label = _connector_label(connector, index)
        fields = canonical_keys(connector, [*_SECRET_FIELDS, "CustomHeaders", "OAuth"])
        for field in _SECRET_FIELDS:
            value = fields.get(field)
            if isinstance(value, str) and value and not secrets.has_reference(value):
                problems.append(f"{label} field {field}: {advice}")
        oauth = fields.get("OAuth")
        if isinstance(oauth, dict):
            oauth_fields = canonical_keys(oauth, list(_OAUTH_SECRET_FIELDS))
            for field in _OAUTH_SECRET_FIELDS:
                value = oauth_fields.get(field)
                if (
                    isinstance(value, str)
                    and value
                    and not secrets.has_reference(value)
                ):
                    problems.append(f"{label} field OAuth.{field}: {advice}")
        headers = fields.get("CustomHeaders")
        for position, header in enumerate(headers if isinstance(headers, list) else []):
            if not isinstance(header, dict):
                continue
            parts = canonical_keys(header, ["Key", "Value", "Secret"])
            key, value = parts.get("Key"), parts.get("Value")
            marked = parts.get("Secret") is True or (
                isinstance(key, str) and is_sensitive_header(key)
            )
            literal = isinstance(value, str) and not secrets.has_reference(value)
            if marked and value and literal:
                problems.append(
                    f"{label} field CustomHeaders[{position}] ({key}): {advice}"
                )
    return problems


def _check_markets(settings: TenantSettings) -> list[str]:
    problems = []
    for connector in settings.connectors:
        for group in (
            connector.enabled_for_market_groups + connector.disabled_for_market_groups
        ):
            if group not in settings.market_groups:
                known = ", ".join(sorted(settings.market_groups)) or "none"
                problems.append(
                    f"connector {connector.label!r}: market group {group!r} is not "
                    f"defined in MarketGroups (defined: {known})"
                )
    return problems


def _check_identities(settings: TenantSettings) -> list[str]:
    problems = []
    seen_ids: set[str] = set()
    by_name: dict[str, list[ConnectorSettings]] = {}
    for connector in settings.connectors:
        by_name.setdefault(connector.name, []).append(connector)
        if connector.connector_id is None:
            continue
        if connector.connector_id in seen_ids:
            problems.append(f"ConnectorId {connector.connector_id!r} is used twice")
        seen_ids.add(connector.connector_id)
    for name, group in by_name.items():
        if len(group) > 1 and any(c.connector_id is None for c in group):
            problems.append(
                f"there are {len(group)} connectors named {name!r}; "
                "give each of them a ConnectorId"
            )
    return problems


def _check_ties(settings: TenantSettings) -> list[str]:
    """Report markets for which two connectors of one Name tie at the same level."""
    from worker.selection import candidates_by_level

    problems = []
    names = {connector.name for connector in settings.connectors}
    markets: set[str | None] = {None}
    for connector in settings.connectors:
        markets.update(connector.enabled_for_markets)
        for group in connector.enabled_for_market_groups:
            markets.update(settings.market_groups.get(group, []))
    for name in sorted(names):
        for market in sorted(markets, key=lambda m: m or ""):
            for level, candidates in candidates_by_level(settings, name, market):
                if len(candidates) > 1:
                    ids = ", ".join(repr(c.label) for c in candidates)
                    problems.append(
                        f"connectors {ids} (Name {name!r}) tie at level {level} for "
                        f"market {market!r}; make their EnabledFor lists distinct"
                    )
                if candidates:
                    break
    return sorted(set(problems))


def parse_tenant_file(
    path: Path, tenant_id: str, env: Mapping[str, str] | None = None
) -> LoadedTenant:
    """Read, expand and validate one tenant settings file.

    Raises:
        ConfigError: the message names the file, the connector and the field.
    """
    env = secrets.environ() if env is None else env
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(
            f"{path}: cannot read ({error.strerror})", path=str(path)
        ) from error
    except (ValueError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not valid JSON: {error}", path=str(path)) from error
    except RecursionError:
        raise ConfigError(
            f"{path}: not valid JSON: nested too deeply", path=str(path)
        ) from None
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{path}: the top level must be an object with a Connectors list",
            path=str(path),
        )

    problems = _secret_field_problems(raw)
    found: set[str] = set()
    expanded = _expand(raw, "", found, env, problems)
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems), path=str(path))

    try:
        settings = TenantSettings.model_validate(expanded)
    except ValidationError as error:
        raise ConfigError(
            f"{path}: {_describe_errors(error, raw)}", path=str(path)
        ) from None

    problems = _check_markets(settings) + _check_identities(settings)
    if not problems:
        problems = _check_ties(settings)
    if problems:
        raise ConfigError(f"{path}: " + "; ".join(problems), path=str(path))

    secret_values = set(found)
    for connector in settings.connectors:
        for value in (
            connector.bearer_token,
            connector.password,
            connector.signing_secret,
        ):
            if value:
                secret_values.add(value)
        if connector.oauth is not None:
            secret_values.add(connector.oauth.client_secret)
        if connector.client_key_file is not None:
            secret_values.update(_key_file_secrets(connector.client_key_file))
        for header in connector.custom_headers:
            if header.secret or is_sensitive_header(header.key):
                secret_values.add(header.value)
    return LoadedTenant(tenant_id, path, settings, frozenset(secret_values))


def _key_file_secrets(path: str) -> set[str]:
    """Return the private key file's text and each base64 line of it, as secrets."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        # Validation read the file a moment ago; requests reports it at connect.
        return set()
    lines = {line.strip() for line in text.splitlines() if "-----" not in line}
    # A short last line such as "AB==" would redact ordinary words.
    return {text.strip(), *(line for line in lines if len(line) >= 16)}


@dataclass
class _CacheEntry:
    stamp: tuple[int, int]
    tenant: LoadedTenant


class TenantStore:
    """Tenant settings read on demand and reloaded when their file changes.

    A changed file that does not validate is logged and ignored; the last good
    version stays in force. Safe to share between threads.
    """

    def __init__(self, config_dir: Path) -> None:
        self.config_dir = config_dir
        self._cache: dict[str, _CacheEntry] = {}
        self._lock = threading.Lock()

    def path_for(self, tenant_id: str) -> Path:
        return self.config_dir / f"{tenant_id}.json"

    def get(self, tenant_id: str) -> LoadedTenant | None:
        """Return the tenant's settings, or None when it has no settings file.

        Raises:
            ConfigError: the file is invalid and no earlier version was valid.
        """
        path = self.path_for(tenant_id)
        try:
            stat = path.stat()
        except FileNotFoundError:
            with self._lock:
                self._cache.pop(tenant_id, None)
            return None
        stamp = (stat.st_mtime_ns, stat.st_size)

        with self._lock:
            entry = self._cache.get(tenant_id)
        if entry is not None and entry.stamp == stamp:
            return entry.tenant

        try:
            tenant = parse_tenant_file(path, tenant_id)
        except ConfigError as error:
            if entry is None:
                raise
            log.error(
                "tenant_settings.reload_rejected",
                path=str(path),
                error=str(error),
                action="kept the last valid settings; fix the file",
            )
            with self._lock:
                self._cache[tenant_id] = _CacheEntry(stamp, entry.tenant)
            return entry.tenant

        secrets.register_secrets(tenant.secret_values)
        if entry is not None:
            log.info("tenant_settings.reloaded", path=str(path))
        with self._lock:
            self._cache[tenant_id] = _CacheEntry(stamp, tenant)
        return tenant

    def load_all(self) -> list[ConfigError]:
        """Validate every settings file in the folder; return the errors found."""
        errors: list[ConfigError] = []
        if not self.config_dir.is_dir():
            return [
                ConfigError(
                    f"tenant settings folder {str(self.config_dir)!r} does not exist; "
                    "create it or set WEBHOOK_WORKER_CONFIG_DIR"
                )
            ]
        for path in sorted(self.config_dir.glob("*.json")):
            try:
                self.get(path.stem)
            except ConfigError as error:
                errors.append(error)
        return errors
