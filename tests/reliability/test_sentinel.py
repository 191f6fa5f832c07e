"""Redis Sentinel failover: the master is killed with SIGKILL in the middle of a run.

A worker whose broker and result URLs are ``sentinel://`` URLs runs 300 jobs.
After 100 results the master dies, the Sentinels promote the replica, and the
worker must find the new master on its own. Every job must end with exactly one
result on the new master. Replication is asynchronous, so the test also counts
results that a reader saw on the old master and that the new master lacks.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.reliability.common import (
    answer_after,
    args_json,
    duplicates,
    job,
    result_counts,
    wait_until,
    write_tenant,
)
from tests.reliability.test_broker import held_job_ids
from tests.support.raw_messages import push_envelopes, task_envelope
from tests.support.redis_sentinel import (
    MASTER_NAME,
    SentinelGroup,
    running_sentinel_group,
)
from tests.support.webhook_server import running_server
from tests.support.worker_process import WorkerNames, running_worker
from worker.redis_client import redis_from_url
from worker.settings import WorkerSettings
from worker.store import ResultStore

pytestmark = pytest.mark.reliability

JOBS = 300
RESULTS_BEFORE_FAILOVER = 100
# Jobs whose result could not be published while no master was reachable come
# back after the visibility timeout plus kombu's restore scan, every 10 s.
VISIBILITY_TIMEOUT_S = 51
RECOVERY_TIMEOUT_S = 120.0
PROMOTION_TIMEOUT_S = 30.0
PUBLISH_SAMPLES = 500


@pytest.fixture
def sentinel_group(tmp_path: Path) -> Iterator[SentinelGroup]:
    with running_sentinel_group(tmp_path / "redis") as group:
        yield group


def sentinel_settings(group: SentinelGroup) -> WorkerSettings:
    return WorkerSettings(
        broker_url=group.url,
        redis_url=group.url,
        sentinel_master=MASTER_NAME,
    )


def wait_for_replica_offset(group: SentinelGroup, timeout_s: float = 10.0) -> None:
    """Return once the replica has every write the master had when called."""
    target = int(group.master.client().info("replication")["master_repl_offset"])

    def caught_up() -> bool:
        info = group.replica.client().info("replication")
        return int(info.get("slave_repl_offset", 0)) >= target

    reached, _ = wait_until(caught_up, timeout_s=timeout_s, interval_s=0.02)
    assert reached, f"the replica did not reach offset {target} in {timeout_s:g} s"


@pytest.mark.parametrize("wait_replicas", [0, 1])
def test_sentinel_failover(
    sentinel_group: SentinelGroup,
    config_dir: Path,
    tmp_path: Path,
    wait_replicas: int,
) -> None:
    group = sentinel_group
    names = WorkerNames.unique(f"sentinel{wait_replicas}")
    extra_env = {
        "WEBHOOK_WORKER_SENTINEL_MASTER": MASTER_NAME,
        "WEBHOOK_WORKER_MAX_RETRY_DELAY_S": "5",
        "WEBHOOK_WORKER_VISIBILITY_TIMEOUT_S": str(VISIBILITY_TIMEOUT_S),
        "WEBHOOK_WORKER_RESULT_WAIT_REPLICAS": str(wait_replicas),
        "WEBHOOK_WORKER_RESULT_WAIT_TIMEOUT_MS": "500",
        "WEBHOOK_WORKER_HEALTH_FILE": str(tmp_path / "worker.health"),
    }
    client = redis_from_url(group.url, sentinel_settings(group), socket_timeout=2.0)
    old_master_port = group.master.port
    with running_server() as webhook:
        webhook.route("/hook", answer_after(0.05, 0.15))
        write_tenant(config_dir, webhook.url("/hook"))
        with running_worker(
            redis_url=group.url,
            config_dir=config_dir,
            log_path=tmp_path / "worker.log",
            names=names,
            concurrency=8,
            extra_env=extra_env,
        ) as worker:
            job_ids = [f"sentinel-{index:04d}" for index in range(JOBS)]
            envelopes = [
                task_envelope(names.queue, args_json(job(job_id))) for job_id in job_ids
            ]
            started = time.monotonic()
            push_envelopes(client, names.queue, envelopes)
            # The jobs themselves must survive the failover: the test's producer
            # waits until the replica has them, as a producer using WAIT would.
            wait_for_replica_offset(group)

            reached, _ = wait_until(
                lambda: client.xlen(names.result_stream) >= RESULTS_BEFORE_FAILOVER,
                timeout_s=60,
                interval_s=0.02,
            )
            assert reached, f"fewer than {RESULTS_BEFORE_FAILOVER} results in 60 s"
            seen_before = set(result_counts(client, names.result_stream))

            group.master.kill()
            killed_at = time.monotonic()
            promoted, promotion_s = wait_until(
                lambda: group.master_port() not in (None, old_master_port),
                timeout_s=PROMOTION_TIMEOUT_S,
                interval_s=0.05,
            )
            assert promoted, f"no replica promoted within {PROMOTION_TIMEOUT_S:g} s"

            def results_after_kill() -> int:
                try:
                    return len(result_counts(client, names.result_stream))
                except redis.RedisError:
                    return 0

            at_promotion = results_after_kill()
            _resumed, resume_s = wait_until(
                lambda: results_after_kill() > at_promotion,
                timeout_s=RECOVERY_TIMEOUT_S,
                interval_s=0.05,
            )
            held = held_job_ids(client, names.queue, names.result_stream)
            finished, _ = wait_until(
                lambda: results_after_kill() >= JOBS,
                timeout_s=RECOVERY_TIMEOUT_S,
                interval_s=0.5,
            )
            all_done_s = time.monotonic() - started
            recovery_s = time.monotonic() - killed_at
            # Late copies of a job would show up as duplicates within a few seconds.
            time.sleep(3)
            counts: Counter[str] = result_counts(client, names.result_stream)
            records = worker.log_records()
            calls = len(webhook.requests_to("/hook"))
            diagnosis = worker.diagnosis()
            state = worker.state()

    vanished = seen_before - set(counts)
    lost = set(job_ids) - set(counts)
    unconfirmed = [
        r for r in records if r.get("event") == "result.replication_unconfirmed"
    ]
    requeued = [r for r in records if r.get("event") == "job.reschedule_failed"]
    recorded_late = [r for r in records if r.get("event") == "delivery.recorded"]
    settled = [
        r for r in records if r.get("event") == "delivery.settled_on_new_connection"
    ]
    print(
        f"\nsentinel failover (RESULT_WAIT_REPLICAS={wait_replicas}): jobs {JOBS}, "
        f"results before kill {len(seen_before)}, replica promoted after "
        f"{promotion_s:.1f} s, first new result {resume_s:.1f} s after promotion, "
        f"jobs the new master held {len(held)}, results {len(counts)}, duplicates "
        f"{duplicates(counts)}, lost {len(lost)}, results seen on the old master "
        f"and missing on the new one {len(vanished)}, webhook calls {calls}, "
        f"requeued after a failed publish {len(requeued)}, deliveries recorded "
        f"after a retry {len(recorded_late)}, acknowledged on a new connection "
        f"{len(settled)}, unconfirmed WAITs "
        f"{len(unconfirmed)}, all done {all_done_s:.1f} s after submit and "
        f"{recovery_s:.1f} s after the kill"
    )
    assert finished, f"no result for {len(lost)} jobs: {sorted(lost)[:10]}\n{diagnosis}"
    assert state == "running", diagnosis
    assert not lost
    assert duplicates(counts) == 0
    assert set(counts) == set(job_ids)


def test_result_wait_cost(sentinel_group: SentinelGroup) -> None:
    """Measure one publish with and without WAIT for one replica, on loopback."""
    group = sentinel_group
    client = redis_from_url(group.url, sentinel_settings(group))
    timings = {}
    for wait_replicas in (0, 1):
        store = ResultStore(
            client,
            key_prefix=f"cost{wait_replicas}",
            result_stream=f"cost{wait_replicas}:results",
            dead_letter_stream=f"cost{wait_replicas}:dead",
            result_ttl_s=600,
            stream_maxlen=10_000,
            wait_replicas=wait_replicas,
            wait_timeout_ms=1000,
        )
        started = time.perf_counter()
        for index in range(PUBLISH_SAMPLES):
            created, _ = store.publish(f"job-{index}", '{"ok":true}', "fingerprint")
            assert created
        timings[wait_replicas] = (time.perf_counter() - started) / PUBLISH_SAMPLES
    print(
        f"\npublish on loopback, {PUBLISH_SAMPLES} results each: without WAIT "
        f"{timings[0] * 1000:.3f} ms, with WAIT 1 {timings[1] * 1000:.3f} ms"
    )
    assert client.xlen("cost1:results") == PUBLISH_SAMPLES
