"""Worker settings, read once from ``WEBHOOK_WORKER_*`` environment variables."""

from __future__ import annotations

import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from worker.errors import ConfigError
from worker.netguard import AddressPolicy
from worker.urls import url_problem

ENV_PREFIX = "WEBHOOK_WORKER_"


class WorkerSettings(BaseSettings):
    """Every setting of the worker; see docs/configuration.md for the full table."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    broker_url: str = Field(
        "redis://127.0.0.1:6379/0",
        description="Redis URL of the Celery broker.",
    )
    redis_url: str | None = Field(
        None,
        description=(
            "Redis URL for results, markers and leases. "
            "Default: the same as BROKER_URL."
        ),
    )
    sentinel_master: str | None = Field(
        None,
        description=(
            "Name of the Redis master that the Sentinels monitor; required when "
            "BROKER_URL or REDIS_URL is a sentinel:// URL."
        ),
    )
    sentinel_password: SecretStr | None = Field(
        None,
        description=(
            "Password of the Sentinels themselves (requirepass in sentinel.conf). "
            "The password in a sentinel:// URL is the master's."
        ),
    )
    sentinel_tls: bool = Field(
        False,
        description=(
            "Connect to the Sentinels, and to the master they name, over TLS "
            "with the REDIS_CA_FILE, REDIS_CERT_FILE and REDIS_KEY_FILE settings."
        ),
    )
    redis_ca_file: Path | None = Field(
        None,
        description=(
            "CA certificates that verify the Redis server on rediss:// URLs (and "
            "Sentinel with SENTINEL_TLS). Default: the system's CA certificates."
        ),
    )
    redis_cert_file: Path | None = Field(
        None,
        description="Client certificate for Redis TLS; needs REDIS_KEY_FILE.",
    )
    redis_key_file: Path | None = Field(
        None,
        description="Private key of REDIS_CERT_FILE for Redis TLS.",
    )
    result_wait_replicas: int = Field(
        0,
        ge=0,
        description=(
            "Replicas that must acknowledge a published result (Redis WAIT) "
            "before the job's message is acknowledged; 0 does not wait."
        ),
    )
    result_wait_timeout_ms: int = Field(
        1000,
        gt=0,
        description=(
            "Longest wait for RESULT_WAIT_REPLICAS, in milliseconds; the worker "
            "logs a warning and goes on when fewer replicas acknowledged."
        ),
    )
    config_dir: Path = Field(
        Path("config/tenants"),
        description="Folder of tenant settings files, one <TenantId>.json each.",
    )
    queue: str = Field("webhook_steps", description="Celery queue the worker consumes.")
    result_stream: str = Field(
        "webhook_steps:results", description="Redis stream that receives results."
    )
    dead_letter_stream: str = Field(
        "webhook_steps:dead",
        description="Redis stream for messages without a usable JobId.",
    )
    key_prefix: str = Field(
        "webhook_steps",
        description="Prefix of the Redis keys for done markers, leases and counters.",
    )
    result_ttl_s: int = Field(
        7 * 24 * 3600,
        gt=0,
        description=(
            "Seconds a result and its done marker are kept; a redelivered job "
            "within this window publishes nothing new. Default: 7 days."
        ),
    )
    result_stream_maxlen: int = Field(
        1_000_000,
        gt=0,
        description="Approximate maximum entries of the result stream (XADD MAXLEN ~).",
    )
    allow_private_networks: bool = Field(
        False,
        description=(
            "Allow webhook calls to loopback, private and link-local addresses. "
            "Off in production; tests and the demo turn it on."
        ),
    )
    allowed_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Comma-separated CIDR networks that webhook calls may reach although "
            "they are private, for example 10.20.0.0/16,fd00:1::/64."
        ),
    )
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Comma-separated host names whose addresses webhook calls may reach "
            "although they are private, for example erp.internal."
        ),
    )
    proxy_url: str | None = Field(
        None,
        description=(
            "HTTP proxy for webhook calls. HTTP_PROXY and the like are never read."
        ),
    )
    ca_bundle: Path | None = Field(
        None,
        description="CA certificates file for HTTPS webhooks; default: certifi's.",
    )
    max_response_header_bytes: int = Field(
        64 * 1024,
        gt=0,
        description="Largest total size of a response's headers, in bytes.",
    )
    max_response_bytes: int = Field(
        1024 * 1024,
        gt=0,
        description="Largest webhook response body, in bytes after content decoding.",
    )
    max_deliveries: int = Field(
        3,
        ge=1,
        description=(
            "Deliveries of one attempt after which the job ends with an Error "
            "result without calling, so a job that kills its worker cannot loop."
        ),
    )
    pool: Literal["threads", "prefork", "solo"] = Field(
        "threads", description="Celery pool used by the 'worker' command."
    )
    concurrency: int = Field(
        16, ge=1, description="Jobs one worker runs at the same time."
    )
    visibility_timeout_s: int = Field(
        3600,
        gt=0,
        description=(
            "Seconds before Redis hands an unacknowledged job to another worker. "
            "Must exceed the worst case of one job."
        ),
    )
    max_retry_delay_s: float = Field(
        60.0,
        gt=0,
        le=60,
        description=(
            "Longest wait before a retry, in seconds, also when Retry-After asks "
            "for more (then the step fails at once). At most 60."
        ),
    )
    task_events: bool = Field(
        True,
        description=(
            "Send Celery task events (received, started, succeeded), which Flower "
            "and 'celery events' show. false saves about a tenth of the worker's "
            "CPU where nothing reads them."
        ),
    )
    eta_task_limit: int = Field(
        1000,
        ge=1,
        description=(
            "Jobs waiting on a countdown (RunAfterOrderIsSaved, retries) that one "
            "worker holds in memory; at the limit it fetches no more jobs until "
            "some are due."
        ),
    )
    max_job_bytes: int = Field(
        2 * 1024 * 1024,
        gt=0,
        description=(
            "Largest job accepted, in bytes of its JSON; a larger one gets an "
            "Error result and a dead-letter entry."
        ),
    )
    health_file: Path = Field(
        Path("/tmp/webhook-step-worker.health"),
        description=(
            "File the worker rewrites every few seconds while its broker "
            "connection works; the 'health' command reads it."
        ),
    )
    health_max_age_s: float = Field(
        30.0,
        gt=0,
        description="Age in seconds above which 'health' reports the worker unhealthy.",
    )
    http_pool_size: int = Field(
        32, ge=1, description="Keep-alive connections kept per connector."
    )
    metrics_port: int = Field(
        9808,
        ge=0,
        le=65535,
        description=(
            "TCP port of the Prometheus metrics endpoint (/metrics) that the "
            "worker's main process serves; 0 turns the endpoint off."
        ),
    )
    metrics_host: str = Field(
        "0.0.0.0",
        description=(
            "Address the metrics endpoint binds to, for example 127.0.0.1 to keep "
            "it on this host."
        ),
    )
    metrics_dir: Path | None = Field(
        None,
        description=(
            "Folder for the metric files that pool processes share "
            "(prometheus_client's multiprocess mode). The worker deletes the *.db "
            "files in it at start, so give each worker its own. Default: a new "
            "temporary folder per start."
        ),
    )
    log_format: Literal["auto", "json", "console"] = Field(
        "auto",
        description="json, console, or auto (console on a terminal, else json).",
    )
    log_level: str = Field("INFO", description="Level of the worker's logs.")

    @field_validator("allowed_networks", "allowed_hosts", mode="before")
    @classmethod
    def _split_commas(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("allowed_networks")
    @classmethod
    def _check_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(
                    f"{item!r} is not a network; write CIDR such as 10.0.0.0/8"
                ) from None
        return value

    @field_validator("broker_url", "redis_url")
    @classmethod
    def _check_redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        # The message never shows the value: a URL may hold a password.
        problem = url_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @model_validator(mode="after")
    def _check_redis_options(self) -> WorkerSettings:
        sentinel_urls = [
            name
            for name, url in (
                ("BROKER_URL", self.broker_url),
                ("REDIS_URL", self.redis_url),
            )
            if url is not None and url.lower().startswith("sentinel://")
        ]
        if self.sentinel_password is not None and not sentinel_urls:
            raise ValueError(
                f"{ENV_PREFIX}SENTINEL_PASSWORD is set, but neither "
                f"{ENV_PREFIX}BROKER_URL nor {ENV_PREFIX}REDIS_URL is a sentinel:// "
                "URL; unset it, or point a URL at the Sentinels"
            )
        if sentinel_urls and not self.sentinel_master:
            raise ValueError(
                f"{ENV_PREFIX}{sentinel_urls[0]} is a sentinel:// URL, so "
                f"{ENV_PREFIX}SENTINEL_MASTER must name the monitored master"
            )
        if (self.redis_cert_file is None) != (self.redis_key_file is None):
            raise ValueError(
                f"set both {ENV_PREFIX}REDIS_CERT_FILE and {ENV_PREFIX}REDIS_KEY_FILE "
                "for a Redis client certificate, or neither"
            )
        return self

    def address_policy(self) -> AddressPolicy:
        return AddressPolicy(
            allow_private_networks=self.allow_private_networks,
            allowed_networks=tuple(
                ipaddress.ip_network(item, strict=False)
                for item in self.allowed_networks
            ),
            allowed_hosts=frozenset(
                host.lower().rstrip(".") for host in self.allowed_hosts
            ),
        )

    @property
    def results_redis_url(self) -> str:
        return self.redis_url or self.broker_url


def load_settings() -> WorkerSettings:
    """Read the settings from the environment, raising ConfigError on bad values."""
    try:
        return WorkerSettings()
    except ValidationError as error:
        problems = "; ".join(_describe_problem(item) for item in error.errors())
        # Not chained, because the validation error contains every input value,
        # URLs with their passwords included, and a traceback would print it.
        raise ConfigError(f"invalid worker settings: {problems}") from None


def _describe_problem(item: Any) -> str:
    if not item["loc"]:
        # A check across settings: its input is every setting, URLs with their
        # passwords included, so only the message names what to fix.
        return str(item["msg"]).removeprefix("Value error, ")
    name = "_".join(str(part) for part in item["loc"]).upper()
    message = str(item["msg"]).removeprefix("Value error, ")
    if name in _URL_SETTINGS:
        # A Redis URL can hold a password, so its value is never repeated.
        return f"{ENV_PREFIX}{name}: {message}"
    return f"{ENV_PREFIX}{name}: {message} (got {item.get('input')!r})"


_URL_SETTINGS = frozenset({"BROKER_URL", "REDIS_URL"})


@lru_cache(maxsize=1)
def get_settings() -> WorkerSettings:
    """Return the process-wide settings, read on first use."""
    return load_settings()
