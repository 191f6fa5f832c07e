"""Run the example jobs end to end: receiver, worker process, Redis, result table.

The demo uses its own queue, result stream and key prefix on the configured
broker, so it never takes jobs from, or adds results to, a real deployment
that shares the Redis server. It copies the example tenant settings and jobs
to a temporary folder, pointing their ``127.0.0.1:8765`` addresses at the
port the receiver got.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

EXAMPLE_PORT_TEXT = "127.0.0.1:8765"
DEMO_NAME = "webhook_steps_demo"
# Bound on the whole wait for results; the slowest example needs about 2 s.
RESULT_TIMEOUT_S = 60.0
WORKER_STOP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Expected:
    """The result an example job must get."""

    action_status: str
    cancel_workflow: bool
    attempts: int


# Keyed by the example job's file name without ".json".
EXPECTED = {
    "01-approve": Expected("Success", False, 1),
    "02-enrich": Expected("Success", False, 1),
    "03-reject-stop": Expected("Error", True, 1),
    "04-flaky-retry": Expected("Success", False, 2),
    "05-after-save": Expected("Success", False, 1),
    "06-inline-host": Expected("Success", False, 1),
    "07-no-connector": Expected("Error", False, 0),
    "08-invalid": Expected("Error", True, 0),
}


def examples_dir() -> Path:
    """Return ``config/examples`` of the source checkout this package runs from."""
    return Path(__file__).resolve().parents[2] / "config" / "examples"


def _copy_with_port(source: Path, target: Path, port: int) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.glob("*.json")):
        text = path.read_text(encoding="utf-8")
        (target / path.name).write_text(
            text.replace(EXAMPLE_PORT_TEXT, f"127.0.0.1:{port}"), encoding="utf-8"
        )


def _demo_environment(config_dir: Path, credentials: Any) -> dict[str, str]:
    environment = dict(os.environ)
    environment.update(
        {
            "WEBHOOK_WORKER_CONFIG_DIR": str(config_dir),
            "WEBHOOK_WORKER_QUEUE": DEMO_NAME,
            "WEBHOOK_WORKER_RESULT_STREAM": f"{DEMO_NAME}:results",
            "WEBHOOK_WORKER_DEAD_LETTER_STREAM": f"{DEMO_NAME}:dead",
            "WEBHOOK_WORKER_KEY_PREFIX": DEMO_NAME,
            "WEBHOOK_WORKER_ALLOW_PRIVATE_NETWORKS": "true",
            "WEBHOOK_WORKER_LOG_FORMAT": "json",
            "WEBHOOK_WORKER_CONCURRENCY": "4",
            # The demo worker opens no metrics port, so it cannot clash with a
            # real worker on this host.
            "WEBHOOK_WORKER_METRICS_PORT": "0",
            "ACME_FRAUD_TOKEN": credentials.bearer_token,
            "ACME_ERP_PASSWORD": credentials.basic_password,
            "ACME_STOCK_KEY": credentials.stock_key,
        }
    )
    return environment


def _stop_worker(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=WORKER_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def run_demo(*, keep_logs: bool = False) -> int:
    """Run every example job through a real worker and print the results as a table."""
    from worker.demo.receiver import Receiver, ReceiverCredentials

    source = examples_dir()
    if not (source / "jobs").is_dir():
        print(
            f"the examples folder {source} is missing; run the demo from a source "
            "checkout (pip install -e .)",
            file=sys.stderr,
        )
        return 2

    credentials = ReceiverCredentials(
        bearer_token=f"demo-{secrets.token_hex(12)}",
        basic_user="acme-erp",
        basic_password=f"demo-{secrets.token_hex(12)}",
        stock_key=f"demo-{secrets.token_hex(12)}",
        inline_key="inline-demo-key",
    )
    receiver = Receiver(credentials)
    receiver.start()
    workdir = Path(tempfile.mkdtemp(prefix="webhook-demo-"))
    _copy_with_port(source / "tenants", workdir / "tenants", receiver.port)
    _copy_with_port(source / "jobs", workdir / "jobs", receiver.port)
    environment = _demo_environment(workdir / "tenants", credentials)
    # The submitting code below reads the same settings as the worker.
    os.environ.update(
        {k: v for k, v in environment.items() if k.startswith("WEBHOOK_WORKER_")}
    )
    from worker.settings import get_settings

    get_settings.cache_clear()
    settings = get_settings()

    log_path = workdir / "worker.log"
    print(f"receiver on http://127.0.0.1:{receiver.port}; broker {settings.broker_url}")
    print(f"starting a worker on queue {settings.queue!r}; its log: {log_path}")
    with log_path.open("wb") as log_file:
        worker = subprocess.Popen(
            [sys.executable, "-m", "worker.cli", "worker"],
            env=environment,
            stdout=log_file,
            stderr=subprocess.STDOUT,
        )
    try:
        return _submit_and_collect(workdir, settings, worker, log_path)
    finally:
        _stop_worker(worker)
        receiver.stop()
        if keep_logs:
            print(f"worker log kept at {log_path}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _submit_and_collect(
    workdir: Path,
    settings: Any,
    worker: subprocess.Popen[bytes],
    log_path: Path,
) -> int:

    from worker import jsontext
    from worker.cli import submit_job
    from worker.display import parse_result, render_table
    from worker.redis_client import redis_from_url
    from worker.streams import newest_entry_id, read_entries

    client = redis_from_url(settings.results_redis_url, settings)
    last_id = newest_entry_id(client, settings.result_stream)

    names_by_job: dict[str, str] = {}
    for path in sorted((workdir / "jobs").glob("*.json")):
        job = jsontext.loads(path.read_text(encoding="utf-8"))
        names_by_job[submit_job(job, new_id=True)] = path.stem
    print(f"submitted {len(names_by_job)} example jobs; waiting for their results")

    results: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + RESULT_TIMEOUT_S
    while len(results) < len(names_by_job) and time.monotonic() < deadline:
        if worker.poll() is not None:
            print(
                f"the worker exited with code {worker.returncode}; "
                f"last lines of {log_path}:\n{_tail(log_path)}",
                file=sys.stderr,
            )
            return 1
        for entry in read_entries(client, settings.result_stream, last_id, 500):
            last_id = entry.entry_id
            result = parse_result(entry.result_text)
            if result.get("JobId") in names_by_job:
                results[result["JobId"]] = result

    ordered = [results[job_id] for job_id in names_by_job if job_id in results]
    print()
    print(render_table(ordered))
    print()
    return _check(names_by_job, results, log_path)


def _check(
    names_by_job: dict[str, str], results: dict[str, dict[str, Any]], log_path: Path
) -> int:
    problems = []
    for job_id, name in names_by_job.items():
        result = results.get(job_id)
        expected = EXPECTED.get(name)
        if result is None:
            problems.append(f"{name}: no result within {RESULT_TIMEOUT_S:g} s")
            continue
        if expected is None:
            continue
        got = Expected(
            result.get("ActionStatus", ""),
            bool(result.get("CancelWorkflow")),
            int(result.get("Attempts") or 0),
        )
        if got != expected:
            problems.append(f"{name}: expected {expected}, got {got}")
    if problems:
        print("the demo did not get the expected results:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        print(f"last lines of the worker log:\n{_tail(log_path)}", file=sys.stderr)
        return 1
    print(f"all {len(names_by_job)} example jobs got the expected result")
    return 0
