"""The worker's exceptions, split by what the caller should do.

::

    WorkerError
    ├── ConfigError            settings or a tenant file is invalid: fix the file
    ├── JobInvalid             the job cannot be understood: Error result, no retry
    ├── NoEndpoint             no connector for the step: Error result, workflow goes on
    └── WebhookError           the call failed (``retryable`` says whether to try again)
        ├── WebhookUnavailable     connection error, timeout, 408, 429, 500, 502-504
        │   └── WebhookTimeout     the connector's timeout ran out
        ├── WebhookRejected        any other non-2xx status
        │   └── WebhookRedirected  a 3xx; redirects are never followed
        ├── InvalidResponseBody    not JSON, not an object, too large, wrong field type
        └── BlockedAddress         the host resolves to an address that is not allowed

Messages never contain a secret: URLs are shown without query string or user
info, and header values are never shown.
"""

from __future__ import annotations


class WorkerError(Exception):
    """Base class of every error the worker raises on purpose."""


class ConfigError(WorkerError):
    """A worker setting or tenant settings file is invalid."""

    def __init__(self, message: str, *, path: str | None = None) -> None:
        super().__init__(message)
        self.path = path


class JobInvalid(WorkerError):
    """The job cannot be understood; retrying will not help."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class NoEndpoint(WorkerError):
    """No connector is configured or enabled for the step and order."""


class WebhookError(WorkerError):
    """A webhook call failed.

    Attributes:
        url: the URL without user info or query string.
        status: the HTTP status, or None when no response came.
        retry_after_s: the delay the server asked for with Retry-After.
    """

    retryable = False

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.url = url
        self.status = status
        self.retry_after_s = retry_after_s


class WebhookUnavailable(WebhookError):
    """A transient failure that the standard error policy retries."""

    retryable = True


class WebhookTimeout(WebhookUnavailable):
    """The connector's timeout ran out before the whole call finished."""


class WebhookRejected(WebhookError):
    """The webhook answered with a status that is final at once."""


class WebhookRedirected(WebhookRejected):
    """The webhook answered with a redirect, which is never followed."""


class InvalidResponseBody(WebhookError):
    """The webhook answered 2xx with a body the step cannot use."""


class BlockedAddress(WebhookError):
    """The host resolves to an address that outbound calls may not reach."""
