"""A real Celery worker in a subprocess, and producers that feed it, for e2e tests.

``running_worker`` starts ``python -m worker.cli worker`` against a private Redis
with its own queue, streams and key prefix, waits for Celery's "ready" log line
and stops the process with SIGTERM, then SIGKILL. Jobs reach the worker the way
an outside producer sends them: through ``webhook-step-worker submit``, or as a
Celery protocol 2 message whose JSON body text is written by hand, so numbers
keep the exact digits the test wrote.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import redis
from kombu.connection import Connection
from kombu.entity import Exchange, Queue

from worker.message import task_envelope

PROJECT_ROOT = Path(__file__).resolve().parents[2]
ENV_PREFIX = "WEBHOOK_WORKER_"
TASK_NAME = "webhook_step.execute"


def project_python() -> str:
    """Return the project's virtualenv interpreter, else the one running the tests."""
    venv_python = PROJECT_ROOT / ".venv" / "bin" / "python"
    return str(venv_python) if venv_python.exists() else sys.executable


@dataclass(frozen=True)
class WorkerNames:
    """Queue, streams and key prefix of one worker, unique so tests cannot mix."""

    queue: str
    result_stream: str
    dead_letter_stream: str
    key_prefix: str

    @classmethod
    def unique(cls, label: str = "e2e") -> WorkerNames:
        token = f"{label}-{uuid.uuid4().hex[:10]}"
        return cls(
            queue=f"{token}:jobs",
            result_stream=f"{token}:results",
            dead_letter_stream=f"{token}:dead",
            key_prefix=token,
        )


class WorkerProcess:
    """One ``webhook-step-worker worker`` subprocess that logs JSON lines to a file."""

    def __init__(
        self,
        *,
        redis_url: str,
        config_dir: Path,
        log_path: Path,
        names: WorkerNames,
        pool: str = "threads",
        concurrency: int = 4,
        extra_env: Mapping[str, str] | None = None,
        extra_args: Sequence[str] = (),
    ) -> None:
        self.redis_url = redis_url
        self.config_dir = config_dir
        self.log_path = log_path
        self.names = names
        self.command = [
            project_python(),
            "-m",
            "worker.cli",
            "worker",
            "--pool",
            pool,
            "--concurrency",
            str(concurrency),
            *extra_args,
        ]
        self.env = worker_environment(
            redis_url=redis_url,
            config_dir=config_dir,
            names=names,
            extra_env=extra_env,
        )
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_timeout_s: float = 30.0) -> None:
        """Start the worker and return once Celery logs that it consumes.

        Raises:
            RuntimeError: the process exited or was not ready in time. The
                message ends with the log tail.
        """
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                self.command,
                cwd=PROJECT_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + ready_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"the worker exited with code {self.process.returncode} before "
                    f"it was ready; log tail:\n{self.log_tail()}"
                )
            if any(_is_ready_line(record) for record in self.log_records()):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(
            f"the worker was not ready within {ready_timeout_s:g} s; "
            f"log tail:\n{self.log_tail()}"
        )

    def stop(self, term_timeout_s: float = 15.0) -> int | None:
        """Send SIGTERM and return the exit code.

        SIGKILL follows when the worker still runs after ``term_timeout_s``.
        """
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=term_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        return process.returncode

    def kill(
        self, sig: int = signal.SIGKILL, wait_timeout_s: float = 15.0
    ) -> int | None:
        """Send ``sig`` and return the exit code once the process has ended.

        SIGKILL follows when the process still runs after ``wait_timeout_s``.
        """
        process = self.process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(sig)
            try:
                process.wait(timeout=wait_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
        return process.returncode

    def log_text(self) -> str:
        """Return everything the worker wrote to stdout and stderr so far."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_records(self) -> list[dict[str, Any]]:
        """Return the JSON log lines, skipping Celery's banner and warnings."""
        records = []
        for line in self.log_text().splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
        return records

    def state(self) -> str:
        """Return "running", "exited with code N" or "not started"."""
        if self.process is None:
            return "not started"
        code = self.process.poll()
        return "running" if code is None else f"exited with code {code}"

    def diagnosis(self, lines: int = 30) -> str:
        """Return the process state and its last warnings, errors and raw lines.

        Meant for a failed test's message. Lines about jobs that went well
        are left out, so the worker's own errors are easy to find.
        """
        shown_lines = []
        for line in self.log_text().splitlines():
            record: Any = None
            if line.startswith("{"):
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
            if isinstance(record, dict) and record.get("level") in ("debug", "info"):
                continue
            if line.strip():
                shown_lines.append(line[:400])
        tail = "\n".join(shown_lines[-lines:])
        return f"worker {self.state()}; its last warnings and errors:\n{tail}"

    def records_of(self, event: str, job_id: str) -> list[dict[str, Any]]:
        """Return the log records of one event name for one JobId."""
        return [
            record
            for record in self.log_records()
            if record.get("event") == event and record.get("job_id") == job_id
        ]

    def wait_for_record(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        timeout_s: float = 10.0,
        description: str = "a matching log line",
    ) -> dict[str, Any]:
        """Return the first log record that matches, polling for ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            for record in self.log_records():
                if predicate(record):
                    return record
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"no {description} in the worker log within {timeout_s:g} s; "
                    f"log tail:\n{self.log_tail()}"
                )
            time.sleep(0.05)


def _is_ready_line(record: Mapping[str, Any]) -> bool:
    # Celery 5.7 logs "<nodename> ready." once the consumer reads the queue
    # (celery/apps/worker.py, on_consumer_ready).
    event = record.get("event")
    return (
        record.get("logger") == "celery.apps.worker"
        and isinstance(event, str)
        and event.endswith(" ready.")
    )


def worker_environment(
    *,
    redis_url: str,
    config_dir: Path,
    names: WorkerNames,
    extra_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """Return the environment of a worker or CLI process bound to ``names``.

    Settings inherited from the test process are dropped, so nothing can point
    the worker at another Redis.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(ENV_PREFIX)
    }
    env.update(
        {
            f"{ENV_PREFIX}BROKER_URL": redis_url,
            f"{ENV_PREFIX}REDIS_URL": redis_url,
            f"{ENV_PREFIX}CONFIG_DIR": str(config_dir),
            f"{ENV_PREFIX}QUEUE": names.queue,
            f"{ENV_PREFIX}RESULT_STREAM": names.result_stream,
            f"{ENV_PREFIX}DEAD_LETTER_STREAM": names.dead_letter_stream,
            f"{ENV_PREFIX}KEY_PREFIX": names.key_prefix,
            f"{ENV_PREFIX}ALLOW_PRIVATE_NETWORKS": "true",
            f"{ENV_PREFIX}LOG_FORMAT": "json",
            f"{ENV_PREFIX}LOG_LEVEL": "INFO",
            # No metrics endpoint unless a test requests one, because the default
            # port 9808 would clash between the workers of one test run.
            f"{ENV_PREFIX}METRICS_PORT": "0",
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra_env or {})
    return env


@contextmanager
def running_worker(
    *,
    redis_url: str,
    config_dir: Path,
    log_path: Path,
    names: WorkerNames | None = None,
    pool: str = "threads",
    concurrency: int = 4,
    extra_env: Mapping[str, str] | None = None,
    ready_timeout_s: float = 30.0,
) -> Iterator[WorkerProcess]:
    """Run a worker for the ``with`` block and stop it afterwards, also on errors."""
    worker = WorkerProcess(
        redis_url=redis_url,
        config_dir=config_dir,
        log_path=log_path,
        names=names or WorkerNames.unique(),
        pool=pool,
        concurrency=concurrency,
        extra_env=extra_env,
    )
    try:
        worker.start(ready_timeout_s)
        yield worker
    finally:
        worker.stop()


def submit_with_cli(
    env: Mapping[str, str], job_files: Sequence[Path], timeout_s: float = 30.0
) -> list[str]:
    """Enqueue job files with ``webhook-step-worker submit`` and return the JobIds.

    Raises:
        RuntimeError: the command failed. The message contains its stderr.
    """
    completed = subprocess.run(
        [project_python(), "-m", "worker.cli", "submit", *map(str, job_files)],
        cwd=PROJECT_ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"webhook-step-worker submit exited with {completed.returncode}: "
            f"{completed.stderr.strip()}"
        )
    return completed.stdout.split()


def publish_task_message(
    broker_url: str,
    queue: str,
    args_json: str,
    *,
    kwargs_json: str = "{}",
    argsrepr: str = "(sent by the e2e producer)",
) -> str:
    """Publish a ``webhook_step.execute`` message in Celery protocol 2, return its id.

    ``args_json`` is the JSON text of the argument list and goes into the body
    unchanged, as a producer outside Python would write it.
    """
    task_id = str(uuid.uuid4())
    headers = {
        "lang": "py",
        "task": TASK_NAME,
        "id": task_id,
        "shadow": None,
        "eta": None,
        "expires": None,
        "group": None,
        "group_index": None,
        "retries": 0,
        "timelimit": [None, None],
        "root_id": task_id,
        "parent_id": None,
        "argsrepr": argsrepr,
        "kwargsrepr": "{}",
        "origin": "e2e-producer",
        "ignore_result": False,
    }
    embed = '{"callbacks":null,"errbacks":null,"chain":null,"chord":null}'
    body = f"[{args_json},{kwargs_json},{embed}]"
    # kombu has no type hints.
    exchange = Exchange(queue, type="direct")  # type: ignore[no-untyped-call]
    with Connection(broker_url) as connection:  # type: ignore[no-untyped-call]
        producer = connection.Producer()
        producer.publish(
            body,
            exchange=exchange,
            routing_key=queue,
            declare=[Queue(queue, exchange, routing_key=queue)],  # type: ignore[no-untyped-call]
            content_type="application/json",
            content_encoding="utf-8",
            headers=headers,
            correlation_id=task_id,
            reply_to="",
            retry=False,
        )
    return task_id


def task_message_text(queue: str, args_json: str) -> tuple[str, str]:
    """Return the task id and the kombu Redis envelope of one task message.

    ``LPUSH <queue> <envelope>`` enqueues the task without a kombu producer.
    ``args_json`` is the JSON text of the argument list, used unchanged.
    """
    task_id = str(uuid.uuid4())
    text = task_envelope(
        queue,
        args_json,
        task_id=task_id,
        argsrepr="(sent by the bulk producer)",
        origin="bulk-producer",
    )
    return task_id, text


def push_task_messages(
    client: redis.Redis, queue: str, args_jsons: Sequence[str]
) -> list[str]:
    """Enqueue one task message per argument list in one pipeline; return task ids.

    The messages are consumed in the order given, because kombu's Redis
    transport pops from the other end of the list.
    """
    task_ids = []
    pipe = client.pipeline(transaction=False)
    for args_json in args_jsons:
        task_id, text = task_message_text(queue, args_json)
        task_ids.append(task_id)
        pipe.lpush(queue, text)
    pipe.execute()
    return task_ids


@dataclass(frozen=True)
class StreamEntry:
    """One entry of a Redis stream, with its fields decoded as UTF-8."""

    entry_id: str
    fields: dict[str, str]

    @property
    def result(self) -> dict[str, Any]:
        """The parsed ``result`` field of a result-stream entry."""
        parsed = json.loads(self.fields["result"])
        assert isinstance(parsed, dict)
        return parsed


def read_stream(client: redis.Redis, stream: str) -> list[StreamEntry]:
    """Return every entry of ``stream``, oldest first."""
    entries = []
    for entry_id, fields in client.xrange(stream) or []:
        decoded = {_text(key): _text(value) for key, value in (fields or {}).items()}
        entries.append(StreamEntry(_text(entry_id), decoded))
    return entries


def _text(value: bytes | str | None) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return "" if value is None else value


def wait_for_entries(
    client: redis.Redis,
    stream: str,
    count: int,
    *,
    job_ids: Collection[str] | None = None,
    match: Callable[[StreamEntry], bool] | None = None,
    timeout_s: float = 20.0,
) -> list[StreamEntry]:
    """Poll ``stream`` until ``count`` entries match and return the matching ones.

    ``job_ids`` keeps entries whose ``job_id`` field is in it, and ``match``
    keeps entries for which it returns True. Without either, all entries count.

    Raises:
        TimeoutError: fewer entries arrived in time. The message lists them.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        entries = read_stream(client, stream)
        if job_ids is not None:
            entries = [e for e in entries if e.fields.get("job_id") in job_ids]
        if match is not None:
            entries = [e for e in entries if match(e)]
        if len(entries) >= count:
            return entries
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{stream} has {len(entries)} of {count} expected entries after "
                f"{timeout_s:g} s: {[e.fields for e in entries]}"
            )
        time.sleep(0.05)


@dataclass(frozen=True)
class TaskEvent:
    """One Celery event as published on the broker's ``celeryev`` fanout exchange."""

    channel: str
    fields: dict[str, Any]


class TaskEventRecorder:
    """Collects Celery events from Redis pub/sub.

    kombu's Redis transport publishes the fanout ``celeryev`` exchange there.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub.psubscribe("*celeryev*")
        self.events: list[TaskEvent] = []

    def drain(self, timeout_s: float = 0.5, max_s: float = 5.0) -> None:
        """Read events until none came for ``timeout_s``, for at most ``max_s``."""
        stop_at = time.monotonic() + max_s
        while time.monotonic() < stop_at:
            message = self._pubsub.get_message(timeout=timeout_s)
            if message is None:
                return
            channel = message["channel"].decode("utf-8")
            for fields in _decode_events(message["data"]):
                self.events.append(TaskEvent(channel, fields))

    def wait_for(
        self,
        predicate: Callable[[dict[str, Any]], bool],
        count: int = 1,
        timeout_s: float = 10.0,
    ) -> list[dict[str, Any]]:
        """Read events until ``count`` of them match and return the matching ones.

        Raises:
            TimeoutError: fewer matched within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            matching = [e.fields for e in self.events if predicate(e.fields)]
            if len(matching) >= count:
                return matching
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{len(matching)} of {count} expected Celery events arrived "
                    f"within {timeout_s:g} s: {matching}"
                )
            self.drain(timeout_s=0.2)

    def of_type(self, event_type: str) -> list[TaskEvent]:
        return [e for e in self.events if e.fields.get("type") == event_type]

    def close(self) -> None:
        self._pubsub.close()


def _decode_events(data: bytes) -> list[dict[str, Any]]:
    """Return the events in one message, several for a buffered ``task.multi``."""
    envelope = json.loads(data)
    body = envelope["body"]
    if envelope.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body).decode("utf-8")
    parsed = json.loads(body)
    events = parsed if isinstance(parsed, list) else [parsed]
    return [event for event in events if isinstance(event, dict)]
