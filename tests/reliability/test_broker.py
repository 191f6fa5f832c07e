"""Broker outage: a private Redis with an append-only file restarts mid-run.

The worker must reconnect on its own, keep every result published before the
restart, finish every job that Redis still stores and publish none twice. The
health command must report the outage and the recovery, and Celery's
reconnection errors must be logged once per outage, not once per attempt.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import redis

from tests.reliability.common import (
    answer_after,
    args_json,
    duplicates,
    job,
    result_counts,
    run_health,
    wait_until,
    write_tenant,
)
from tests.support.raw_messages import job_id_of_envelope, push_envelopes, task_envelope
from tests.support.redis_server import RedisServer
from tests.support.webhook_server import running_server
from tests.support.worker_process import (
    WorkerNames,
    running_worker,
    worker_environment,
)
from worker.health import write_beat

pytestmark = pytest.mark.reliability

JOBS = 300
RESULTS_BEFORE_RESTART = 100
# The outage lasts until the health command fails, and at least this long.
MIN_OUTAGE_S = 3.0
HEALTH_MAX_AGE_S = 6
# kombu usually restores the unacknowledged jobs when the connection drops. Any
# it misses stay in its unacked hash until the visibility timeout (51 s) passes
# and a restore scan, every 10 s, finds them, so the wait allows for both.
VISIBILITY_TIMEOUT_S = 51
RECOVERY_TIMEOUT_S = 120.0
OUTAGE_PREFIXES = ("consumer: Cannot connect", "consumer: Connection to broker lost")


def held_job_ids(client: redis.Redis, queue: str, stream: str) -> set[str]:
    """Return the JobIds that Redis stores: queued, unacknowledged or with a result.

    One MULTI reads all three, so a message moving between them is not missed.
    """
    pipe = client.pipeline(transaction=True)
    pipe.lrange(queue, 0, -1)
    pipe.hvals("unacked")
    pipe.xrange(stream)
    queued, unacked, entries = pipe.execute()
    # An unacked value is the JSON list [envelope, exchange, routing key].
    envelopes = [*queued, *(json.loads(text)[0] for text in unacked)]
    held = {job_id_of_envelope(message) for message in envelopes}
    held.update(fields[b"job_id"].decode() for _entry_id, fields in entries)
    return {job_id for job_id in held if job_id is not None}


def test_broker_restart(
    aof_redis: RedisServer, config_dir: Path, tmp_path: Path
) -> None:
    names = WorkerNames.unique("restart")
    health_file = tmp_path / "worker.health"
    extra_env = {
        "WEBHOOK_WORKER_MAX_RETRY_DELAY_S": "5",
        "WEBHOOK_WORKER_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
        "WEBHOOK_WORKER_HEALTH_FILE": str(health_file),
        "WEBHOOK_WORKER_HEALTH_MAX_AGE_S": str(HEALTH_MAX_AGE_S),
    }
    client = aof_redis.client()
    with running_server() as webhook:
        webhook.route("/hook", answer_after(0.02, 0.05))
        write_tenant(config_dir, webhook.url("/hook"))
        with running_worker(
            redis_url=aof_redis.url,
            config_dir=config_dir,
            log_path=tmp_path / "worker.log",
            names=names,
            concurrency=4,
            extra_env=extra_env,
        ) as worker:
            job_ids = [f"restart-{index:04d}" for index in range(JOBS)]
            envelopes = [
                task_envelope(names.queue, args_json(job(job_id))) for job_id in job_ids
            ]
            push_envelopes(client, names.queue, envelopes)

            reached, _ = wait_until(
                lambda: client.xlen(names.result_stream) >= RESULTS_BEFORE_RESTART,
                timeout_s=60,
                interval_s=0.02,
            )
            assert reached, f"fewer than {RESULTS_BEFORE_RESTART} results in 60 s"
            healthy_before, _ = run_health(worker.env)
            before = set(result_counts(client, names.result_stream))

            aof_redis.stop()
            stopped_at = time.monotonic()
            down_reports: list[tuple[int, str]] = []

            def reports_unhealthy() -> bool:
                down_reports.append(run_health(worker.env))
                return down_reports[-1][0] == 1

            unhealthy, unhealthy_after_s = wait_until(
                reports_unhealthy, timeout_s=HEALTH_MAX_AGE_S + 15, interval_s=0.5
            )
            time.sleep(max(0.0, MIN_OUTAGE_S - (time.monotonic() - stopped_at)))
            aof_redis.start()
            outage_s = time.monotonic() - stopped_at
            client = aof_redis.client()
            held = held_job_ids(client, names.queue, names.result_stream)
            after_restart = set(result_counts(client, names.result_stream))

            finished, recovery_s = wait_until(
                lambda: held <= set(result_counts(client, names.result_stream)),
                timeout_s=RECOVERY_TIMEOUT_S,
                interval_s=0.5,
            )
            healthy_again, _ = wait_until(
                lambda: run_health(worker.env)[0] == 0,
                timeout_s=30,
                interval_s=0.5,
            )
            counts = result_counts(client, names.result_stream)
            records = worker.log_records()
            calls = len(webhook.requests_to("/hook"))
            state = worker.state()
            diagnosis = worker.diagnosis()

    outage_lines = [
        record
        for record in records
        if str(record.get("event", "")).startswith(OUTAGE_PREFIXES)
    ]
    reconnected = [r for r in records if r.get("event") == "broker.reconnected"]
    requeued = [r for r in records if r.get("event") == "job.reschedule_failed"]
    missing = held - set(counts)
    lost = set(job_ids) - held
    print(
        f"\nbroker restart: jobs sent {JOBS}, results before restart {len(before)}, "
        f"outage {outage_s:.1f} s, jobs Redis held {len(held)}, lost {len(lost)}, "
        f"results {len(counts)}, duplicates {duplicates(counts)}, "
        f"missing {len(missing)}, recovery {recovery_s:.1f} s, webhook calls "
        f"{calls}, jobs requeued after a failed publish {len(requeued)}, "
        f"outage log lines {len(outage_lines)}, broker.reconnected {reconnected}, "
        f"health failed after {unhealthy_after_s:.1f} s: {down_reports[-1][1]}"
    )
    assert healthy_before == 0
    assert unhealthy, "health kept exiting 0 while Redis was down"
    assert before <= after_restart, f"lost results: {sorted(before - after_restart)}"
    assert state == "running", diagnosis
    assert finished, (
        f"no result for {len(missing)} held jobs: {sorted(missing)[:10]}\n{diagnosis}"
    )
    assert not lost, f"Redis lost these jobs at the restart: {sorted(lost)[:10]}"
    assert duplicates(counts) == 0
    assert set(counts) == set(job_ids)
    assert len(outage_lines) <= 2, [r.get("event") for r in outage_lines]
    assert reconnected, "no broker.reconnected line in the worker log"
    assert healthy_again, "health did not exit 0 within 30 s of the restart"


def test_health_command(
    redis_server: RedisServer, config_dir: Path, tmp_path: Path
) -> None:
    names = WorkerNames.unique("health")
    health_file = tmp_path / "worker.health"
    extra_env = {"WEBHOOK_WORKER_HEALTH_FILE": str(health_file)}
    with running_worker(
        redis_url=redis_server.url,
        config_dir=config_dir,
        log_path=tmp_path / "worker.log",
        names=names,
        extra_env=extra_env,
    ) as worker:
        appeared, _ = wait_until(health_file.exists, timeout_s=15)
        running, _ = run_health(worker.env)

    missing_env = worker_environment(
        redis_url=redis_server.url,
        config_dir=config_dir,
        names=names,
        extra_env={"WEBHOOK_WORKER_HEALTH_FILE": str(tmp_path / "absent.health")},
    )
    missing, _ = run_health(missing_env)

    stale_file = tmp_path / "stale.health"
    write_beat(stale_file, now=time.time() - 120)
    stale_env = {**missing_env, "WEBHOOK_WORKER_HEALTH_FILE": str(stale_file)}
    stale, stale_output = run_health(stale_env)

    print(
        f"\nhealth command: running worker {running}, no file {missing}, "
        f"stale file {stale} ({stale_output}), "
        f"file removed at stop {not health_file.exists()}"
    )
    assert appeared, "the worker wrote no health file within 15 s"
    assert running == 0
    assert missing == 1
    assert stale == 1
