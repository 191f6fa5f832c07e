"""Redis state behind exactly-once results: markers, leases, counters, streams."""

from __future__ import annotations

from dataclasses import dataclass

import redis
import structlog

from worker import metrics

log = structlog.get_logger(__name__)

# Publish a result only when no result exists for the JobId, in one atomic step:
# the done marker and the stream entry are written together or not at all. The
# same step releases the call lease (KEYS[3]) when ARGV[6] is its token.
_PUBLISH_SCRIPT = """
if ARGV[6] ~= '' and redis.call('GET', KEYS[3]) == ARGV[6] then
  redis.call('DEL', KEYS[3])
end
local existing = redis.call('HGET', KEYS[1], 'result')
if existing then
  return {0, existing}
end
redis.call('HSET', KEYS[1], 'result', ARGV[1], 'fingerprint', ARGV[2],
           'job', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
           'result', ARGV[1], 'job_id', ARGV[5])
return {1, ARGV[1]}
"""

# Start a delivery: return the stored result if there is one, else count the
# delivery of this message. One round trip in place of two.
_BEGIN_SCRIPT = """
local stored = redis.call('HMGET', KEYS[1], 'result', 'fingerprint')
if stored[1] then
  return {0, stored[1], stored[2] or ''}
end
local count = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
return {1, count}
"""

# Take the call lease; with the lease held, look for a result once more, since
# another copy may have published since the delivery began.
_LEASE_SCRIPT = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  local stored = redis.call('HMGET', KEYS[2], 'result', 'fingerprint')
  if stored[1] then
    redis.call('DEL', KEYS[1])
    return {2, stored[1], stored[2] or ''}
  end
  return {0}
end
return {1, redis.call('PTTL', KEYS[1])}
"""

_RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


@dataclass(frozen=True)
class StoredResult:
    result_json: str
    fingerprint: str


class ResultStore:
    """All Redis keys of one deployment, under ``<key_prefix>:``."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        key_prefix: str,
        result_stream: str,
        dead_letter_stream: str,
        result_ttl_s: int,
        stream_maxlen: int,
        wait_replicas: int = 0,
        wait_timeout_ms: int = 1000,
    ) -> None:
        self.client = client
        self.wait_replicas = wait_replicas
        self.wait_timeout_ms = wait_timeout_ms
        self.key_prefix = key_prefix
        self.result_stream = result_stream
        self.dead_letter_stream = dead_letter_stream
        self.result_ttl_ms = result_ttl_s * 1000
        self.stream_maxlen = stream_maxlen
        self._publish = client.register_script(_PUBLISH_SCRIPT)
        self._release = client.register_script(_RELEASE_SCRIPT)
        self._begin = client.register_script(_BEGIN_SCRIPT)
        self._lease = client.register_script(_LEASE_SCRIPT)

    def _key(self, kind: str, job_id: str) -> str:
        return f"{self.key_prefix}:{kind}:{job_id}"

    def find_result(self, job_id: str) -> StoredResult | None:
        values = self.client.hmget(self._key("done", job_id), ["result", "fingerprint"])
        if values[0] is None:
            return None
        return StoredResult(_text(values[0]), _text(values[1] or b""))

    def publish(
        self,
        job_id: str,
        result_json: str,
        fingerprint: str,
        lease_token: str = "",
        job_text: str = "",
    ) -> tuple[bool, str]:
        """Publish unless a result exists; return (published, the standing result).

        A ``lease_token`` releases the call lease in the same step. With
        ``wait_replicas`` set, the call returns once that many replicas have the
        write (Redis WAIT), or after ``wait_timeout_ms`` with a warning logged.
        """
        keys = [
            self._key("done", job_id),
            self.result_stream,
            self._key("lease", job_id),
        ]
        args: list[str | int] = [
            result_json,
            fingerprint,
            self.result_ttl_ms,
            self.stream_maxlen,
            job_id,
            lease_token,
            job_text,
        ]
        if not self.wait_replicas:
            created, standing = self._publish(keys=keys, args=args)
            return bool(created), _text(standing)
        # WAIT counts the writes of its own connection, so it must follow the
        # script on the same connection, and a pipeline sends all its commands on one.
        pipe = self.client.pipeline(transaction=False)
        self._publish(keys=keys, args=args, client=pipe)
        pipe.wait(self.wait_replicas, self.wait_timeout_ms)
        (created, standing), acknowledged = pipe.execute()
        if acknowledged < self.wait_replicas:
            log.warning(
                "result.replication_unconfirmed",
                job_id=job_id,
                replicas=acknowledged,
                required=self.wait_replicas,
                timeout_ms=self.wait_timeout_ms,
            )
        return bool(created), _text(standing)

    def stored_job(self, job_id: str) -> str | None:
        """Return the JSON of the job whose result is stored for ``job_id``, if kept."""
        value = self.client.hget(self._key("done", job_id), "job")
        return _text(value) if value else None

    def begin_delivery(self, job_id: str, message: str) -> StoredResult | int:
        """Return the stored result, or else count this delivery and return the count.

        ``message`` names the task message, so redeliveries of one message share
        a count and a reschedule starts a new one.
        """
        reply = self._begin(
            keys=[
                self._key("done", job_id),
                self._key("deliveries", f"{job_id}:{message}"),
            ],
            args=[self.result_ttl_ms],
        )
        if int(reply[0]) == 0:
            return StoredResult(_text(reply[1]), _text(reply[2]))
        return int(reply[1])

    def delivery_count(self, job_id: str, message: str) -> int:
        """Return how often the task message ``message`` of a job reached a runner."""
        value = self.client.get(self._key("deliveries", f"{job_id}:{message}"))
        return int(value) if value else 0

    def acquire_lease(self, job_id: str, token: str, ttl_ms: int) -> StoredResult | int:
        """Take the lease; return 0, the ms left on another's lease, or the result.

        A result found after taking the lease means another copy finished in the
        meantime; the lease is then released again.
        """
        reply = self._lease(
            keys=[self._key("lease", job_id), self._key("done", job_id)],
            args=[token, ttl_ms],
        )
        if int(reply[0]) == 2:
            return StoredResult(_text(reply[1]), _text(reply[2]))
        if int(reply[0]) == 1:
            return max(int(reply[1]), 1)
        return 0

    def release_lease(self, job_id: str, token: str) -> None:
        self._release(keys=[self._key("lease", job_id)], args=[token])

    def dead_letter(
        self, reason: str, payload: str, *, kind: str = "no_job_id", job_id: str = ""
    ) -> None:
        """Record a rejected message with the reason, and count it by ``kind``."""
        pipe = self.client.pipeline()
        pipe.xadd(
            self.dead_letter_stream,
            {"reason": reason, "kind": kind, "job_id": job_id, "payload": payload},
            maxlen=self.stream_maxlen,
            approximate=True,
        )
        pipe.hincrby(self.rejections_key, kind, 1)
        pipe.execute()
        metrics.record_dead_letter(kind)

    @property
    def rejections_key(self) -> str:
        """Hash of rejected-message counts by kind, for metrics and operators."""
        return f"{self.key_prefix}:rejected"

    def rejection_counts(self) -> dict[str, int]:
        raw = self.client.hgetall(self.rejections_key)
        return {_text(kind): int(count) for kind, count in raw.items()}


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value
