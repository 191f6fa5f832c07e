"""Poison messages mixed into a stream of good jobs.

Every kind of message the worker cannot run must end in the dead-letter
stream with its kind and be counted in ``<KEY_PREFIX>:rejected``. Poison with
a readable JobId also gets an Error result. Good jobs around the poison must
all finish, and no order data or request-header secret of a poison message
may reach the worker log.
"""

from __future__ import annotations

import json
import pickle
import random
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.reliability.common import (
    args_json,
    job,
    result_counts,
    wait_until,
    write_tenant,
)
from tests.support.raw_messages import (
    EMBED_JSON,
    envelope,
    push_envelopes,
    task_envelope,
    task_headers,
)
from tests.support.redis_server import RedisServer
from tests.support.webhook_server import Reply, running_server
from tests.support.worker_process import (
    StreamEntry,
    WorkerNames,
    read_stream,
    running_worker,
)

pytestmark = pytest.mark.reliability

GOOD_JOBS = 129
EACH_POISON = 10
MAX_JOB_BYTES = 20_000
LARGE_ORDER_BYTES = 50_000


@dataclass(frozen=True)
class Poison:
    """One poison message, the dead-letter kind it must get, and its markers."""

    kind: str
    envelope: str
    token: str
    job_id: str | None
    # Text in the result's ErrorReason, for poison that gets a result.
    reason_text: str | None
    email: str
    secret: str
    json_body: bool = True


def poison_job(token: str, job_id: str | None, **order: Any) -> dict[str, Any]:
    """Return a job whose order and request header carry markers made of ``token``."""
    header = {
        "Key": "X-Api-Token",
        "Value": f"hdr-{token}",
        "KeyGroup": "RequestHeaders",
    }
    return job(
        job_id,
        properties=[header],
        order_id=f"ORD-{token}",
        Customer={"Email": f"buyer-{token}@example.com"},
        **order,
    )


@dataclass(frozen=True)
class Built:
    """A poison message's envelope and what the worker must make of it."""

    envelope: str
    # JobId of poison that must get an Error result, and text of its ErrorReason.
    job_id: str | None = None
    reason_text: str | None = None
    # False when the body is not JSON, so the worker cannot scrub its secrets.
    json_body: bool = True


def task_body(args: str) -> bytes:
    return f"[{args},{{}},{EMBED_JSON}]".encode()


def not_json(queue: str, token: str) -> Built:
    text = args_json(poison_job(token, f"poison-{token}"))
    body = b"\xff\xfe not json " + task_body(text)
    headers = task_headers(f"task-{token}")
    return Built(envelope(queue, body, headers), json_body=False)


def pickled(queue: str, token: str) -> Built:
    body = pickle.dumps(([poison_job(token, f"poison-{token}")], {}, {}))
    headers = task_headers(f"task-{token}")
    text = envelope(queue, body, headers, content_type="application/x-python-serialize")
    return Built(text, json_body=False)


def unknown_task(queue: str, token: str) -> Built:
    job_id = f"poison-{token}"
    body = task_body(args_json(poison_job(token, job_id)))
    headers = task_headers(str(uuid.uuid4()), task="webhook_step.cancel")
    return Built(envelope(queue, body, headers), job_id, "no task named")


def no_task_name(queue: str, token: str) -> Built:
    job_id = f"poison-{token}"
    body = task_body(args_json(poison_job(token, job_id)))
    headers = task_headers(str(uuid.uuid4()), task=None)
    return Built(envelope(queue, body, headers), job_id, "not a Celery task message")


def no_job_id(queue: str, token: str) -> Built:
    return Built(task_envelope(queue, args_json(poison_job(token, None))))


def extra_args(queue: str, token: str) -> Built:
    job_id = f"poison-{token}"
    text = task_envelope(queue, args_json(poison_job(token, job_id), "extra"))
    return Built(text, job_id, "exactly one positional argument")


def too_large(queue: str, token: str) -> Built:
    job_id = f"poison-{token}"
    filler = "x" * LARGE_ORDER_BYTES
    text = task_envelope(queue, args_json(poison_job(token, job_id, Note=filler)))
    return Built(text, job_id, "WEBHOOK_WORKER_MAX_JOB_BYTES")


# Each builder, by the dead-letter kind its message must get.
BUILDERS: dict[str, Callable[[str, str], Built]] = {
    "not_decodable": not_json,
    "invalid_task": pickled,
    "unknown_task": unknown_task,
    "unknown_message": no_task_name,
    "no_job_id": no_job_id,
    "bad_arguments": extra_args,
    "too_large": too_large,
}


def build_poison(queue: str) -> list[Poison]:
    poison = []
    for kind, builder in BUILDERS.items():
        for _ in range(EACH_POISON):
            token = uuid.uuid4().hex[:12]
            built = builder(queue, token)
            poison.append(
                Poison(
                    kind=kind,
                    envelope=built.envelope,
                    token=token,
                    job_id=built.job_id,
                    reason_text=built.reason_text,
                    email=f"buyer-{token}@example.com",
                    secret=f"hdr-{token}",
                    json_body=built.json_body,
                )
            )
    return poison


def dead_kinds_of(dead: list[StreamEntry], token: str) -> list[str]:
    """Return the kinds of the dead-letter entries whose payload contains ``token``."""
    return [
        entry.fields.get("kind", "")
        for entry in dead
        if token in entry.fields.get("payload", "")
    ]


def test_poison_mix(
    redis_server: RedisServer, config_dir: Path, tmp_path: Path
) -> None:
    names = WorkerNames.unique("poison")
    client = redis_server.client()
    with running_server() as webhook:
        webhook.route("/hook", lambda _request: Reply.json("{}"))
        write_tenant(config_dir, webhook.url("/hook"))
        with running_worker(
            redis_url=redis_server.url,
            config_dir=config_dir,
            log_path=tmp_path / "worker.log",
            names=names,
            concurrency=4,
            extra_env={"WEBHOOK_WORKER_MAX_JOB_BYTES": str(MAX_JOB_BYTES)},
        ) as worker:
            poison = build_poison(names.queue)
            good_ids = [f"good-{index:04d}" for index in range(GOOD_JOBS)]
            good = [
                task_envelope(names.queue, args_json(job(job_id)))
                for job_id in good_ids
            ]
            mixed = good + [item.envelope for item in poison]
            random.Random(20261204).shuffle(mixed)
            last_id = "good-last"
            mixed.append(task_envelope(names.queue, args_json(job(last_id))))
            push_envelopes(client, names.queue, mixed)

            expected_ids = {*good_ids, last_id}
            expected_ids.update(item.job_id for item in poison if item.job_id)
            finished, elapsed_s = wait_until(
                lambda: (
                    expected_ids <= set(result_counts(client, names.result_stream))
                    or worker.process is None
                    or worker.process.poll() is not None
                ),
                timeout_s=60,
                interval_s=0.2,
            )
            dead_finished, _ = wait_until(
                lambda: client.xlen(names.dead_letter_stream) >= len(poison),
                timeout_s=10,
                interval_s=0.2,
            )
            exit_code = worker.process.poll() if worker.process else None
            results = {
                entry.fields["job_id"]: entry.result
                for entry in read_stream(client, names.result_stream)
            }
            counts = result_counts(client, names.result_stream)
            dead = read_stream(client, names.dead_letter_stream)
            rejected_key = f"{names.key_prefix}:rejected"
            rejected = {
                kind.decode() if isinstance(kind, bytes) else kind: int(count)
                for kind, count in client.hgetall(rejected_key).items()
            }
            log_text = worker.log_text()

    expected_kinds = Counter(item.kind for item in poison)
    dead_kinds = Counter(entry.fields.get("kind") for entry in dead)
    missing_good = expected_ids - set(results)
    wrong_dead = [
        (item.kind, dead_kinds_of(dead, item.token))
        for item in poison
        if dead_kinds_of(dead, item.token) != [item.kind]
    ]
    leaked_to_log = [
        item.kind
        for item in poison
        if item.email in log_text or item.secret in log_text
    ]
    secret_in_dead = Counter(
        item.kind
        for item in poison
        if any(item.secret in entry.fields["payload"] for entry in dead)
    )
    print(
        f"\npoison mix: messages sent {len(mixed)}, good {len(good_ids) + 1}, "
        f"poison {len(poison)}, results {len(counts)}, "
        f"duplicates {sum(c - 1 for c in counts.values())}, "
        f"lost {len(missing_good)}, dead letters {dict(dead_kinds)}, "
        f"rejected hash {rejected}, wrong dead letters {len(wrong_dead)}, "
        f"leaked to log {len(leaked_to_log)}, secrets in dead letters "
        f"{dict(secret_in_dead)}, worker exit code {exit_code}, {elapsed_s:.1f} s"
    )
    assert exit_code is None, f"the worker exited:\n{worker.log_tail()}"
    assert finished, f"no result for {sorted(missing_good)[:10]}"
    assert dead_finished, f"{len(dead)} dead letters for {len(poison)} poison"
    assert last_id in results
    failed_good = [j for j in good_ids if results[j]["ActionStatus"] != "Success"]
    assert not failed_good, failed_good[:5]
    assert sum(counts.values()) == len(counts), "a JobId has two results"
    for item in poison:
        if item.job_id is None:
            continue
        result = results[item.job_id]
        assert result["ActionStatus"] == "Error", item.kind
        assert item.reason_text in (result["ErrorReason"] or ""), result
        if item.kind != "bad_arguments":
            assert result["Order"] is None, f"the {item.kind} result has the order"
    assert not wrong_dead, wrong_dead[:5]
    assert dead_kinds == expected_kinds
    assert rejected == dict(expected_kinds)
    assert not leaked_to_log, Counter(leaked_to_log)
    assert "x" * 1000 not in log_text, "the large order's filler is in the log"
    assert not secret_in_dead, secret_in_dead


# Bodies that are JSON but not Celery's [args, kwargs, embed] list.
MALFORMED_BODIES: dict[str, Callable[[str], str]] = {
    "job object": lambda job_text: job_text,
    "two-item list": lambda job_text: f"[[{job_text}],{{}}]",
    "number": lambda _job_text: "42",
}


@pytest.mark.parametrize("shape", sorted(MALFORMED_BODIES))
def test_malformed_body(
    shape: str, redis_server: RedisServer, config_dir: Path, tmp_path: Path
) -> None:
    names = WorkerNames.unique("malformed")
    client = redis_server.client()
    token = uuid.uuid4().hex[:12]
    job_text = json.dumps(poison_job(token, f"poison-{token}"))
    body = MALFORMED_BODIES[shape](job_text).encode("utf-8")
    with running_server() as webhook:
        webhook.route("/hook", lambda _request: Reply.json("{}"))
        write_tenant(config_dir, webhook.url("/hook"))
        with running_worker(
            redis_url=redis_server.url,
            config_dir=config_dir,
            log_path=tmp_path / "worker.log",
            names=names,
            concurrency=2,
        ) as worker:
            push_envelopes(
                client,
                names.queue,
                [
                    envelope(names.queue, body, task_headers(str(uuid.uuid4()))),
                    task_envelope(names.queue, args_json(job("after-malformed"))),
                ],
            )
            finished, elapsed_s = wait_until(
                lambda: (
                    "after-malformed" in result_counts(client, names.result_stream)
                    or worker.process is None
                    or worker.process.poll() is not None
                ),
                timeout_s=20,
                interval_s=0.1,
            )
            exit_code = worker.process.poll() if worker.process else None
            dead = read_stream(client, names.dead_letter_stream)
            results = result_counts(client, names.result_stream)
            crashed = [
                record.get("event")
                for record in worker.log_records()
                if str(record.get("event", "")).startswith("Unrecoverable error")
            ]
            requeued = client.llen(names.queue)

    print(
        f"\nmalformed body ({shape}): messages sent 2, results {len(results)}, "
        f"dead letters {[entry.fields.get('kind') for entry in dead]}, "
        f"worker exit code {exit_code}, crash lines {crashed}, "
        f"messages back in the queue {requeued}, {elapsed_s:.1f} s"
    )
    assert exit_code is None, f"the worker exited with {exit_code}: {crashed}"
    assert finished, "the good job after the malformed one got no result"
    assert [entry.fields.get("kind") for entry in dead] == ["invalid_task"]
