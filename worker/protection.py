"""Per-connector protection shared by all workers through Redis.

Three limits guard a connector's receiver and the worker pool:

- a circuit breaker (``CircuitBreaker``) that stops calls for a cool-down
  once too many recent calls failed, then lets a few trial calls through;
- ``MaxRequestsPerSecond``, a GCRA token bucket (generic cell rate algorithm);
- ``MaxConcurrentRequests``, a sorted-set semaphore whose holders expire.

Lua scripts make each decision atomic across workers, and they read Redis's
clock (``TIME``), so workers on hosts with skewed clocks agree. A job that a
limit stops is rescheduled with a countdown; no worker thread waits.

Keys, under ``<prefix>:`` and per tenant and connector label:
``breaker:<tenant>:<label>`` (hash: state, open_until, trial counts),
``breaker-window:<tenant>:<label>`` (hash of per-bucket call and failure
counts), ``rate:<tenant>:<label>`` (the bucket's theoretical arrival time in
ms) and ``inflight:<tenant>:<label>`` (sorted set: holder token -> expiry ms).
"""

from __future__ import annotations

import math
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis

from worker.errors import BlockedAddress, WebhookError, WebhookUnavailable
from worker.tenants import CircuitBreakerSettings, ConnectorSettings
from worker.webhook import safe_url

# A concurrency holder expires this long after its call's timeout. A holder
# whose worker died frees its slot at expiry.
HOLDER_MARGIN_S = 5.0
# Smallest countdown of a job that a limit stopped.
MIN_COUNTDOWN_S = 0.05
# A job stopped by MaxConcurrentRequests looks again after a random countdown
# in this range: slots free up when calls end, which no clock predicts.
CONCURRENCY_RECHECK_S = (0.05, 0.3)
# Largest random spread added to a rate-limited job's countdown, so jobs that
# wait for the same token do not all come back at the same moment.
MAX_RATE_JITTER_S = 1.0
# The breaker counts calls in buckets of Window / this many (at least 1 s), so
# one decision sums at most about this many buckets.
WINDOW_BUCKETS = 60

# Shared by both scripts: Redis's clock in milliseconds, with a fraction.
_NOW = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + tonumber(clock[2]) / 1000
"""

# Decide whether a call may go. KEYS: breaker state, rate bucket, in-flight
# set. ARGV: [1] breaker on (1/0), [2] trial calls, [3] trial timeout ms,
# [4] rate interval ms (0 = no rate limit), [5] burst, [6] concurrency limit
# (0 = none), [7] holder token, [8] holder ttl ms.
# Returns {0, trial} to call, where trial is 1 for a half-open trial call;
# {1, wait ms, failed, calls} while open; {2, wait ms, trials} while half-open
# with every trial call started; {3, wait ms} over the rate; {4} at the
# concurrency limit. Nothing is written for a call that may not go, except the
# open -> half-open change, which applies either way. A breaker state expires
# a day (86400000 ms) after its last change, and an expired state is closed.
_ADMIT_SCRIPT = (
    _NOW
    + """
local trial = 0
if ARGV[1] == '1' then
  local state = redis.call('HGET', KEYS[1], 'state')
  if state == 'open' then
    local fields = redis.call('HMGET', KEYS[1], 'open_until', 'failed', 'calls')
    local open_until = tonumber(fields[1]) or 0
    if now < open_until then
      return {1, math.ceil(open_until - now), tonumber(fields[2]) or 0,
              tonumber(fields[3]) or 0}
    end
    redis.call('HSET', KEYS[1], 'state', 'half_open', 'trials', 0,
               'trial_ok', 0, 'trial_until', now + tonumber(ARGV[3]))
    redis.call('PEXPIRE', KEYS[1], 86400000)
    state = 'half_open'
  end
  if state == 'half_open' then
    local fields = redis.call('HMGET', KEYS[1], 'trials', 'trial_until')
    local trials = tonumber(fields[1]) or 0
    local trial_until = tonumber(fields[2]) or 0
    if now >= trial_until then
      -- The trial calls never reported, for example because their worker
      -- died: start the trials over.
      trials = 0
      redis.call('HSET', KEYS[1], 'trials', 0, 'trial_ok', 0)
    end
    if trials >= tonumber(ARGV[2]) then
      return {2, math.ceil(trial_until - now), trials}
    end
    trial = 1
  end
end

if tonumber(ARGV[6]) > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[6]) then
    return {4}
  end
end

local interval = tonumber(ARGV[4])
local new_tat = 0
if interval > 0 then
  local burst = tonumber(ARGV[5])
  local tat = tonumber(redis.call('GET', KEYS[2])) or now
  if tat < now then
    tat = now
  end
  new_tat = tat + interval
  local excess = new_tat - now - burst * interval
  if excess > 0 then
    return {3, math.ceil(excess)}
  end
end

if interval > 0 then
  redis.call('SET', KEYS[2], tostring(new_tat), 'PX',
             math.ceil(new_tat - now) + 1000)
end
if tonumber(ARGV[6]) > 0 then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[8]), ARGV[7])
  redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[8]) + 1000)
end
if trial == 1 then
  redis.call('HINCRBY', KEYS[1], 'trials', 1)
  redis.call('HSET', KEYS[1], 'trial_until', now + tonumber(ARGV[3]))
end
return {0, trial}
"""
)

# Record a call's outcome and free its concurrency slot. KEYS: breaker state,
# breaker window, in-flight set. ARGV: [1] holder token ('' = none),
# [2] outcome ('' = not recorded, 'ok', 'failed'), [3] trial (1/0),
# [4] window ms, [5] bucket ms, [6] failure ratio, [7] minimum calls,
# [8] cool-down ms, [9] trial calls.
# Returns {0} with no change, {1, failed, calls} when the breaker opened,
# {2} when a trial call failed and it opened again, {3} when it closed.
_FINISH_SCRIPT = (
    _NOW
    + """
if ARGV[1] ~= '' then
  redis.call('ZREM', KEYS[3], ARGV[1])
end
if ARGV[2] == '' then
  return {0}
end
local failed = ARGV[2] == 'failed'
local cool_down = tonumber(ARGV[8])
local state = redis.call('HGET', KEYS[1], 'state')

if state == 'half_open' then
  if ARGV[3] ~= '1' then
    return {0}
  end
  if failed then
    local trial_ok = tonumber(redis.call('HGET', KEYS[1], 'trial_ok')) or 0
    redis.call('DEL', KEYS[1])
    redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', now + cool_down,
               'failed', 1, 'calls', trial_ok + 1)
    redis.call('PEXPIRE', KEYS[1], 86400000)
    return {2}
  end
  local succeeded = redis.call('HINCRBY', KEYS[1], 'trial_ok', 1)
  if succeeded >= tonumber(ARGV[9]) then
    redis.call('DEL', KEYS[1], KEYS[2])
    return {3}
  end
  return {0}
end
if state == 'open' then
  -- A call admitted before the breaker opened; the cool-down stands.
  return {0}
end

local window = tonumber(ARGV[4])
local bucket_ms = tonumber(ARGV[5])
local bucket = math.floor(now / bucket_ms)
redis.call('HINCRBY', KEYS[2], 'c' .. bucket, 1)
if failed then
  redis.call('HINCRBY', KEYS[2], 'f' .. bucket, 1)
end
redis.call('PEXPIRE', KEYS[2], window + bucket_ms)

-- Sum the buckets that overlap the window and drop the older ones.
local first = math.floor((now - window) / bucket_ms) + 1
local calls = 0
local failures = 0
local stale = {}
local fields = redis.call('HGETALL', KEYS[2])
for index = 1, #fields, 2 do
  local name = fields[index]
  local count = tonumber(fields[index + 1])
  if tonumber(string.sub(name, 2)) < first then
    table.insert(stale, name)
  elseif string.sub(name, 1, 1) == 'c' then
    calls = calls + count
  else
    failures = failures + count
  end
end
if #stale > 0 then
  redis.call('HDEL', KEYS[2], unpack(stale))
end

if failed and calls >= tonumber(ARGV[7])
   and failures > tonumber(ARGV[6]) * calls then
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', now + cool_down,
             'failed', failures, 'calls', calls)
  redis.call('PEXPIRE', KEYS[1], 86400000)
  redis.call('DEL', KEYS[2])
  return {1, failures, calls}
end
return {0}
"""
)


class CircuitOpen(WebhookUnavailable):
    """The connector's circuit breaker stopped the call; no request was sent.

    It is retryable like any transient failure, and ``retry_after_s`` is the
    cool-down left, so the retry comes when a call may go again.
    """


@dataclass(frozen=True)
class Throttled:
    """A limit stopped the call; run the job again after ``countdown_s``."""

    limit: str
    countdown_s: float
    reason: str


@dataclass(frozen=True)
class Admission:
    """Permission for one call, which ``ConnectorGuard.finish`` must end."""

    tenant_id: str
    connector: ConnectorSettings
    holder_token: str
    trial: bool


@dataclass(frozen=True)
class Transition:
    """A breaker state change that one call's outcome caused, for the log."""

    event: str
    failed: int = 0
    calls: int = 0


def is_guarded(connector: ConnectorSettings | None) -> bool:
    """Return whether any limit of this module applies to ``connector``."""
    return connector is not None and (
        connector.circuit_breaker is not None
        or connector.max_requests_per_second is not None
        or connector.max_concurrent_requests is not None
    )


def breaker_key(key_prefix: str, tenant_id: str, label: str) -> str:
    """Return the key of the breaker state hash of one tenant's connector."""
    return f"{key_prefix}:breaker:{tenant_id}:{label}"


def counts_as_failure(error: WebhookError | None) -> bool:
    """Return whether a call outcome counts as a failure for the breaker.

    Transient failures count: timeouts, connection errors, 408, 429 and any
    5xx. Other responses show that the receiver works, so they count as
    successes.
    """
    if error is None:
        return False
    return error.retryable or (error.status is not None and error.status >= 500)


class ConnectorGuard:
    """The circuit breaker and limits of every connector, kept in Redis."""

    def __init__(self, client: redis.Redis, key_prefix: str) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self._admit = client.register_script(_ADMIT_SCRIPT)
        self._finish = client.register_script(_FINISH_SCRIPT)

    def _keys(self, tenant_id: str, label: str) -> list[str]:
        suffix = f"{tenant_id}:{label}"
        return [
            breaker_key(self.key_prefix, tenant_id, label),
            f"{self.key_prefix}:breaker-window:{suffix}",
            f"{self.key_prefix}:rate:{suffix}",
            f"{self.key_prefix}:inflight:{suffix}",
        ]

    def admit(
        self,
        tenant_id: str,
        connector: ConnectorSettings,
        timeout_s: float,
        max_retry_delay_s: float,
    ) -> Admission | Throttled | CircuitOpen:
        """Decide whether one call to ``connector`` may go now.

        ``timeout_s`` bounds the call, so it sets how long a concurrency slot
        and a half-open trial are held at most.
        """
        breaker = connector.circuit_breaker
        rate = connector.max_requests_per_second
        concurrency = connector.max_concurrent_requests or 0
        holder_ms = math.ceil((timeout_s + HOLDER_MARGIN_S) * 1000)
        interval_ms = 1000.0 / rate if rate else 0.0
        token = uuid.uuid4().hex
        state_key, _window_key, rate_key, inflight_key = self._keys(
            tenant_id, connector.label
        )
        reply = self._admit(
            keys=[state_key, rate_key, inflight_key],
            args=[
                1 if breaker else 0,
                breaker.trial_calls if breaker else 0,
                holder_ms,
                repr(interval_ms),
                repr(_burst(rate)),
                concurrency,
                token,
                holder_ms,
            ],
        )
        code = int(reply[0])
        if code == 0:
            return Admission(tenant_id, connector, token, trial=int(reply[1]) == 1)
        if code in (1, 2):
            return _circuit_open(connector, reply, max_retry_delay_s)
        if code == 3:
            wait_s = max(int(reply[1]) / 1000, MIN_COUNTDOWN_S)
            jitter_s = random.uniform(0, min(interval_ms / 1000, MAX_RATE_JITTER_S))
            return Throttled(
                "rate",
                wait_s + jitter_s,
                f"MaxRequestsPerSecond {rate:g} of connector "
                f"{connector.label!r} reached; the call waits for the next token",
            )
        return Throttled(
            "concurrency",
            random.uniform(*CONCURRENCY_RECHECK_S),
            f"MaxConcurrentRequests {concurrency} of connector "
            f"{connector.label!r} reached; the call waits for a free slot",
        )

    def finish(
        self, admission: Admission, error: WebhookError | None, *, called: bool
    ) -> Transition | None:
        """Free the call's slot and record its outcome for the breaker.

        ``called`` is False when no outcome is known, for example because the
        attempt raised; a half-open trial then counts as neither result.
        Returns the breaker change the outcome caused, if any.
        """
        connector = admission.connector
        breaker = connector.circuit_breaker
        outcome = ""
        if breaker is not None and called and not isinstance(error, BlockedAddress):
            outcome = "failed" if counts_as_failure(error) else "ok"
        state_key, window_key, _rate_key, inflight_key = self._keys(
            admission.tenant_id, connector.label
        )
        holder = admission.holder_token if connector.max_concurrent_requests else ""
        if not holder and not outcome:
            return None
        settings = breaker or CircuitBreakerSettings()
        window_ms = settings.window_s * 1000
        reply = self._finish(
            keys=[state_key, window_key, inflight_key],
            args=[
                holder,
                outcome,
                1 if admission.trial else 0,
                window_ms,
                _bucket_ms(settings.window_s),
                repr(settings.failure_ratio),
                settings.minimum_calls,
                math.ceil(settings.cool_down_s * 1000),
                settings.trial_calls,
            ],
        )
        code = int(reply[0])
        if code == 1:
            return Transition("circuit.opened", int(reply[1]), int(reply[2]))
        if code == 2:
            return Transition("circuit.reopened", 1, 1)
        if code == 3:
            return Transition("circuit.closed")
        return None


def _burst(rate: float | None) -> float:
    """Return how many calls may go at once: a tenth of a second's worth, at least 1."""
    if not rate:
        return 1.0
    return max(1.0, math.floor(rate / 10))


def _bucket_ms(window_s: int) -> int:
    return max(1, window_s // WINDOW_BUCKETS) * 1000


def _circuit_open(
    connector: ConnectorSettings,
    reply: list[int],
    max_retry_delay_s: float,
) -> CircuitOpen:
    code, wait_ms = int(reply[0]), int(reply[1])
    wait_s = max(wait_ms / 1000, MIN_COUNTDOWN_S)
    url = safe_url(connector.host)
    if code == 1:
        until = datetime.now(UTC) + timedelta(seconds=wait_s)
        message = (
            f"circuit open for connector {connector.label!r} until "
            f"{until.isoformat(timespec='seconds').replace('+00:00', 'Z')} after "
            f"{int(reply[2])} of {int(reply[3])} calls failed; no request was sent"
        )
    else:
        message = (
            f"circuit half-open for connector {connector.label!r}: {int(reply[2])} "
            "trial calls are in flight; no request was sent"
        )
    if code == 2:
        # Trial calls usually end within a second or two, so the standard
        # retry delays fit better than the trials' timeout.
        return CircuitOpen(message, url=url)
    # A longer retry_after_s than the maximum retry delay would fail the step
    # at once; the capped retry finds the breaker open and waits again.
    return CircuitOpen(message, url=url, retry_after_s=min(wait_s, max_retry_delay_s))
