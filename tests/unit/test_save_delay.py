"""worker.save_delay: which task messages wait for the order to be saved."""

from __future__ import annotations

from typing import Any

import pytest
from celery.app.task import Context

from worker import jsontext
from worker.save_delay import (
    SAVE_DELAY_HEADER,
    _set_delay,
    delay_was_set,
    delayed_job,
    mentions_delay,
    with_delay_done,
)
from worker.step import PROGRESS_KEY


def payload(
    step: dict[str, Any], kwargs: dict[str, Any] | None = None, **job: Any
) -> list[Any]:
    full_job = {
        "JobId": "j-1",
        "TenantId": "t",
        "Step": step,
        "Order": {"Id": 1},
        **job,
    }
    return [[full_job], kwargs or {}, {}]


def test_delay_for_system_service() -> None:
    job = delayed_job(payload({"RunAfterOrderIsSaved": True}))
    assert job is not None
    assert job["JobId"] == "j-1"


def test_delay_reads_any_casing() -> None:
    message = payload({"runafterorderissaved": True}, runBySystemService=True)
    assert delayed_job(message) is not None


def test_delay_after_worker_codec() -> None:
    body = jsontext.dumps(payload({"RunAfterOrderIsSaved": True}, None, Price=9.90))
    assert delayed_job(jsontext.loads(body)) is not None


@pytest.mark.parametrize(
    "message",
    [
        payload({"RunAfterOrderIsSaved": False}),
        payload({}),
        payload({"RunAfterOrderIsSaved": True}, RunBySystemService=False),
        # Not booleans: the job is invalid and gets its error without waiting.
        payload({"RunAfterOrderIsSaved": "true"}),
        payload({"RunAfterOrderIsSaved": True}, RunBySystemService="yes"),
        # A retry the worker published carries its progress: delay already done.
        payload({"RunAfterOrderIsSaved": True}, {PROGRESS_KEY: {"delayed": True}}),
        [[{"Step": {"RunAfterOrderIsSaved": True}}, {}], {}, {}],
        [[{"Step": {"RunAfterOrderIsSaved": True}}], []],
        [[["not", "a", "job"]], {}, {}],
        {"RunAfterOrderIsSaved": True},
        [],
        None,
    ],
)
def test_no_delay(message: Any) -> None:
    assert delayed_job(message) is None


@pytest.mark.parametrize(
    ("body", "mentioned"),
    [
        (b'[[{"Step":{"RunAfterOrderIsSaved":true}}],{},{}]', True),
        ('[[{"step":{"RUNAFTERORDERISSAVED":true}}],{},{}]', True),
        (b'[[{"Step":{}}],{},{}]', False),
        (b"\xff\xfe", False),
        (None, False),
    ],
)
def test_mentions_delay(body: Any, mentioned: bool) -> None:
    assert mentions_delay(body) is mentioned


def test_delay_done_keeps_progress() -> None:
    kwargs = {PROGRESS_KEY: {"attempts": 2, "delayed": False}}
    marked = with_delay_done(kwargs)
    assert marked[PROGRESS_KEY] == {"attempts": 2, "delayed": True}
    assert kwargs[PROGRESS_KEY]["delayed"] is False


def test_delay_done_without_progress() -> None:
    assert with_delay_done({}) == {PROGRESS_KEY: {"delayed": True}}


def test_forged_mark_ignored() -> None:
    request = Context({SAVE_DELAY_HEADER: "guessed", "headers": {}})
    assert delay_was_set(request) is False


def test_mark_read_and_removed() -> None:
    headers: dict[str, Any] = {"id": "t-1"}
    job = payload({"RunAfterOrderIsSaved": True})[0][0]
    _set_delay(headers, job)
    request = Context({**headers, "headers": dict(headers)})
    assert delay_was_set(request) is True
    assert SAVE_DELAY_HEADER not in request.headers
