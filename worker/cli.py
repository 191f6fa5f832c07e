"""The ``webhook-step-worker`` command and its sub-commands."""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from worker import __version__, jsontext
from worker.errors import ConfigError, WorkerError
from worker.urls import masked_url


def _load_jobs(path: Path) -> list[Any]:
    """Read a job file: one job object, or a list of them."""
    try:
        parsed = jsontext.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise SystemExit(f"cannot read {path}: {error.strerror}") from None
    except ValueError as error:
        raise SystemExit(f"{path} is not valid JSON: {error}") from None
    return parsed if isinstance(parsed, list) else [parsed]


def cmd_worker(args: argparse.Namespace) -> int:
    from worker.app import app
    from worker.settings import get_settings

    settings = get_settings()
    # Celery reads "--pool prefork" as "no pool given" and keeps the configured
    # pool, so the choice goes into the configuration as well.
    app.conf.worker_pool = args.pool or settings.pool
    app.conf.worker_concurrency = args.concurrency or settings.concurrency
    argv = [
        "worker",
        "--queues",
        settings.queue,
        "--pool",
        app.conf.worker_pool,
        "--concurrency",
        str(app.conf.worker_concurrency),
        "--loglevel",
        settings.log_level,
        *args.celery_args,
    ]
    # app.start, unlike app.worker_main, returns the worker's exit code, so a
    # supervisor can detect a failed worker.
    code = app.start(argv)
    return int(code or 0)


def submit_job(job: Any, *, new_id: bool = False) -> str:
    """Enqueue one job on the worker's queue and return its JobId."""
    from worker.app import TASK_NAME, app
    from worker.job import summarize, usable_job_id
    from worker.settings import get_settings

    if new_id and isinstance(job, dict):
        job = {key: value for key, value in job.items() if key.lower() != "jobid"}
        job["JobId"] = str(uuid.uuid4())
    job_id = usable_job_id(job)
    if job_id is None:
        raise SystemExit(
            "the job has no usable JobId (a non-empty string); add one, or pass "
            "--new-id to give each job a fresh one"
        )
    app.send_task(
        TASK_NAME,
        args=[job],
        queue=get_settings().queue,
        argsrepr=summarize(job),
        kwargsrepr="{}",
    )
    return job_id


def cmd_submit(args: argparse.Namespace) -> int:
    from kombu.exceptions import OperationalError

    from worker.job import usable_job_id
    from worker.settings import get_settings

    # Check every job first, so a bad file enqueues nothing.
    jobs = [job for path in args.files for job in _load_jobs(Path(path))]
    if not args.new_id:
        for index, job in enumerate(jobs):
            if usable_job_id(job) is None:
                raise SystemExit(
                    f"job #{index + 1} has no usable JobId (a non-empty string of at "
                    "most 200 characters); add one, or pass --new-id to give each "
                    "job a fresh one. Nothing was enqueued."
                )
    try:
        for job in jobs:
            print(submit_job(job, new_id=args.new_id), flush=True)
    except OperationalError as error:
        raise SystemExit(
            f"cannot reach the broker at {masked_url(get_settings().broker_url)}: "
            f"{error}; "
            "start Redis or set WEBHOOK_WORKER_BROKER_URL"
        ) from None
    return 0


def cmd_results(args: argparse.Namespace) -> int:

    from worker.display import COLUMNS, format_row, parse_result, result_row
    from worker.redis_client import redis_from_url
    from worker.settings import get_settings
    from worker.streams import read_entries

    settings = get_settings()
    client = redis_from_url(settings.results_redis_url, settings)
    last_id: bytes | str = "0-0" if args.from_start else "$"
    wanted = set(args.job_id or [])
    if args.table:
        print(format_row(COLUMNS), flush=True)
    shown = 0
    deadline = time.monotonic() + args.timeout if args.timeout else None
    while args.count is None or shown < args.count:
        block_ms = 1000
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            block_ms = max(1, int(min(remaining, 1.0) * 1000))
        for entry in read_entries(client, settings.result_stream, last_id, block_ms):
            last_id = entry.entry_id
            result = parse_result(entry.result_text)
            if wanted and result.get("JobId") not in wanted:
                continue
            if args.table:
                print(format_row(result_row(result)), flush=True)
            else:
                print(entry.result_text.decode("utf-8"), flush=True)
            shown += 1
            if args.count is not None and shown >= args.count:
                return 0
    return 0 if args.count is None or shown >= args.count else 1


def cmd_run_step(args: argparse.Namespace) -> int:
    from worker.logs import configure_logging
    from worker.runtime import build_runner
    from worker.settings import get_settings
    from worker.step import PROGRESS_KEY, DeadLettered, Finished, Reschedule

    settings = get_settings()
    if args.config_dir:
        settings = settings.model_copy(update={"config_dir": Path(args.config_dir)})
    configure_logging(settings.log_format, settings.log_level)
    runner = build_runner(settings, with_redis=False)
    runner.allow_retries = not args.no_retry
    status = 0
    for job in _load_jobs(Path(args.file)):
        kwargs: dict[str, Any] = {}
        while True:
            outcome = runner.run((job,), kwargs)
            if not isinstance(outcome, Reschedule):
                break
            is_save_delay = not outcome.progress.attempts
            if not (is_save_delay and args.no_delay):
                # run-step has no broker, so a plain sleep replaces the countdown.
                time.sleep(outcome.countdown_s)
            kwargs = {PROGRESS_KEY: outcome.progress.to_message()}
        if isinstance(outcome, DeadLettered):
            print(outcome.reason, file=sys.stderr)
            status = 1
        elif isinstance(outcome, Finished):
            print(outcome.result_json, flush=True)
            if '"ActionStatus":"Success"' not in outcome.result_json:
                status = 1
    return status


def cmd_check_config(args: argparse.Namespace) -> int:
    from worker.settings import get_settings
    from worker.startup import startup_problems
    from worker.tenants import TenantStore

    settings = get_settings()
    if args.config_dir:
        settings = settings.model_copy(update={"config_dir": Path(args.config_dir)})
    problems = startup_problems(settings)
    store = TenantStore(settings.config_dir)
    if settings.config_dir.is_dir():
        for path in sorted(settings.config_dir.glob("*.json")):
            try:
                tenant = store.get(path.stem)
            except ConfigError:
                continue
            if tenant is not None:
                labels = (
                    ", ".join(c.label for c in tenant.settings.connectors) or "none"
                )
                print(f"ok     {path}: connectors {labels}")
    for problem in problems:
        print(f"error  {problem}")
    if problems:
        print(
            f"{len(problems)} problem(s) found; the worker will not start until fixed"
        )
        return 1
    print("all tenant settings are valid")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from worker.replay import failed_job_ids, parse_duration, plan_for, replay_copy
    from worker.runtime import result_store
    from worker.settings import get_settings

    settings = get_settings()
    store = result_store(settings)
    job_ids = list(args.job_ids)
    if args.failed:
        try:
            since_s = parse_duration(args.since)
        except ValueError as error:
            raise SystemExit(str(error)) from None
        job_ids += failed_job_ids(
            store.client, settings.result_stream, since_s, args.tenant
        )
    if not job_ids:
        raise SystemExit("nothing to replay: give JobIds, or --failed with --since")

    status = 0
    for job_id in job_ids:
        plan = plan_for(store, job_id)
        if plan.job is None:
            print(f"skip   {job_id}: {plan.problem}", file=sys.stderr)
            status = 1
            continue
        copy = replay_copy(plan.job, job_id)
        if args.dry_run:
            print(f"would  {job_id} -> {copy['JobId']} (from the {plan.source})")
            continue
        submit_job(copy)
        print(f"sent   {job_id} -> {copy['JobId']} (from the {plan.source})")
    return status


def cmd_health(args: argparse.Namespace) -> int:
    from worker.health import check_health
    from worker.settings import get_settings

    settings = get_settings()
    problem = check_health(settings.health_file, settings.health_max_age_s)
    if problem is not None:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    print("healthy: the worker pinged its broker recently")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from worker.demo.run import run_demo

    return run_demo(keep_logs=args.keep_logs)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="webhook-step-worker",
        description="Run the webhook step of an order workflow as a Celery worker. "
        "Settings come from WEBHOOK_WORKER_* environment variables.",
    )
    parser.add_argument("--version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True)

    worker = commands.add_parser(
        "worker",
        help="start a worker that consumes jobs; other options go to 'celery worker'",
    )
    worker.add_argument("--pool", choices=["threads", "prefork", "solo"])
    worker.add_argument("--concurrency", type=int, help="jobs run at the same time")
    worker.set_defaults(celery_args=[])
    worker.set_defaults(handler=cmd_worker)

    submit = commands.add_parser("submit", help="enqueue jobs and print their JobIds")
    submit.add_argument("files", nargs="+", help="job files: one job or a list each")
    submit.add_argument(
        "--new-id", action="store_true", help="give each job a fresh random JobId"
    )
    submit.set_defaults(handler=cmd_submit)

    results = commands.add_parser("results", help="follow the result stream")
    results.add_argument(
        "--from-start", action="store_true", help="print the stored results first"
    )
    results.add_argument("--count", type=int, help="stop after this many results")
    results.add_argument("--timeout", type=float, help="stop after this many seconds")
    results.add_argument(
        "--job-id", action="append", help="only this JobId (repeat for several)"
    )
    results.add_argument(
        "--table", action="store_true", help="one table row per result"
    )
    results.set_defaults(handler=cmd_results)

    run_step = commands.add_parser(
        "run-step", help="run jobs in this process without Redis and print the results"
    )
    run_step.add_argument("file", help="job file: one job or a list")
    run_step.add_argument("--config-dir", help="tenant settings folder")
    run_step.add_argument(
        "--no-delay", action="store_true", help="skip the RunAfterOrderIsSaved second"
    )
    run_step.add_argument(
        "--no-retry", action="store_true", help="make one attempt, with no retries"
    )
    run_step.set_defaults(handler=cmd_run_step)

    check = commands.add_parser("check-config", help="validate the tenant settings")
    check.add_argument("--config-dir", help="tenant settings folder")
    check.set_defaults(handler=cmd_check_config)

    replay = commands.add_parser(
        "replay",
        help="send jobs again under new JobIds, from a stored result or dead letter",
    )
    replay.add_argument("job_ids", nargs="*", help="JobIds to replay")
    replay.add_argument(
        "--failed", action="store_true", help="replay every Error and Warning result"
    )
    replay.add_argument(
        "--since", default="1h", help="with --failed: how far back, e.g. 30m, 1h, 2d"
    )
    replay.add_argument("--tenant", help="with --failed: only this TenantId")
    replay.add_argument(
        "--dry-run", action="store_true", help="list what would be sent, send nothing"
    )
    replay.set_defaults(handler=cmd_replay)

    health = commands.add_parser(
        "health",
        help="exit 0 when the worker on this host is connected and consuming, "
        "else 1 (for container probes)",
    )
    health.set_defaults(handler=cmd_health)

    demo = commands.add_parser(
        "demo", help="run the example jobs end to end against a local receiver"
    )
    demo.add_argument(
        "--keep-logs", action="store_true", help="keep the worker log file"
    )
    demo.set_defaults(handler=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command != "worker":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        # Options the worker command does not know go to 'celery worker' as given.
        args.celery_args = [item for item in extra if item != "--"]
    import redis

    try:
        code: int = args.handler(args)
    except redis.ConnectionError as error:
        print(
            f"error: cannot reach Redis ({error}); start it or set "
            "WEBHOOK_WORKER_BROKER_URL / WEBHOOK_WORKER_REDIS_URL",
            file=sys.stderr,
        )
        return 1
    except ConfigError as error:
        print(f"configuration error: {error}", file=sys.stderr)
        return 2
    except WorkerError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
