"""A flood of delayed jobs against the worker's ETA limit.

5,000 jobs with ``RunAfterOrderIsSaved`` each wait one second as a Celery
countdown, held in the worker's memory. With ``WEBHOOK_WORKER_ETA_TASK_LIMIT``
at 1,000 the worker must stop fetching at the limit, so its memory stays
bounded. Every job must still finish, and 20 immediate jobs sent after the
flood must not be starved: they finish within MAX_IMMEDIATE_LATENCY_S and no
later than shortly after the last delayed job.
"""

from __future__ import annotations

import threading
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
from tests.support.webhook_server import Reply, running_server
from tests.support.worker_process import WorkerNames, read_stream, running_worker

pytestmark = pytest.mark.reliability

DELAYED_JOBS = 5_000
IMMEDIATE_JOBS = 20
ETA_TASK_LIMIT = 1_000
RESULTS_TIMEOUT_S = 180.0
RSS_INTERVAL_S = 0.2
# Peak VmRSS measured by this test on a Linux VM (2 cores, Python 3.11,
# Celery 5.7, threads pool, 8 slots): 141 MB from a 73 MB baseline. The bound
# leaves about twice that for slower or busier machines.
MAX_RSS_MB = 300
# Latency of the immediate jobs measured by this test on the same VM: 38.5 s on
# a quiet machine and 61.6 s in a loaded CI run, with all results at 42 s
# (quiet). The worker keeps ETA_TASK_LIMIT delayed jobs until they are due and
# fetches nothing meanwhile, so the immediate jobs at the end of the queue wait
# for most of the delayed calls. The bound only catches starvation.
MAX_IMMEDIATE_LATENCY_S = 120.0
# The immediate jobs queue in the pool behind the delayed jobs that came due
# before them. On a quiet machine they finish a few seconds before the last
# delayed job. On a loaded one the two tie: in one CI run the last immediate
# job ended 0.05 s after the last delayed one. This margin allows the tie.
LAST_JOB_MARGIN_S = 2.0


def rss_mb(pid: int) -> float | None:
    """Return the VmRSS of process ``pid`` in MB, or None once it has ended."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


class RssSampler:
    """Samples a process's VmRSS every ``RSS_INTERVAL_S`` in a thread."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(RSS_INTERVAL_S):
            value = rss_mb(self.pid)
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def entry_ms(entry_id: str) -> int:
    """Return the Redis server time, in ms, of a stream entry id."""
    return int(entry_id.split("-")[0])


def test_delayed_flood(
    redis_server: RedisServer, config_dir: Path, tmp_path: Path
) -> None:
    names = WorkerNames.unique("flood")
    client = redis_server.client()
    delayed_ids = [f"delayed-{index:05d}" for index in range(DELAYED_JOBS)]
    immediate_ids = [f"immediate-{index:02d}" for index in range(IMMEDIATE_JOBS)]
    envelopes = [
        task_envelope(names.queue, args_json(job(job_id, delayed=True)))
        for job_id in delayed_ids
    ]
    envelopes += [
        task_envelope(names.queue, args_json(job(job_id))) for job_id in immediate_ids
    ]
    expected = {*delayed_ids, *immediate_ids}
    with running_server() as webhook:
        webhook.route("/hook", lambda _request: Reply.json("{}"))
        write_tenant(config_dir, webhook.url("/hook"))
        with running_worker(
            redis_url=redis_server.url,
            config_dir=config_dir,
            log_path=tmp_path / "worker.log",
            names=names,
            concurrency=8,
            extra_env={"WEBHOOK_WORKER_ETA_TASK_LIMIT": str(ETA_TASK_LIMIT)},
        ) as worker:
            assert worker.process is not None
            baseline_mb = rss_mb(worker.process.pid) or 0.0
            with RssSampler(worker.process.pid) as sampler:
                seconds, micros = client.time()
                sent_at_ms = seconds * 1000 + micros // 1000
                push_envelopes(client, names.queue, envelopes)
                finished, elapsed_s = wait_until(
                    lambda: client.xlen(names.result_stream) >= len(expected),
                    timeout_s=RESULTS_TIMEOUT_S,
                    interval_s=0.5,
                )
            entries = read_stream(client, names.result_stream)
            counts = result_counts(client, names.result_stream)
            exit_code = worker.process.poll()

    arrival_s = {
        entry.fields["job_id"]: (entry_ms(entry.entry_id) - sent_at_ms) / 1000
        for entry in entries
    }
    immediate_latency = [arrival_s[j] for j in immediate_ids if j in arrival_s]
    delayed_arrival = [arrival_s[j] for j in delayed_ids if j in arrival_s]
    peak_mb = max(sampler.samples, default=0.0)
    lost = expected - set(counts)
    print(
        f"\ndelayed flood: jobs sent {len(expected)} ({DELAYED_JOBS} delayed, "
        f"{IMMEDIATE_JOBS} immediate), results {len(counts)}, duplicates "
        f"{duplicates(counts)}, lost {len(lost)}, RSS baseline {baseline_mb:.0f} MB "
        f"peak {peak_mb:.0f} MB over {len(sampler.samples)} samples (bound "
        f"{MAX_RSS_MB} MB), immediate latency max "
        f"{max(immediate_latency, default=-1):.1f} s (bound "
        f"{MAX_IMMEDIATE_LATENCY_S:g} s), last delayed result "
        f"{max(delayed_arrival, default=-1):.1f} s, all results in {elapsed_s:.1f} s, "
        f"worker exit code {exit_code}"
    )
    assert exit_code is None
    assert finished, f"{len(lost)} jobs without a result: {sorted(lost)[:10]}"
    assert not lost
    assert duplicates(counts) == 0
    assert sampler.samples, "no RSS sample was taken"
    assert peak_mb < MAX_RSS_MB
    assert len(immediate_latency) == IMMEDIATE_JOBS
    assert max(immediate_latency) < MAX_IMMEDIATE_LATENCY_S
    assert max(immediate_latency) < max(delayed_arrival) + LAST_JOB_MARGIN_S
