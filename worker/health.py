"""Liveness for container probes: a file the worker rewrites while it can consume.

A consumer bootstep pings the broker every few seconds from a timer of the
consumer's event loop and, when the ping works, writes the current time to the
health file. Celery stops the step while it reconnects, and a stuck event loop
runs no timer, so the file goes stale in both cases. The ``health`` command
reads the file.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import structlog
from celery import bootsteps

from worker.redis_client import redis_from_url

log = structlog.get_logger(__name__)

# Seconds between two pings of the broker.
BEAT_INTERVAL_S = 5.0


def write_beat(path: Path, now: float | None = None) -> None:
    """Write the time to ``path`` atomically, so a reader never sees half a file."""
    temporary = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    temporary.write_text(f"{now if now is not None else time.time():.3f}\n")
    temporary.replace(path)


def check_health(path: Path, max_age_s: float, now: float | None = None) -> str | None:
    """Return why the worker is unhealthy, or None when its last beat is recent."""
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return (
            f"no health file at {path}: the worker is not running, has not "
            "connected yet, or uses another WEBHOOK_WORKER_HEALTH_FILE"
        )
    except OSError as error:
        return f"cannot read the health file {path}: {error.strerror}"
    try:
        beat = float(text)
    except ValueError:
        return f"the health file {path} holds {text[:40]!r}, not a time"
    age_s = (now if now is not None else time.time()) - beat
    if age_s > max_age_s:
        return (
            f"the last successful broker ping was {age_s:.0f} s ago (limit "
            f"{max_age_s:g} s): the worker is not connected or its consumer is stuck"
        )
    return None


class HealthBeat(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step that pings the broker and writes the health file."""

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        from worker.settings import get_settings

        super().__init__(parent, **kwargs)
        settings = get_settings()
        self.path = settings.health_file
        # A connection of its own: the consumer's connection is busy with BRPOP,
        # and a command sent on it would read BRPOP's reply.
        self.client = redis_from_url(
            settings.broker_url,
            settings,
            socket_timeout=2.0,
            socket_connect_timeout=2.0,
        )
        self.timer_entry: Any = None
        self.failing = False

    def start(self, parent: Any) -> None:
        self.beat(parent)
        self.timer_entry = parent.timer.call_repeatedly(
            BEAT_INTERVAL_S, self.beat, (parent,), priority=10
        )

    def beat(self, parent: Any) -> None:
        try:
            self.client.ping()
            write_beat(self.path)
        except Exception as error:
            # One line per outage. The stale file reports the rest to the probe.
            if not self.failing:
                log.warning(
                    "health.beat_failed", error=f"{type(error).__name__}: {error}"
                )
            self.failing = True
            return
        if self.failing:
            log.info("health.beat_restored")
        self.failing = False

    def stop(self, parent: Any) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()
            self.timer_entry = None

    def shutdown(self, parent: Any) -> None:
        self.stop(parent)
        self.path.unlink(missing_ok=True)
