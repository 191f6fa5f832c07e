"""Where a step's call goes and what it carries: URL, headers, timeout, policy."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from worker import __version__, jsontext
from worker.job import Job, is_request_header_group
from worker.selection import select_connector
from worker.tenants import DEFAULT_TIMEOUT, ConnectorSettings, TenantStore
from worker.webhook import TlsFiles

USER_AGENT = f"webhook-step-worker/{__version__}"


@dataclass(frozen=True)
class Endpoint:
    """The resolved target of one step's call."""

    url: str
    timeout_s: float
    retries_enabled: bool
    connector: ConnectorSettings | None
    keep_existing_list_items: bool
    keep_existing_custom_properties: bool

    @property
    def session_key(self) -> str:
        if self.connector is None:
            parts = urlsplit(self.url)
            return f"inline:{parts.scheme}://{parts.netloc}"
        key = f"connector:{self.connector.label}:{self.connector.host}"
        if self.tls is not None:
            # A session keeps the TLS files it was created with, so changed
            # paths in a reloaded tenant file must get a new session.
            key += "|" + "|".join(path or "" for path in self.connector.tls_files())
        return key

    @property
    def tls(self) -> TlsFiles | None:
        """The connector's client certificate and CA files; None for inline steps."""
        if self.connector is None or not any(self.connector.tls_files()):
            return None
        return TlsFiles(*self.connector.tls_files())

    @property
    def reference_id(self) -> str:
        """ReferenceId of the step's error entries: connector id, name or host."""
        if self.connector is not None:
            return self.connector.label
        return urlsplit(self.url).hostname or self.url


def resolve_endpoint(job: Job, tenants: TenantStore) -> Endpoint:
    """Return the endpoint of the step: its inline Host, else the selected connector.

    Raises:
        NoEndpoint: no connector matches the step and the order's market.
        ConfigError: the tenant's settings file is invalid.
    """
    if job.inline_host is not None:
        # Inline mode uses no connector, so no connector secret can reach a job's URL.
        return Endpoint(
            url=job.inline_host,
            timeout_s=DEFAULT_TIMEOUT.total_seconds(),
            retries_enabled=True,
            connector=None,
            keep_existing_list_items=_choose(job.keep_existing_list_items, True),
            keep_existing_custom_properties=_choose(
                job.keep_existing_custom_properties, True
            ),
        )

    loaded = tenants.get(job.tenant_id)
    connector = select_connector(
        loaded.settings if loaded else None,
        job.tenant_id,
        job.step.connector or "",
        job.step.connector_id,
        job.market_id,
    )
    return Endpoint(
        url=connector.host,
        timeout_s=connector.timeout.total_seconds(),
        retries_enabled=not connector.disable_standard_error_policy,
        connector=connector,
        keep_existing_list_items=_choose(
            job.keep_existing_list_items, connector.keep_existing_list_items
        ),
        keep_existing_custom_properties=_choose(
            job.keep_existing_custom_properties,
            connector.keep_existing_custom_properties,
        ),
    )


def _choose(step_value: bool | None, default: bool) -> bool:
    return default if step_value is None else step_value


def request_headers(
    job: Job, endpoint: Endpoint, access_token: str | None = None
) -> dict[str, str]:
    """Return the call's headers: fixed ones, then the connector's, then the step's.

    ``access_token`` is the connector's OAuth token, sent as a Bearer token.
    """
    headers = {
        "Content-Type": "application/json; charset=utf-8",
        "Accept": "application/json",
        "User-Agent": USER_AGENT,
        "Idempotency-Key": job.job_id,
    }
    if job.correlation_id:
        headers["X-Correlation-Id"] = job.correlation_id

    connector = endpoint.connector
    if connector is not None:
        if access_token is not None:
            headers["Authorization"] = f"Bearer {access_token}"
        elif not connector.is_authenticated_manually:
            if connector.bearer_token:
                headers["Authorization"] = f"Bearer {connector.bearer_token}"
            elif connector.username is not None and connector.password is not None:
                pair = f"{connector.username}:{connector.password}".encode()
                headers["Authorization"] = "Basic " + base64.b64encode(pair).decode(
                    "ascii"
                )
        for header in connector.custom_headers:
            headers[header.key] = header.value

    headers.update(job.request_headers)
    return headers


def request_body(job: Job, endpoint: Endpoint) -> bytes:
    """Return the bytes POSTed: the order, or an envelope with the workflow step.

    The envelope's step leaves out RequestHeaders properties, whose values
    are secrets that belong in headers only.
    """
    connector = endpoint.connector
    if connector is None or connector.request_format == "Order":
        return jsontext.dumps(job.order).encode("utf-8")
    step = job.step.model_dump(by_alias=True, exclude_none=True)
    step["Properties"] = [
        item
        for item in step.get("Properties", [])
        if not is_request_header_group(item.get("KeyGroup"))
    ]
    envelope = {"Value": job.order, "WorkflowStep": step}
    return jsontext.dumps(envelope).encode("utf-8")


def response_update(body: Any, endpoint: Endpoint) -> Any:
    """Return the order update in a response: unwrapped from ``Value`` for envelopes."""
    connector = endpoint.connector
    if connector is None or connector.request_format == "Order":
        return body
    if isinstance(body, dict) and len(body) == 1:
        key = next(iter(body))
        if key.lower() == "value" and isinstance(body[key], dict | type(None)):
            return body[key]
    return body
