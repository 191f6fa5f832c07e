"""One delivery of a job: validate, wait, select, call, update, publish.

``StepRunner.run`` is a plain function of the message and its collaborators.
It returns either a finished result or a request to run again later (the
one-second countdown, a retry, a held lease); the Celery task turns the
latter into a countdown. Nothing here sleeps, except that a connector with
OAuth may wait up to ``oauth.MAX_LOCK_WAIT_S`` for another worker's token.
"""

from __future__ import annotations

import contextvars
import hashlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import redis
import structlog

from worker import jsontext, metrics, secrets
from worker.endpoint import (
    Endpoint,
    request_body,
    request_headers,
    resolve_endpoint,
    response_update,
)
from worker.errors import (
    ConfigError,
    InvalidResponseBody,
    JobInvalid,
    NoEndpoint,
    WebhookError,
    WebhookRejected,
    WebhookTimeout,
)
from worker.filters import skip_reason
from worker.job import (
    Job,
    parse_job,
    scrub_request_headers,
    summarize,
    usable_job_id,
)
from worker.oauth import (
    MemoryTokenCache,
    RedisTokenCache,
    TokenCache,
    TokenProvider,
    TokenRequest,
)
from worker.protection import (
    Admission,
    CircuitOpen,
    ConnectorGuard,
    Throttled,
    Transition,
    is_guarded,
)
from worker.results import (
    ActionStatus,
    JobIdentity,
    StepResult,
    export_event,
    utc_timestamp,
)
from worker.signing import secret_key, signature_headers
from worker.store import ResultStore, StoredResult
from worker.tenants import TenantStore
from worker.updates import (
    InvalidUpdate,
    add_step_error,
    apply_response,
    changed_properties,
    remove_step_errors,
)
from worker.webhook import WebhookClient, WebhookResponse, safe_url

log = structlog.get_logger(__name__)

SAVE_DELAY_S = 1.0
RETRY_DELAYS_S = (1.0, 5.0, 15.0)
MAX_RETRY_DELAY_S = 60.0
MAX_ATTEMPTS = len(RETRY_DELAYS_S) + 1
LEASE_MARGIN_S = 5.0
# Maximum wait before a copy of a job whose lease is held checks again.
LEASE_RECHECK_S = 2.0
# Lease taken while publishing the result of a discarded job; the publish
# takes milliseconds and releases it.
DISCARD_LEASE_MS = 10_000
# Token of the call lease this thread holds; publishing releases it.
_lease_in_use: contextvars.ContextVar[str] = contextvars.ContextVar(
    "lease_in_use", default=""
)
# The JSON of the job this thread runs, kept with its result for 'replay'.
_job_text: contextvars.ContextVar[str] = contextvars.ContextVar("job_text", default="")
# Internal keyword arguments that only the worker's own messages carry.
PROGRESS_KEY = "_progress"


@dataclass(frozen=True)
class Progress:
    """Record of earlier deliveries of this job, carried in the worker's messages."""

    attempts: int = 0
    delayed: bool = False
    first_attempt_ms: int | None = None
    last_status: int | None = None
    notes: tuple[str, ...] = ()
    # Messages this job was published as before: each reschedule is a new one.
    reschedules: int = 0
    # Attempts that an open circuit breaker failed without a request; they
    # count towards the retry budget but not towards the result's Attempts.
    stopped: int = 0

    def message_name(self) -> str:
        """Return the name that counts the deliveries of this task message."""
        return f"{self.attempts}:{self.reschedules}"

    def to_message(self) -> dict[str, Any]:
        return {
            "reschedules": self.reschedules,
            "stopped": self.stopped,
            "attempts": self.attempts,
            "delayed": self.delayed,
            "first_attempt_ms": self.first_attempt_ms,
            "last_status": self.last_status,
            "notes": list(self.notes),
        }

    @classmethod
    def from_message(cls, value: Any) -> Progress:
        if not isinstance(value, Mapping):
            return cls()
        try:
            return cls._parse(value)
        except (TypeError, ValueError, OverflowError):
            # Only the worker writes this argument; a malformed one starts over.
            log.warning("job.progress_invalid", detail="ignored the _progress argument")
            return cls()

    @classmethod
    def _parse(cls, value: Mapping[str, Any]) -> Progress:
        notes = value.get("notes")
        first = value.get("first_attempt_ms")
        status = value.get("last_status")
        return cls(
            reschedules=int(value.get("reschedules") or 0),
            stopped=int(value.get("stopped") or 0),
            attempts=int(value.get("attempts") or 0),
            delayed=bool(value.get("delayed")),
            first_attempt_ms=int(first) if first is not None else None,
            last_status=int(status) if status is not None else None,
            notes=tuple(str(note) for note in notes) if isinstance(notes, list) else (),
        )


@dataclass(frozen=True)
class Finished:
    """The job's result; ``published`` is False if an earlier delivery published it."""

    result_json: str
    published: bool


@dataclass(frozen=True)
class Reschedule:
    """Run the job again after ``countdown_s``, carrying ``progress``."""

    countdown_s: float
    progress: Progress
    reason: str


@dataclass(frozen=True)
class DeadLettered:
    """The message has no usable JobId, so it went to the dead-letter stream."""

    reason: str


Outcome = Finished | Reschedule | DeadLettered


def _now_ms() -> int:
    return int(time.time() * 1000)


def redact(text: str, extra_secrets: list[str] | tuple[str, ...] = ()) -> str:
    """Replace every known secret value in ``text`` with ``[REDACTED]``."""
    for value in (*secrets.known_secrets(), *extra_secrets):
        if value and value in text:
            text = text.replace(value, "[REDACTED]")
    return text


@dataclass
class StepRunner:
    """Runs deliveries of jobs. ``store`` is None for run-step, which uses no Redis."""

    tenants: TenantStore
    client: WebhookClient
    store: ResultStore | None
    max_deliveries: int = 3
    allow_retries: bool = True
    max_job_bytes: int = 2 * 1024 * 1024
    max_retry_delay_s: float = MAX_RETRY_DELAY_S
    # Where OAuth tokens are cached; by default Redis through ``store``, and
    # this process's memory without a store.
    token_cache: TokenCache | None = None
    tokens: TokenProvider = field(init=False, repr=False)
    # Circuit breakers and connector limits; None without Redis (run-step).
    guard: ConnectorGuard | None = field(init=False, repr=False, default=None)

    def __post_init__(self) -> None:
        cache = self.token_cache
        if cache is None and self.store is not None:
            cache = RedisTokenCache(self.store.client, self.store.key_prefix)
        self.tokens = TokenProvider(self.client, cache or MemoryTokenCache())
        if self.store is not None:
            self.guard = ConnectorGuard(self.store.client, self.store.key_prefix)

    def run(
        self, args: tuple[Any, ...] | list[Any], kwargs: Mapping[str, Any]
    ) -> Outcome:
        """Process one delivery of a task message: ``args`` must be ``(job,)``."""
        started_ms = _now_ms()
        progress = Progress.from_message(kwargs.get(PROGRESS_KEY))
        raw = args[0] if len(args) >= 1 else None
        job_id = usable_job_id(raw)
        if job_id is None:
            return self._dead_letter(args, kwargs)

        structlog.contextvars.bind_contextvars(job_id=job_id)
        identity = JobIdentity.salvage(raw, job_id)
        structlog.contextvars.bind_contextvars(
            tenant_id=identity.tenant_id, order_id=identity.order_id
        )
        job_text = jsontext.dumps(raw, sort_keys=True)
        # Stored next to the result, so 'replay' can send the job again.
        _job_text.set(job_text)
        job_fingerprint = hashlib.sha256(job_text.encode("utf-8")).hexdigest()

        # One round trip: the stored result, or else this delivery's count.
        deliveries = 0
        if self.store is not None:
            begun = self.store.begin_delivery(job_id, progress.message_name())
            if isinstance(begun, StoredResult):
                return self._stored_result(begun, job_fingerprint)
            deliveries = begun

        problem = _argument_problem(args, kwargs)
        if problem is not None:
            self._reject(job_id, "bad_arguments", problem, args, kwargs)
            return self._finish_invalid(identity, job_fingerprint, problem, started_ms)

        job_bytes = len(job_text.encode("utf-8"))
        if job_bytes > self.max_job_bytes:
            reason = (
                f"the job is {job_bytes} bytes of JSON, more than the limit of "
                f"{self.max_job_bytes} (WEBHOOK_WORKER_MAX_JOB_BYTES); the order is "
                "left out of this result"
            )
            self._reject(job_id, "too_large", reason, (summarize(raw),), {})
            return self._finish_invalid(
                replace(identity, order=None), job_fingerprint, reason, started_ms
            )

        if deliveries > self.max_deliveries:
            reason = (
                f"the job was delivered {deliveries - 1} times without finishing, "
                "so it may crash the worker; it ends here without another call"
            )
            log.error("job.too_many_deliveries", deliveries=deliveries - 1)
            return self._finish_invalid(identity, job_fingerprint, reason, started_ms)

        try:
            job = parse_job(raw)
        except JobInvalid as error:
            return self._finish_invalid(
                identity, job_fingerprint, str(error), started_ms
            )

        try:
            outcome = self._run_job(
                job, identity, job_fingerprint, progress, started_ms
            )
        except redis.RedisError:
            raise
        except Exception as error:
            log.exception("job.unexpected_error")
            reason = redact(
                f"unexpected error in the worker: {type(error).__name__}: {error}",
                job.secret_values(),
            )
            return self._finish_invalid(identity, job_fingerprint, reason, started_ms)
        if isinstance(outcome, Reschedule):
            # The next message is a new one, with its own delivery count.
            next_progress = replace(
                outcome.progress, reschedules=outcome.progress.reschedules + 1
            )
            return replace(outcome, progress=next_progress)
        return outcome

    def _run_job(
        self,
        job: Job,
        identity: JobIdentity,
        job_fingerprint: str,
        progress: Progress,
        started_ms: int,
    ) -> Outcome:
        skipped = skip_reason(job.step, job.order)
        if skipped is not None:
            log.info("job.skipped", reason=skipped)
            result = StepResult(
                identity=identity,
                action_status=ActionStatus.SUCCESS,
                cancel_workflow=False,
                order=job.order,
                messages=[f"not sent: {skipped}"],
                duration_ms=_now_ms() - started_ms,
                completed_at=utc_timestamp(),
            )
            return self._publish(job.job_id, result, job_fingerprint)

        # The task's strategy (worker.save_delay) normally sets this delay when
        # the message arrives. This covers messages it left alone, for example
        # one whose producer set its own ETA.
        if job.needs_delay and not progress.delayed:
            return Reschedule(
                SAVE_DELAY_S,
                replace(progress, delayed=True),
                "RunAfterOrderIsSaved: waiting for the order to be saved",
            )

        try:
            endpoint = resolve_endpoint(job, self.tenants)
        except (NoEndpoint, ConfigError) as error:
            log.warning("job.no_endpoint", error=str(error))
            result = StepResult(
                identity=identity,
                action_status=ActionStatus.ERROR,
                cancel_workflow=False,
                order=job.order,
                error_reason=str(error),
                messages=list(progress.notes),
                duration_ms=_now_ms() - started_ms,
            )
            return self._publish(
                job.job_id, result, job_fingerprint, job.secret_values()
            )

        connector = endpoint.connector
        structlog.contextvars.bind_contextvars(
            connector_id=connector.label
            if connector
            else f"inline:{endpoint.reference_id}"
        )
        lease_token = uuid.uuid4().hex
        if self.store is not None:
            lease_ttl_ms = int((endpoint.timeout_s + LEASE_MARGIN_S) * 1000)
            held_ms = self.store.acquire_lease(job.job_id, lease_token, lease_ttl_ms)
            if isinstance(held_ms, StoredResult):
                # Another copy published between the first look and the lease.
                return self._stored_result(held_ms, job_fingerprint)
            if held_ms:
                log.info("job.lease_held", retry_in_ms=held_ms)
                # The holder usually finishes long before its lease expires.
                return Reschedule(
                    min(held_ms / 1000, LEASE_RECHECK_S) + 0.1,
                    progress,
                    "another delivery is calling the webhook",
                )

        attempt = progress.attempts + 1
        first_attempt_ms = progress.first_attempt_ms or _now_ms()
        # The lease is held until the result is published or the retry decided,
        # so a copy of the job that arrives meanwhile finds one or the other.
        # Publishing releases it in the same Redis step.
        lease_scope = _lease_in_use.set(lease_token if self.store else "")
        try:
            admission = self._admit(job, endpoint)
            if isinstance(admission, Throttled):
                # Not an attempt: the reschedule is a new message with its own
                # delivery count, so throttling never ends a job.
                metrics.record_throttled(endpoint.connector, admission.limit)
                return Reschedule(admission.countdown_s, progress, admission.reason)
            # The number of this HTTP call, for the webhook.call log line.
            call_number = attempt - progress.stopped
            outcome = self._guarded_attempt(job, endpoint, call_number, admission)
            progress = replace(
                progress, attempts=attempt, first_attempt_ms=first_attempt_ms
            )
            if isinstance(outcome, CircuitOpen):
                progress = replace(progress, stopped=progress.stopped + 1)
            if isinstance(outcome, WebhookError):
                return self._after_failure(
                    job, identity, job_fingerprint, endpoint, progress, outcome
                )
            return self._after_success(
                job, identity, job_fingerprint, endpoint, progress, outcome
            )
        finally:
            still_held = _lease_in_use.get()
            _lease_in_use.reset(lease_scope)
            if self.store is not None and still_held:
                self.store.release_lease(job.job_id, lease_token)

    def _admit(
        self, job: Job, endpoint: Endpoint
    ) -> Admission | Throttled | CircuitOpen | None:
        """Ask the connector's breaker and limits for one call; None: none apply."""
        connector = endpoint.connector
        if self.guard is None or connector is None or not is_guarded(connector):
            return None
        return self.guard.admit(
            job.tenant_id, connector, endpoint.timeout_s, self.max_retry_delay_s
        )

    def _guarded_attempt(
        self,
        job: Job,
        endpoint: Endpoint,
        attempt: int,
        admission: Admission | CircuitOpen | None,
    ) -> Any:
        """Run ``_attempt`` unless the breaker is open; report the outcome to it."""
        if isinstance(admission, CircuitOpen):
            log.info("circuit.call_stopped", reason=str(admission))
            metrics.record_circuit_open(endpoint.connector)
            return admission
        attempt_started = time.monotonic()
        outcome: Any = None
        try:
            outcome = self._attempt(job, endpoint, attempt)
        finally:
            if admission is not None and self.guard is not None:
                error = outcome if isinstance(outcome, WebhookError) else None
                transition = self.guard.finish(
                    admission, error, called=outcome is not None
                )
                if transition is not None:
                    _log_transition(transition, admission.connector.label)
        metrics.record_attempt(
            endpoint.connector, outcome, time.monotonic() - attempt_started
        )
        return outcome

    def _attempt(self, job: Job, endpoint: Endpoint, attempt: int) -> Any:
        """Call the webhook once; return the response or the WebhookError it raised.

        With OAuth, the connector's TimeOut bounds the token requests and calls
        of the attempt together, and a 401 answer gets one more call with a
        new token.
        """
        body = request_body(job, endpoint)
        token_request = self._token_request(job, endpoint)
        if token_request is None:
            response = self._post(
                job, endpoint, attempt, body, None, endpoint.timeout_s
            )
        else:
            response = self._post_with_token(
                job, endpoint, attempt, body, token_request
            )
        if isinstance(response, WebhookError):
            return response
        try:
            return response, apply_response(
                job.order,
                response_update(response.body, endpoint),
                keep_list_items=endpoint.keep_existing_list_items,
                keep_custom_properties=endpoint.keep_existing_custom_properties,
            )
        except InvalidUpdate as error:
            return InvalidResponseBody(
                f"the response is not a valid order update: {error}",
                url=endpoint.url,
                status=response.status,
            )

    def _post(
        self,
        job: Job,
        endpoint: Endpoint,
        attempt: int,
        body: bytes,
        access_token: str | None,
        timeout_s: float,
    ) -> WebhookResponse | WebhookError:
        """POST ``body`` once; return the 2xx response or the WebhookError raised."""
        headers = request_headers(job, endpoint, access_token)
        connector = endpoint.connector
        if connector is not None and connector.signing_secret:
            key = secret_key(connector.signing_secret)
            headers.update(signature_headers(key, job.job_id, body))
        try:
            return self.client.post(
                session_key=endpoint.session_key,
                url=endpoint.url,
                headers=headers,
                body=body,
                timeout_s=timeout_s,
                attempt=attempt,
                tls=endpoint.tls,
            )
        except WebhookError as error:
            return error

    def _token_request(self, job: Job, endpoint: Endpoint) -> TokenRequest | None:
        """Return what the attempt's OAuth token needs; None without OAuth.

        A step whose RequestHeaders set Authorization gets no token, because
        its header would replace the token's.
        """
        connector = endpoint.connector
        if connector is None or connector.oauth is None:
            return None
        if any(name.lower() == "authorization" for name in job.request_headers):
            return None
        return TokenRequest(
            tenant_id=job.tenant_id,
            connector=connector,
            session_key=endpoint.session_key,
            tls=endpoint.tls,
            deadline_at=time.monotonic() + endpoint.timeout_s,
        )

    def _post_with_token(
        self,
        job: Job,
        endpoint: Endpoint,
        attempt: int,
        body: bytes,
        token_request: TokenRequest,
    ) -> WebhookResponse | WebhookError:
        """POST with the connector's OAuth token, and after a 401 with a new one."""
        connector = token_request.connector
        response: WebhookResponse | WebhookError | None = None
        for _ in range(2):
            try:
                token = self.tokens.token(token_request)
            except WebhookError as error:
                return error
            timeout_s = token_request.remaining_s()
            if timeout_s <= 0:
                return WebhookTimeout(
                    f"webhook call to {safe_url(endpoint.url)} was not sent: the "
                    "connector's TimeOut ran out during the OAuth token request",
                    url=safe_url(endpoint.url),
                )
            response = self._post(job, endpoint, attempt, body, token, timeout_s)
            rejected = isinstance(response, WebhookRejected) and response.status == 401
            if not rejected:
                return response
            log.info(
                "oauth.token_rejected",
                detail="the webhook answered 401; the cached token is dropped",
            )
            self.tokens.discard(job.tenant_id, connector, token)
        assert response is not None
        return response

    def _after_success(
        self,
        job: Job,
        identity: JobIdentity,
        job_fingerprint: str,
        endpoint: Endpoint,
        progress: Progress,
        outcome: Any,
    ) -> Outcome:
        response, update = outcome
        order = update.order
        # Success removes the error entries that earlier failures of this step added.
        remove_step_errors(order, endpoint.reference_id)
        timestamp = utc_timestamp()
        target = (
            endpoint.connector.label if endpoint.connector else endpoint.reference_id
        )
        result = StepResult(
            identity=identity,
            action_status=ActionStatus.SUCCESS,
            cancel_workflow=False,
            order=order,
            messages=[*progress.notes, *update.messages],
            http_status=response.status,
            attempts=progress.attempts - progress.stopped,
            duration_ms=_now_ms() - (progress.first_attempt_ms or _now_ms()),
            changed_properties=changed_properties(job.order, order),
            events=[export_event(f"Order sent to {target}", timestamp)],
            completed_at=timestamp,
            **_connector_fields(endpoint),
        )
        return self._publish(job.job_id, result, job_fingerprint, job.secret_values())

    def _after_failure(
        self,
        job: Job,
        identity: JobIdentity,
        job_fingerprint: str,
        endpoint: Endpoint,
        progress: Progress,
        error: WebhookError,
    ) -> Outcome:
        progress = replace(progress, last_status=error.status)
        reason = redact(str(error), job.secret_values())
        if (
            error.retryable
            and endpoint.retries_enabled
            and self.allow_retries
            and progress.attempts < MAX_ATTEMPTS
        ):
            cap_s = self.max_retry_delay_s
            delay_s = min(RETRY_DELAYS_S[progress.attempts - 1], cap_s)
            if error.retry_after_s is not None:
                delay_s = max(delay_s, error.retry_after_s)
            if delay_s <= cap_s:
                note = (
                    f"attempt {progress.attempts} failed: {reason}; "
                    f"retried after {delay_s:g} s"
                )
                log.info(
                    "job.retry",
                    attempt=progress.attempts,
                    delay_s=delay_s,
                    reason=reason,
                )
                metrics.record_retry(endpoint.connector)
                return Reschedule(
                    delay_s, replace(progress, notes=(*progress.notes, note)), reason
                )
            reason += (
                f"; Retry-After asks for {error.retry_after_s:g} s, more than the "
                f"{cap_s:g} s maximum, so the step fails now"
            )

        stop = job.step.stop_on_error
        order = dict(job.order)
        severity = "Error" if stop else "Warning"
        add_step_error(order, reason, severity, endpoint.reference_id, utc_timestamp())
        result = StepResult(
            identity=identity,
            action_status=ActionStatus.ERROR if stop else ActionStatus.WARNING,
            cancel_workflow=stop,
            order=order,
            trigger_new_status=job.error_status if stop else None,
            error_reason=reason,
            messages=list(progress.notes),
            http_status=error.status,
            attempts=progress.attempts - progress.stopped,
            duration_ms=_now_ms() - (progress.first_attempt_ms or _now_ms()),
            changed_properties=changed_properties(job.order, order),
            **_connector_fields(endpoint),
        )
        return self._publish(job.job_id, result, job_fingerprint, job.secret_values())

    def publish_rejection(
        self, raw_job: Any, reason: str, *, log_event: str = "job.invalid"
    ) -> Finished | None:
        """Publish an Error result, without the order, for a job Celery rejected.

        Used for messages that never reach ``run``, such as a body that is not
        valid JSON but still shows a JobId. Returns None without a JobId.
        """
        job_id = usable_job_id(raw_job)
        if job_id is None:
            return None
        identity = replace(JobIdentity.salvage(raw_job, job_id), order=None)
        try:
            text = jsontext.dumps(raw_job, sort_keys=True)
        except (TypeError, ValueError):
            text = repr(raw_job)
        job_fingerprint = hashlib.sha256(text.encode("utf-8")).hexdigest()
        existing = self._existing_result(job_id, job_fingerprint)
        if existing is not None:
            return existing
        return self._finish_invalid(
            identity, job_fingerprint, reason, _now_ms(), log_event=log_event
        )

    def publish_discarded(self, raw_job: Any, reason: str) -> Finished | None:
        """Publish an Error result for a job whose message Celery discarded.

        Another delivery of the same job may be calling the webhook right now,
        for example a copy that kombu requeued after a lost connection. That
        copy holds the call lease and its own result must stand, so nothing is
        published then and None is returned. None is also returned for a job
        without a usable JobId.
        """
        job_id = usable_job_id(raw_job)
        if job_id is None or self.store is None:
            return self.publish_rejection(raw_job, reason, log_event="job.discarded")
        token = uuid.uuid4().hex
        lease_state = self.store.acquire_lease(job_id, token, DISCARD_LEASE_MS)
        if isinstance(lease_state, StoredResult):
            log.info(
                "job.duplicate", detail="result exists; nothing is called or published"
            )
            return Finished(lease_state.result_json, published=False)
        if lease_state:
            log.info(
                "job.discard_skipped",
                reason=reason,
                detail="another delivery of this job is calling the webhook; "
                "its result stands",
            )
            return None
        lease_scope = _lease_in_use.set(token)
        try:
            return self.publish_rejection(raw_job, reason, log_event="job.discarded")
        finally:
            still_held = _lease_in_use.get()
            _lease_in_use.reset(lease_scope)
            if still_held:
                self.store.release_lease(job_id, token)

    def _existing_result(self, job_id: str, job_fingerprint: str) -> Finished | None:
        if self.store is None:
            return None
        stored = self.store.find_result(job_id)
        if stored is None:
            return None
        return self._stored_result(stored, job_fingerprint)

    def _stored_result(self, stored: StoredResult, job_fingerprint: str) -> Finished:
        if stored.fingerprint != job_fingerprint:
            log.warning(
                "job.conflict",
                detail="a job with this JobId but other content already has a result; "
                "returning that result and calling nothing",
            )
        else:
            log.info(
                "job.duplicate", detail="result exists; nothing is called or published"
            )
        return Finished(stored.result_json, published=False)

    def _finish_invalid(
        self,
        identity: JobIdentity,
        job_fingerprint: str,
        reason: str,
        started_ms: int,
        *,
        log_event: str = "job.invalid",
    ) -> Finished:
        log.warning(log_event, error=reason)
        result = StepResult(
            identity=identity,
            action_status=ActionStatus.ERROR,
            cancel_workflow=True,
            order=identity.order,
            error_reason=reason,
            duration_ms=_now_ms() - started_ms,
        )
        return self._publish(identity.job_id, result, job_fingerprint)

    def _publish(
        self,
        job_id: str,
        result: StepResult,
        job_fingerprint: str,
        job_secrets: list[str] | tuple[str, ...] = (),
    ) -> Finished:
        # A webhook may echo a credential into the order it returns; the result
        # must not carry it. NOTE: a secret that JSON escapes (quotes,
        # backslashes) is not found in the encoded text.
        result_json = redact(result.to_json(), job_secrets)
        published = True
        if self.store is not None:
            lease_token = _lease_in_use.get()
            published, result_json = self.store.publish(
                job_id, result_json, job_fingerprint, lease_token, _job_text.get()
            )
            if lease_token:
                _lease_in_use.set("")
        if published:
            metrics.record_result(str(result.action_status))
        log.info(
            "job.finished",
            action_status=str(result.action_status),
            cancel_workflow=result.cancel_workflow,
            attempts=result.attempts,
            http_status=result.http_status,
            duration_ms=result.duration_ms,
            changed=result.changed_properties,
            published=published,
        )
        return Finished(result_json, published)

    def _dead_letter(self, args: Any, kwargs: Mapping[str, Any]) -> DeadLettered:
        reason = (
            "the message has no usable JobId (a non-empty string of at most 200 "
            "characters, without control characters), so no result can be published"
        )
        self._reject("", "no_job_id", reason, args, kwargs)
        return DeadLettered(reason)

    def _reject(
        self,
        job_id: str,
        kind: str,
        reason: str,
        args: Any,
        kwargs: Mapping[str, Any],
    ) -> None:
        """Log, count and dead-letter a message that cannot run as a job."""
        log.error("job.rejected", kind=kind, reason=reason)
        if self.store is None:
            return
        payload = redact(
            jsontext.dumps(
                {"args": scrub_request_headers(list(args)), "kwargs": dict(kwargs)}
            )
        )
        self.store.dead_letter(reason, payload, kind=kind, job_id=job_id)


def _argument_problem(args: Any, kwargs: Mapping[str, Any]) -> str | None:
    extra = [key for key in kwargs if key != PROGRESS_KEY]
    if len(args) != 1 or extra:
        return (
            f"the task takes exactly one positional argument, the job; got "
            f"{len(args)} positional and keyword arguments {sorted(extra)}"
        )
    return None


def _log_transition(transition: Transition, label: str) -> None:
    if transition.event == "circuit.closed":
        log.info(transition.event, connector=label, detail="trial calls succeeded")
        return
    log.warning(
        transition.event,
        connector=label,
        failed=transition.failed,
        calls=transition.calls,
        detail="calls fail without a request until the cool-down ends",
    )


def _connector_fields(endpoint: Endpoint) -> dict[str, Any]:
    connector = endpoint.connector
    return {
        "connector_name": connector.name if connector else None,
        "connector_id": connector.connector_id if connector else None,
    }
