"""Send jobs again under a new JobId: ``webhook-step-worker replay``.

A job is found next to its stored result (kept ``RESULT_TTL_S``), else in the
dead-letter stream. The copy gets a new JobId and records the original in
``ReplayOf``, so the first result of the original stays as it was and the
copy gets a result of its own.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from typing import Any, cast

import redis

from worker import jsontext
from worker.casing import get_any_case
from worker.store import ResultStore

FAILED_STATUSES = frozenset({"Error", "Warning"})
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)([smhd]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class ReplayPlan:
    """One job to send again, or why it cannot be."""

    original_job_id: str
    source: str
    job: dict[str, Any] | None
    problem: str | None = None


def parse_duration(text: str) -> float:
    """Return seconds for ``90``, ``30s``, ``15m``, ``1h`` or ``2d``.

    Raises:
        ValueError: the text is not such a duration.
    """
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"{text!r} is not a duration; write seconds or a number with s, m, h or d, "
            "for example 1h"
        )
    return float(match[1]) * _UNIT_S[match[2]]


def _dead_letter_job(store: ResultStore, job_id: str) -> dict[str, Any] | None:
    entries = cast(list[Any], store.client.xrevrange(store.dead_letter_stream))
    for _entry_id, fields in entries:
        if fields.get(b"job_id", b"").decode("utf-8", "replace") != job_id:
            continue
        payload = jsontext.loads(fields.get(b"payload", b"{}"))
        args = payload.get("args") if isinstance(payload, dict) else None
        if isinstance(args, list) and args and isinstance(args[0], dict):
            return cast(dict[str, Any], args[0])
    return None


def plan_for(store: ResultStore, job_id: str) -> ReplayPlan:
    """Find the job to replay for ``job_id``: next to its result, else a dead letter."""
    text = store.stored_job(job_id)
    if text:
        job = jsontext.loads(text)
        if isinstance(job, dict):
            return ReplayPlan(job_id, "result", job)
    job = _dead_letter_job(store, job_id)
    if job is not None:
        return ReplayPlan(job_id, "dead letter", job)
    return ReplayPlan(
        job_id,
        "-",
        None,
        "no stored job for this JobId: its result is older than RESULT_TTL_S, was "
        "published before jobs were kept, or the JobId is wrong",
    )


def failed_job_ids(
    client: redis.Redis, stream: str, since_s: float, tenant: str | None
) -> list[str]:
    """Return the JobIds of Error and Warning results newer than ``since_s`` seconds."""
    start_ms = int((time.time() - since_s) * 1000)
    job_ids: list[str] = []
    last = f"{start_ms}-0"
    while True:
        batch = cast(list[Any], client.xrange(stream, min=last, max="+", count=1000))
        for _entry_id, fields in batch:
            result = jsontext.loads(fields.get(b"result", b"{}"))
            if not isinstance(result, dict):
                continue
            if result.get("ActionStatus") not in FAILED_STATUSES:
                continue
            if tenant is not None and result.get("TenantId") != tenant:
                continue
            job_id = result.get("JobId")
            if isinstance(job_id, str) and job_id not in job_ids:
                job_ids.append(job_id)
        if len(batch) < 1000:
            return job_ids
        last = "(" + batch[-1][0].decode("ascii")


def replay_copy(job: dict[str, Any], original_job_id: str) -> dict[str, Any]:
    """Return the job with a fresh JobId and ``ReplayOf`` set to the original."""
    copy = {
        key: value
        for key, value in job.items()
        if key.lower() not in ("jobid", "replayof")
    }
    copy["JobId"] = f"replay-{uuid.uuid4()}"
    original = get_any_case(job, "ReplayOf")
    copy["ReplayOf"] = original if isinstance(original, str) else original_job_id
    return copy
