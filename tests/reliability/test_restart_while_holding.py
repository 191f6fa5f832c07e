"""Redis restarts while an idle worker keeps delayed jobs it has not run yet.

The worker keeps each RunAfterOrderIsSaved job's message unacknowledged for the
one-second save delay and meanwhile waits on an empty queue. Redis then stops
for a few seconds and starts again with its append-only file. The worker must
reconnect, put the held jobs back on the queue once Redis is back, and give
every held job exactly one result well before the visibility timeout.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.reliability.common import (
    args_json,
    duplicates,
    job,
    result_counts,
    wait_until,
    write_tenant,
)
from tests.support.raw_messages import push_envelopes, task_envelope
from tests.support.redis_server import RedisServer
from tests.support.webhook_server import Reply, Request, running_server
from tests.support.worker_process import WorkerNames, running_worker

pytestmark = pytest.mark.reliability

JOBS = 20
OUTAGE_S = 3.0
VISIBILITY_TIMEOUT_S = 51
# The worker puts the held jobs back as soon as Redis is reachable again.
# Without that they would come back only after the visibility timeout.
RECOVERY_TIMEOUT_S = 30.0
# Below the test tenant's 5 s connector timeout, so the slow calls succeed.
SLOW_CALL_S = 4.0


def answer_slow_jobs(request: Request) -> Reply:
    """Reply at once, except to the slow jobs, which take SLOW_CALL_S."""
    delay_s = SLOW_CALL_S if b"ORD-slow-" in request.body else 0.0
    return Reply.json("{}", delay_s=delay_s)


# With busy=4, four slow calls run first, and the worker fetches the delayed
# jobs only as they end, just before Redis stops. That timing usually makes
# kombu's own restore run, and fail, against the stopped Redis, where busy=0
# takes the detached path. The worker must recover from both.
@pytest.mark.parametrize("busy", [0, 4])
def test_restart_with_delayed_jobs_waiting(
    aof_redis: RedisServer, config_dir: Path, tmp_path: Path, busy: int
) -> None:
    names = WorkerNames.unique("held-restart")
    extra_env = {
        "WEBHOOK_WORKER_MAX_RETRY_DELAY_S": "5",
        "WEBHOOK_WORKER_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
    }
    client = aof_redis.client()
    job_ids = [f"held-{index:03d}" for index in range(JOBS)]
    slow_ids = [f"slow-{index}" for index in range(busy)]
    with running_server() as webhook:
        webhook.route("/hook", answer_slow_jobs)
        write_tenant(config_dir, webhook.url("/hook"))
        with running_worker(
            redis_url=aof_redis.url,
            config_dir=config_dir,
            log_path=tmp_path / "worker.log",
            names=names,
            concurrency=4,
            extra_env=extra_env,
        ) as worker:
            slow = [task_envelope(names.queue, args_json(job(i))) for i in slow_ids]
            push_envelopes(client, names.queue, slow)
            calls_started, _ = wait_until(
                lambda: len(webhook.requests_to("/hook")) >= busy, timeout_s=10
            )
            assert calls_started, "the slow calls did not start"
            envelopes = [
                task_envelope(names.queue, args_json(job(job_id, delayed=True)))
                for job_id in job_ids
            ]
            push_envelopes(client, names.queue, envelopes)
            all_waiting, _ = wait_until(
                lambda: (
                    sum(
                        record.get("event") == "job.rescheduled"
                        for record in worker.log_records()
                    )
                    >= JOBS
                ),
                timeout_s=10,
                interval_s=0.02,
            )
            assert all_waiting, (
                f"the jobs never reached the save delay:\n{worker.log_tail()}"
            )

            aof_redis.stop()
            time.sleep(OUTAGE_S)
            aof_redis.start()
            client = aof_redis.client()

            reconnected, _ = wait_until(
                lambda: (
                    any(
                        record.get("event") == "broker.reconnected"
                        for record in worker.log_records()
                    )
                    or worker.process is None
                    or worker.process.poll() is not None
                ),
                timeout_s=30,
                interval_s=0.2,
            )
            assert worker.process is not None
            exit_code = worker.process.poll()
            critical = [
                record.get("event")
                for record in worker.log_records()
                if record.get("level") == "critical"
            ]
            assert exit_code is None, (
                f"the worker exited with code {exit_code} after the restart: {critical}"
            )
            assert reconnected, f"no broker.reconnected line:\n{worker.log_tail()}"

            expected = {*job_ids, *slow_ids}
            finished, recovery_s = wait_until(
                lambda: expected <= set(result_counts(client, names.result_stream)),
                timeout_s=RECOVERY_TIMEOUT_S,
                interval_s=0.5,
            )
            counts = result_counts(client, names.result_stream)
            calls = len(webhook.requests_to("/hook"))
            restored = [
                record
                for record in worker.log_records()
                if record.get("event") == "delivery.restored"
            ]

    missing = sorted(expected - set(counts))
    print(
        f"\nrestart while holding: jobs {JOBS}, busy threads {busy}, "
        f"outage {OUTAGE_S:g} s, all results "
        f"{recovery_s:.1f} s after reconnecting, restored in bulk "
        f"{sum(r.get('held', 0) for r in restored)}, duplicates {duplicates(counts)}, "
        f"webhook calls {calls}"
    )
    assert finished, f"no result for {len(missing)} held jobs: {missing[:10]}"
    assert duplicates(counts) == 0
    # Celery dropped its own copies of the held jobs, so each runs once. A
    # slow call whose result could not be published runs once more.
    assert JOBS + busy <= calls <= JOBS + 2 * busy
