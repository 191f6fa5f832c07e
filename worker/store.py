"""Redis state behind exactly-once results: markers, leases, counters, streams."""

from __future__ import annotations

from dataclasses import dataclass

import redis

from worker import metrics

# Publish a result only when no result exists for the JobId, in one atomic step:
# the done marker and the stream entry are written together or not at all.
_PUBLISH_SCRIPT = """
local existing = redis.call('HGET', KEYS[1], 'result')
if existing then
  return {0, existing}
end
redis.call('HSET', KEYS[1], 'result', ARGV[1], 'fingerprint', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*',
           'result', ARGV[1], 'job_id', ARGV[5])
return {1, ARGV[1]}
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
    ) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.result_stream = result_stream
        self.dead_letter_stream = dead_letter_stream
        self.result_ttl_ms = result_ttl_s * 1000
        self.stream_maxlen = stream_maxlen
        self._publish = client.register_script(_PUBLISH_SCRIPT)
        self._release = client.register_script(_RELEASE_SCRIPT)

    def _key(self, kind: str, job_id: str) -> str:
        return f"{self.key_prefix}:{kind}:{job_id}"

    def find_result(self, job_id: str) -> StoredResult | None:
        values = self.client.hmget(self._key("done", job_id), ["result", "fingerprint"])
        if values[0] is None:
            return None
        return StoredResult(_text(values[0]), _text(values[1] or b""))

    def publish(
        self, job_id: str, result_json: str, fingerprint: str
    ) -> tuple[bool, str]:
        """Publish unless a result exists; return (published, the standing result)."""
        created, standing = self._publish(
            keys=[self._key("done", job_id), self.result_stream],
            args=[
                result_json,
                fingerprint,
                self.result_ttl_ms,
                self.stream_maxlen,
                job_id,
            ],
        )
        return bool(created), _text(standing)

    def acquire_lease(self, job_id: str, token: str, ttl_ms: int) -> int:
        """Take the lease; return 0, or the milliseconds left on the held lease."""
        key = self._key("lease", job_id)
        if self.client.set(key, token, nx=True, px=ttl_ms):
            return 0
        remaining = int(self.client.pttl(key))
        return max(remaining, 1)

    def release_lease(self, job_id: str, token: str) -> None:
        self._release(keys=[self._key("lease", job_id)], args=[token])

    def count_delivery(self, job_id: str, message: str) -> int:
        """Count one more delivery of one message of the job; return the count."""
        key = self._key("deliveries", f"{job_id}:{message}")
        pipe = self.client.pipeline()
        pipe.incr(key)
        pipe.pexpire(key, self.result_ttl_ms)
        count, _ = pipe.execute()
        return int(count)

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
