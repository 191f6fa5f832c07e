"""The three systems under test: raw threads, plain Celery and this worker.

Each one runs as its own subprocess against the benchmark's private Redis and
receiver, takes a list of jobs, and appends one entry per job to its result
stream. ``prepare`` does the slow part before the clock starts, and ``submit``
hands all jobs over at once and returns the submit time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import redis

from bench.orders import PLAIN_TASK, WORKER_TASK, envelope
from tests.support.worker_process import (
    PROJECT_ROOT,
    WorkerNames,
    WorkerProcess,
    project_python,
)

START_TIMEOUT_S = 90.0


def _stop_process(process: subprocess.Popen[Any] | None, timeout_s: float = 20) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


class System:
    """One system under test; subclasses start it and feed it jobs."""

    name = ""
    stream = ""

    def __init__(self, client: redis.Redis, work_dir: Path) -> None:
        self.client = client
        self.work_dir = work_dir

    @property
    def pid(self) -> int:
        raise NotImplementedError

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def prepare(self, jobs: Sequence[dict[str, Any]]) -> None:
        raise NotImplementedError

    def submit(self) -> float:
        """Hand over the prepared jobs; return the wall-clock submit time."""
        raise NotImplementedError

    def finish(self) -> None:
        """Wait for the run's own end signal, if the system has one."""

    def rescheduled_at(self) -> dict[str, float]:
        """Return when each delayed job of the last run asked for its 1 s wait."""
        return {}


class RawSystem(System):
    """Plain threads in one process, fed over stdin with no queue."""

    name = "raw"

    def __init__(
        self, client: redis.Redis, work_dir: Path, redis_url: str, concurrency: int
    ) -> None:
        super().__init__(client, work_dir)
        self.stream = "bench_raw:results"
        self.redis_url = redis_url
        self.concurrency = concurrency
        self.process: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                project_python(),
                "-m",
                "bench.raw_runner",
                "--redis-url",
                self.redis_url,
                "--stream",
                self.stream,
                "--concurrency",
                str(self.concurrency),
            ],
            cwd=PROJECT_ROOT,
            env={**os.environ, "BENCH_RECEIVER_URL": os.environ["BENCH_RECEIVER_URL"]},
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def _command(self, line: str, expected: str) -> None:
        assert self.process is not None
        stdin: IO[str] | None = self.process.stdin
        stdout: IO[str] | None = self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(line + "\n")
        stdin.flush()
        if expected:
            self._expect(expected)

    def _expect(self, expected: str) -> None:
        assert self.process is not None and self.process.stdout is not None
        answer = self.process.stdout.readline().strip()
        if answer != expected:
            raise RuntimeError(f"raw runner answered {answer!r}, expected {expected}")

    def prepare(self, jobs: Sequence[dict[str, Any]]) -> None:
        path = self.work_dir / "raw-jobs.jsonl"
        path.write_text("".join(json.dumps(job) + "\n" for job in jobs))
        self._command(f"LOAD {path}", "loaded")

    def submit(self) -> float:
        submitted = time.time()
        self._command("GO", "")
        return submitted

    def finish(self) -> None:
        self._expect("done")

    def stop(self) -> None:
        if self.process is not None and self.process.stdin is not None:
            self.process.stdin.close()
        _stop_process(self.process)


class QueueSystem(System):
    """A Celery worker fed by one RENAME of a prebuilt list onto its queue.

    The envelopes are pushed to a staging list before the clock starts; RENAME
    then makes all of them visible at once, so the producer costs nothing.
    """

    queue = ""
    task_name = ""

    def prepare(self, jobs: Sequence[dict[str, Any]]) -> None:
        staging = f"{self.queue}:staging"
        self.client.delete(staging)
        pipe = self.client.pipeline(transaction=False)
        for index, job in enumerate(jobs):
            pipe.lpush(staging, envelope(self.queue, self.task_name, job))
            if index % 500 == 499:
                pipe.execute()
        pipe.execute()

    def submit(self) -> float:
        submitted = time.time()
        if self.client.exists(self.queue):
            raise RuntimeError(f"queue {self.queue} is not empty before a run")
        self.client.rename(f"{self.queue}:staging", self.queue)
        return submitted


class PlainCelery(QueueSystem):
    """The minimal Celery app of bench.plain_app, as a real worker process."""

    name = "plain"
    task_name = PLAIN_TASK

    def __init__(
        self,
        client: redis.Redis,
        work_dir: Path,
        redis_url: str,
        pool: str,
        concurrency: int,
    ) -> None:
        super().__init__(client, work_dir)
        self.queue = "bench_plain"
        self.stream = "bench_plain:results"
        self.redis_url = redis_url
        self.pool = pool
        self.concurrency = concurrency
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = work_dir / f"plain-{pool}.log"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        env = {
            **os.environ,
            "BENCH_BROKER_URL": self.redis_url,
            "BENCH_PLAIN_QUEUE": self.queue,
            "BENCH_PLAIN_STREAM": self.stream,
        }
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [
                    project_python(),
                    "-m",
                    "celery",
                    "-A",
                    "bench.plain_app",
                    "worker",
                    "-Q",
                    self.queue,
                    "--pool",
                    self.pool,
                    "--concurrency",
                    str(self.concurrency),
                    "-n",
                    "bench-plain@%h",
                ],
                cwd=PROJECT_ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        _stop_process(self.process)


class ThisWorker(QueueSystem):
    """``webhook-step-worker worker`` with the real task, settings and publishing."""

    name = "worker"
    task_name = WORKER_TASK

    def __init__(
        self,
        client: redis.Redis,
        work_dir: Path,
        redis_url: str,
        config_dir: Path,
        pool: str,
        concurrency: int,
        *,
        task_events: bool,
    ) -> None:
        super().__init__(client, work_dir)
        names = WorkerNames(
            queue="bench_worker",
            result_stream="bench_worker:results",
            dead_letter_stream="bench_worker:dead",
            key_prefix="bench_worker",
        )
        self.queue = names.queue
        self.stream = names.result_stream
        self.log_path = work_dir / f"worker-{pool}.log"
        self.log_offset = 0
        self.worker = WorkerProcess(
            redis_url=redis_url,
            config_dir=config_dir,
            log_path=self.log_path,
            names=names,
            pool=pool,
            concurrency=concurrency,
            extra_env={
                "WEBHOOK_WORKER_HEALTH_FILE": str(work_dir / "worker.health"),
                "WEBHOOK_WORKER_TASK_EVENTS": "true" if task_events else "false",
            },
            extra_args=["-n", "bench-worker@%h"],
        )

    @property
    def pid(self) -> int:
        assert self.worker.process is not None
        return self.worker.process.pid

    def start(self) -> None:
        self.worker.start(ready_timeout_s=START_TIMEOUT_S)

    def stop(self) -> None:
        self.worker.stop()

    def submit(self) -> float:
        self.log_offset = self.log_path.stat().st_size
        return super().submit()

    def rescheduled_at(self) -> dict[str, float]:
        with self.log_path.open("rb") as log_file:
            log_file.seek(self.log_offset)
            text = log_file.read().decode("utf-8", errors="replace")
        found: dict[str, float] = {}
        for line in text.splitlines():
            if '"job.rescheduled"' not in line:
                continue
            try:
                record = json.loads(line)
                moment = datetime.fromisoformat(record["timestamp"])
            except (ValueError, KeyError):
                continue
            found.setdefault(record.get("job_id", ""), moment.timestamp())
        return found


def log_tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
