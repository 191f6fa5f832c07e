"""Benchmark this worker against raw threads and plain Celery, in one run.

``.venv/bin/python bench/run.py`` starts a private redis-server, the receiver
of bench/receiver.py and the three systems, runs the same jobs through each of
them in alternating rounds, and prints one table. docs/benchmarks.md explains
every option and figure. Everything it starts, it stops, also on errors.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parents[1]
if str(PROJECT_ROOT) not in sys.path:
    sys.path.insert(0, str(PROJECT_ROOT))

import redis  # noqa: E402

from bench import procstats  # noqa: E402
from bench.orders import job  # noqa: E402
from bench.systems import (  # noqa: E402
    PlainCelery,
    RawSystem,
    System,
    ThisWorker,
    log_tail,
)
from tests.support.redis_server import RedisServer, free_port  # noqa: E402
from tests.support.worker_process import project_python  # noqa: E402

MODES = ("raw", "plain", "worker")
# Bench commands that do not belong to a system, left out of its Redis count.
BENCH_COMMANDS = {"info", "config|resetstat", "xlen", "xrange", "exists", "rename"}


@dataclass
class RunFigures:
    """Figures of one run of one system."""

    mode: str
    pool: str
    delay_ms: int
    jobs: int
    results: int
    seconds: float
    per_second: float
    p50_ms: float
    p99_ms: float
    cpu_per_1000_s: float
    peak_rss_mb: float
    redis_calls_per_job: float
    redis_calls: dict[str, int] = field(default_factory=dict)


@dataclass
class CountdownFigures:
    """Figures of the countdown run: delayed jobs plus immediate ones behind them."""

    mode: str
    pool: str
    delayed: int
    immediate: int
    late_p50_ms: float
    late_p99_ms: float
    late_max_ms: float
    calls_seen: int
    immediate_alone_p50_ms: float
    immediate_alone_p99_ms: float
    immediate_flood_p50_ms: float
    immediate_flood_p99_ms: float
    seconds: float
    peak_rss_mb: float


def percentile(values: Sequence[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))]


def write_tenants(config_dir: Path, receiver_url: str, delays: Sequence[int]) -> None:
    """Write one tenant per webhook delay, ``bench-d<ms>``, and ``bench-rec``."""
    config_dir.mkdir(parents=True, exist_ok=True)
    targets = {f"bench-d{delay}": f"{receiver_url}/hook/{delay}" for delay in delays}
    targets["bench-d0"] = f"{receiver_url}/hook/0"
    targets["bench-rec"] = f"{receiver_url}/rec/0"
    for tenant_id, url in targets.items():
        connector = {
            "Name": "Webhook",
            "ConnectorId": "bench-hook",
            "Host": url,
            "TimeOut": "00:00:10",
        }
        document = {"Connectors": [connector], "MarketGroups": {}}
        (config_dir / f"{tenant_id}.json").write_text(json.dumps(document))


class Bench:
    """The private servers and the systems, and the runs made against them."""

    def __init__(self, options: argparse.Namespace, work_dir: Path) -> None:
        self.options = options
        self.work_dir = work_dir
        self.redis_server = RedisServer(work_dir)
        self.client: redis.Redis | None = None
        self.receiver: subprocess.Popen[str] | None = None
        self.receiver_url = ""
        self.run_counter = 0

    # Servers -------------------------------------------------------------

    def start_servers(self) -> None:
        self.redis_server.start()
        self.client = self.redis_server.client()
        port = free_port()
        self.receiver = subprocess.Popen(
            [project_python(), "-m", "bench.receiver", "--port", str(port)],
            cwd=PROJECT_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.receiver.stdout is not None
        if self.receiver.stdout.readline().strip() != "ready":
            raise RuntimeError("the receiver did not start")
        self.receiver_url = f"http://127.0.0.1:{port}"
        os.environ["BENCH_RECEIVER_URL"] = self.receiver_url

    def stop_servers(self) -> None:
        if self.receiver is not None:
            if self.receiver.stdin is not None:
                self.receiver.stdin.close()
            try:
                self.receiver.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.receiver.kill()
                self.receiver.wait(timeout=10)
        self.redis_server.stop()

    def measure_receiver(self) -> dict[str, Any]:
        """Load the receiver alone with 50 keep-alive connections of 4 KB posts."""
        completed = subprocess.run(
            [
                project_python(),
                "-m",
                "bench.receiver",
                "--load",
                f"{self.receiver_url}/hook/0",
                "--connections",
                str(self.options.concurrency),
                "--requests",
                "20000",
            ],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=150,
            check=True,
        )
        figures: dict[str, Any] = json.loads(completed.stdout)
        return figures

    # Runs ----------------------------------------------------------------

    def jobs_for(
        self, count: int, tenant_id: str, *, delayed: bool = False
    ) -> list[dict[str, Any]]:
        self.run_counter += 1
        prefix = f"r{self.run_counter:04d}"
        return [
            job(f"{prefix}-{index:06d}", tenant_id, delayed=delayed)
            for index in range(count)
        ]

    def _wait_results(self, system: System, count: int) -> tuple[bool, float]:
        """Poll the result stream until ``count`` entries arrived or time is up."""
        assert self.client is not None
        deadline = time.monotonic() + self.options.run_timeout_s
        while time.monotonic() < deadline:
            if self.client.xlen(system.stream) >= count:
                return True, time.time()
            time.sleep(0.01)
        return False, time.time()

    def _entry_times(self, system: System) -> dict[str, float]:
        """Return the stream time, in seconds, of each JobId's first result."""
        assert self.client is not None
        found: dict[str, float] = {}
        for entry_id, fields in self.client.xrange(system.stream):
            job_id = fields.get(b"job_id", b"").decode()
            found.setdefault(job_id, int(entry_id.split(b"-")[0]) / 1000)
        return found

    def _redis_calls(self) -> dict[str, int]:
        assert self.client is not None
        stats = self.client.info("commandstats")
        calls = {}
        for key, value in stats.items():
            name = key.removeprefix("cmdstat_")
            if name not in BENCH_COMMANDS:
                calls[name] = int(value["calls"])
        return calls

    def run_jobs(
        self, system: System, jobs: list[dict[str, Any]]
    ) -> tuple[float, dict[str, float], float, float, dict[str, int]]:
        """Run ``jobs`` through ``system``.

        Returns the submit time, each job's result time, the CPU seconds and
        peak RSS bytes of the system's processes, and the Redis commands by name.
        """
        assert self.client is not None
        self.client.delete(system.stream)
        system.prepare(jobs)
        pids = procstats.descendants(system.pid)
        cpu_before = procstats.cpu_seconds(pids)
        self.client.config_resetstat()
        with procstats.PeakRss(pids) as rss:
            submitted = system.submit()
            finished, _ = self._wait_results(system, len(jobs))
            if finished:
                system.finish()
        cpu = procstats.cpu_seconds(pids) - cpu_before
        calls = self._redis_calls()
        times = self._entry_times(system)
        wanted = {item["JobId"] for item in jobs}
        times = {key: value for key, value in times.items() if key in wanted}
        if not finished:
            print(
                f"  {system.name}: only {len(times)} of {len(jobs)} results within "
                f"{self.options.run_timeout_s:g} s",
                flush=True,
            )
        return submitted, times, cpu, rss.peak, calls

    def throughput_run(
        self, system: System, pool: str, delay_ms: int, count: int
    ) -> RunFigures:
        jobs = self.jobs_for(count, f"bench-d{delay_ms}")
        submitted, times, cpu, peak, calls = self.run_jobs(system, jobs)
        latencies = [(moment - submitted) * 1000 for moment in times.values()]
        last = max(times.values(), default=submitted)
        seconds = max(last - submitted, 1e-6)
        total_calls = sum(calls.values())
        return RunFigures(
            mode=system.name,
            pool=pool,
            delay_ms=delay_ms,
            jobs=count,
            results=len(times),
            seconds=seconds,
            per_second=len(times) / seconds,
            p50_ms=percentile(latencies, 0.5),
            p99_ms=percentile(latencies, 0.99),
            cpu_per_1000_s=cpu / max(len(times), 1) * 1000,
            peak_rss_mb=peak / 2**20,
            redis_calls_per_job=total_calls / max(len(times), 1),
            redis_calls=calls,
        )

    def arrivals(self) -> list[dict[str, Any]]:
        import urllib.request

        with urllib.request.urlopen(f"{self.receiver_url}/arrivals", timeout=10) as r:
            found: list[dict[str, Any]] = json.loads(r.read())
        return found

    def countdown_run(self, system: System, pool: str) -> CountdownFigures:
        """Delayed jobs on the 1 s countdown, with immediate jobs right behind them."""
        options = self.options
        alone = self.jobs_for(options.immediate, "bench-d0")
        submitted, times, _, _, _ = self.run_jobs(system, alone)
        alone_ms = [(moment - submitted) * 1000 for moment in times.values()]

        self.arrivals()
        delayed = self.jobs_for(options.delayed, "bench-rec", delayed=True)
        immediate = self.jobs_for(options.immediate, "bench-d0")
        submitted, times, _, peak, _ = self.run_jobs(system, delayed + immediate)
        immediate_ids = {item["JobId"] for item in immediate}
        flood_ms = [
            (moment - submitted) * 1000
            for job_id, moment in times.items()
            if job_id in immediate_ids
        ]
        seen = self.arrivals()
        due_by_job = system.rescheduled_at()
        late_ms = []
        for arrival in seen:
            due = arrival.get("due")
            if due is not None:
                due_at = float(due)
            elif arrival.get("key") in due_by_job:
                due_at = due_by_job[arrival["key"]] + 1.0
            else:
                continue
            late_ms.append((arrival["at"] - due_at) * 1000)
        last = max(times.values(), default=submitted)
        return CountdownFigures(
            mode=system.name,
            pool=pool,
            delayed=len(delayed),
            immediate=len(immediate),
            late_p50_ms=percentile(late_ms, 0.5),
            late_p99_ms=percentile(late_ms, 0.99),
            late_max_ms=max(late_ms, default=float("nan")),
            calls_seen=len(late_ms),
            immediate_alone_p50_ms=percentile(alone_ms, 0.5),
            immediate_alone_p99_ms=percentile(alone_ms, 0.99),
            immediate_flood_p50_ms=percentile(flood_ms, 0.5),
            immediate_flood_p99_ms=percentile(flood_ms, 0.99),
            seconds=last - submitted,
            peak_rss_mb=peak / 2**20,
        )

    # Systems -------------------------------------------------------------

    def systems_for(self, pool: str, raw: RawSystem) -> dict[str, System]:
        assert self.client is not None
        url = self.redis_server.url
        concurrency = self.options.concurrency
        plain = PlainCelery(self.client, self.work_dir, url, pool, concurrency)
        worker = ThisWorker(
            self.client,
            self.work_dir,
            url,
            self.work_dir / "tenants",
            pool,
            concurrency,
            task_events=self.options.task_events,
        )
        return {"raw": raw, "plain": plain, "worker": worker}


def median_figures(runs: list[RunFigures]) -> RunFigures:
    """Return the run with the median throughput's figures, each a median of rounds."""
    first = runs[0]
    return RunFigures(
        mode=first.mode,
        pool=first.pool,
        delay_ms=first.delay_ms,
        jobs=first.jobs,
        results=min(run.results for run in runs),
        seconds=statistics.median(run.seconds for run in runs),
        per_second=statistics.median(run.per_second for run in runs),
        p50_ms=statistics.median(run.p50_ms for run in runs),
        p99_ms=statistics.median(run.p99_ms for run in runs),
        cpu_per_1000_s=statistics.median(run.cpu_per_1000_s for run in runs),
        peak_rss_mb=max(run.peak_rss_mb for run in runs),
        redis_calls_per_job=statistics.median(run.redis_calls_per_job for run in runs),
        redis_calls=runs[len(runs) // 2].redis_calls,
    )


def cell(value: float, raw: float | None, plain: float | None, digits: int = 0) -> str:
    """Format a figure with its ratios to raw (r) and to plain Celery (p)."""
    text = f"{value:.{digits}f}"
    ratios = []
    if raw:
        ratios.append(f"{value / raw:.2f}r")
    if plain:
        ratios.append(f"{value / plain:.2f}p")
    return f"{text} ({' '.join(ratios)})" if ratios else text


def print_table(figures: dict[tuple[str, int, str], RunFigures]) -> list[str]:
    lines = [
        "| pool | delay | system | jobs/s | p50 ms | p99 ms | CPU s/1000 jobs "
        "| peak RSS MB | Redis cmds/job |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def order(key: tuple[str, int, str]) -> tuple[str, int, int]:
        return key[0], key[1], MODES.index(key[2])

    for pool, delay_ms, mode in sorted(figures, key=order):
        row = figures[(pool, delay_ms, mode)]
        raw = figures.get((pool, delay_ms, "raw")) if mode != "raw" else None
        plain = figures.get((pool, delay_ms, "plain")) if mode == "worker" else None

        def show(
            name: str,
            digits: int = 0,
            row: RunFigures = row,
            raw: RunFigures | None = raw,
            plain: RunFigures | None = plain,
        ) -> str:
            return cell(
                getattr(row, name),
                getattr(raw, name) if raw else None,
                getattr(plain, name) if plain else None,
                digits,
            )

        lines.append(
            f"| {pool} | {delay_ms} ms | {mode} | {show('per_second')} "
            f"| {show('p50_ms')} | {show('p99_ms')} | {show('cpu_per_1000_s', 2)} "
            f"| {show('peak_rss_mb')} | {show('redis_calls_per_job', 1)} |"
        )
    return lines


def print_countdown(figures: list[CountdownFigures]) -> list[str]:
    lines = [
        "| pool | system | delayed + immediate | late p50 ms | late p99 ms "
        "| late max ms | immediate p50/p99 ms alone "
        "| immediate p50/p99 ms behind delayed | all done s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in figures:
        lines.append(
            f"| {row.pool} | {row.mode} | {row.delayed} + {row.immediate} "
            f"| {row.late_p50_ms:.0f} | {row.late_p99_ms:.0f} | {row.late_max_ms:.0f} "
            f"| {row.immediate_alone_p50_ms:.0f} / {row.immediate_alone_p99_ms:.0f} "
            f"| {row.immediate_flood_p50_ms:.0f} / {row.immediate_flood_p99_ms:.0f} "
            f"| {row.seconds:.1f} | {row.peak_rss_mb:.0f} |"
        )
    return lines


def goal_lines(
    figures: dict[tuple[str, int, str], RunFigures], countdown: list[CountdownFigures]
) -> list[str]:
    """Return one line per goal: met or not, with the figures it rests on."""
    lines = []
    slow = [key for key in figures if key[1] == 50 and key[2] == "worker"]
    if slow:
        best = max(slow, key=lambda key: figures[key].per_second)
        pool = best[0]
        worker = figures[best]
        raw = figures.get((pool, 50, "raw"))
        plain = figures.get((pool, 50, "plain"))
        if raw and plain:
            to_raw = worker.per_second / raw.per_second
            to_plain = worker.per_second / plain.per_second
            verdict = "met" if to_raw >= 0.8 and to_plain >= 1.5 else "NOT met"
            lines.append(
                f"50 ms webhook, best pool {pool}: {worker.per_second:.0f} jobs/s = "
                f"{to_raw:.2f} x raw (goal >= 0.8), {to_plain:.2f} x plain Celery "
                f"(goal >= 1.5): {verdict}"
            )
    for key in sorted(figures):
        if key[1] != 0 or key[2] != "worker":
            continue
        plain = figures.get((key[0], 0, "plain"))
        if plain:
            ratio = figures[key].cpu_per_1000_s / plain.cpu_per_1000_s
            verdict = "met" if ratio <= 1.2 else "NOT met"
            lines.append(
                f"0 ms webhook, {key[0]}: worker CPU per job {ratio:.2f} x plain "
                f"Celery's (goal <= 1.2): {verdict}"
            )
    for row in countdown:
        if row.mode != "worker":
            continue
        verdict = "met" if row.late_p99_ms < 100 else "NOT met"
        lines.append(
            f"countdown, {row.pool}: lateness p99 {row.late_p99_ms:.0f} ms with "
            f"{row.delayed} delayed jobs (goal < 100 ms): {verdict}"
        )
        # "Not slowed": the immediate jobs' p99 behind the delayed ones stays
        # within 1.2 x their p99 alone, plus 50 ms for scheduling noise.
        bound = row.immediate_alone_p99_ms * 1.2 + 50
        verdict = "met" if row.immediate_flood_p99_ms <= bound else "NOT met"
        lines.append(
            f"countdown, {row.pool}: immediate p99 {row.immediate_flood_p99_ms:.0f} ms "
            f"behind the delayed jobs, {row.immediate_alone_p99_ms:.0f} ms alone "
            f"(goal <= 1.2 x alone + 50 ms): {verdict}"
        )
    return lines


def start_py_spy(
    options: argparse.Namespace, pid: int, pool: str
) -> subprocess.Popen[bytes]:
    """Sample the worker (and its pool processes) with py-spy until stopped."""
    path = options.py_spy.with_name(f"{options.py_spy.stem}-{pool}.txt")
    return subprocess.Popen(
        [
            str(Path(project_python()).with_name("py-spy")),
            "record",
            "--pid",
            str(pid),
            "--subprocesses",
            "--idle" if options.py_spy_idle else "--gil",
            "--format",
            "raw",
            "--duration",
            "900",
            "-o",
            str(path),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_py_spy(profiler: subprocess.Popen[bytes] | None) -> None:
    """Stop py-spy with SIGINT, on which it writes its samples."""
    if profiler is None or profiler.poll() is not None:
        return
    profiler.send_signal(signal.SIGINT)
    try:
        profiler.wait(timeout=60)
    except subprocess.TimeoutExpired:
        profiler.kill()
        profiler.wait(timeout=10)


def warm_up(bench: Bench, system: System, delays: Sequence[int]) -> None:
    """Send a few jobs per tenant first, so connections and imports are ready."""
    for delay_ms in delays:
        count = max(20, bench.options.concurrency * 2)
        jobs = bench.jobs_for(count, f"bench-d{delay_ms}")
        _, times, _, _, _ = bench.run_jobs(system, jobs)
        if len(times) < count:
            tail = log_tail(getattr(system, "log_path", Path("/nonexistent")))
            raise RuntimeError(
                f"{system.name}: {len(times)} of {count} warm-up results; log tail:\n"
                f"{tail}"
            )


def run_benchmark(options: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    bench = Bench(options, work_dir)
    figures: dict[tuple[str, int, str], RunFigures] = {}
    rounds: dict[tuple[str, int, str], list[RunFigures]] = {}
    countdown: list[CountdownFigures] = []
    profiler: subprocess.Popen[bytes] | None = None
    started = time.monotonic()
    try:
        bench.start_servers()
        assert bench.client is not None
        write_tenants(work_dir / "tenants", bench.receiver_url, options.delays)
        receiver = bench.measure_receiver()
        print(
            f"receiver alone: {receiver['per_second']:.0f} requests/s over "
            f"{options.concurrency} keep-alive connections, p99 "
            f"{receiver['p99_ms']:.1f} ms",
            flush=True,
        )
        raw = RawSystem(
            bench.client, work_dir, bench.redis_server.url, options.concurrency
        )
        raw.start()
        try:
            warm_up(bench, raw, options.delays)
            for pool in options.pools:
                systems = bench.systems_for(pool, raw)
                queued = [systems["plain"], systems["worker"]]
                try:
                    for system in queued:
                        system.start()
                    for system in queued:
                        warm_up(bench, system, options.delays)
                    if options.py_spy:
                        profiler = start_py_spy(options, systems["worker"].pid, pool)
                    for delay_ms in options.delays:
                        for round_index in range(options.rounds):
                            shift = round_index % len(MODES)
                            order = MODES[shift:] + MODES[:shift]
                            for mode in order:
                                row = bench.throughput_run(
                                    systems[mode], pool, delay_ms, options.jobs
                                )
                                key = (pool, delay_ms, mode)
                                rounds.setdefault(key, []).append(row)
                                print(
                                    f"{pool:8} {delay_ms:3d} ms "
                                    f"round {round_index + 1} "
                                    f"{mode:6}: {row.per_second:7.0f} jobs/s, p50 "
                                    f"{row.p50_ms:6.0f} ms, p99 {row.p99_ms:6.0f} ms, "
                                    f"CPU {row.cpu_per_1000_s:5.2f} s/1000, RSS "
                                    f"{row.peak_rss_mb:5.0f} MB, Redis "
                                    f"{row.redis_calls_per_job:4.1f} cmds/job",
                                    flush=True,
                                )
                    if options.delayed > 0:
                        for mode in MODES:
                            row_c = bench.countdown_run(systems[mode], pool)
                            countdown.append(row_c)
                            print(
                                f"{pool:8} countdown {mode:6}: late p50 "
                                f"{row_c.late_p50_ms:.0f} ms p99 "
                                f"{row_c.late_p99_ms:.0f} ms ({row_c.calls_seen} "
                                f"calls), immediate p99 "
                                f"{row_c.immediate_alone_p99_ms:.0f} ms alone, "
                                f"{row_c.immediate_flood_p99_ms:.0f} ms behind "
                                f"the delayed jobs",
                                flush=True,
                            )
                finally:
                    stop_py_spy(profiler)
                    profiler = None
                    for system in queued:
                        system.stop()
        finally:
            raw.stop()
    finally:
        bench.stop_servers()
    for key, runs in rounds.items():
        figures[key] = median_figures(runs)
    lines = [
        f"{options.jobs} jobs per run, {options.rounds} rounds (medians shown), "
        f"concurrency {options.concurrency}; ratio r = to raw, p = to plain Celery",
        f"worker task events: {'on' if options.task_events else 'off'}",
        "",
        *print_table(figures),
        "",
        *print_countdown(countdown),
        "",
        *goal_lines(figures, countdown),
    ]
    print("\n" + "\n".join(lines), flush=True)
    print(f"\nbenchmark took {time.monotonic() - started:.0f} s", flush=True)
    return {
        "receiver_alone": receiver,
        "runs": [asdict(run) for runs in rounds.values() for run in runs],
        "medians": [asdict(row) for row in figures.values()],
        "countdown": [asdict(row) for row in countdown],
        "report": lines,
    }


def parse_options(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Compare this worker with raw threads and plain Celery."
    )
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per setting")
    parser.add_argument(
        "--delays",
        default="0,50",
        help="comma-separated webhook delays in milliseconds",
    )
    parser.add_argument(
        "--pools", default="threads,prefork", help="comma-separated Celery pools"
    )
    parser.add_argument(
        "--concurrency", type=int, default=50, help="threads or processes per system"
    )
    parser.add_argument(
        "--delayed",
        type=int,
        default=1000,
        help="delayed jobs in the countdown run; 0 skips it",
    )
    parser.add_argument(
        "--immediate",
        type=int,
        default=200,
        help="immediate jobs sent right behind the delayed ones",
    )
    parser.add_argument(
        "--run-timeout-s",
        type=float,
        default=120.0,
        help="longest wait for the results of one run",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="500 jobs, 2 rounds, threads pool only, 300 delayed jobs",
    )
    parser.add_argument("--json", type=Path, help="also write every figure here")
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="PATH",
        help="record the worker with py-spy (raw collapsed stacks) to PATH-<pool>.txt",
    )
    parser.add_argument(
        "--py-spy-idle",
        action="store_true",
        help=(
            "with --py-spy, sample every thread, also waiting ones "
            "(default: only the thread that holds the GIL)"
        ),
    )
    parser.add_argument(
        "--task-events",
        action="store_true",
        help=(
            "let the worker send Celery task events, as it does by default "
            "(off here, because plain Celery sends none)"
        ),
    )
    parser.add_argument(
        "--keep-dir", action="store_true", help="keep the logs in the work folder"
    )
    options = parser.parse_args(argv)
    if options.quick:
        options.jobs, options.rounds, options.pools = 500, 2, "threads"
        options.delayed, options.immediate = 300, 100
    options.delays = [int(value) for value in options.delays.split(",") if value]
    options.pools = [value for value in options.pools.split(",") if value]
    for pool in options.pools:
        if pool not in ("threads", "prefork"):
            parser.error(f"--pools: {pool!r} is not threads or prefork")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_options(argv)
    work_dir = Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    try:
        report = run_benchmark(options, work_dir)
    finally:
        if options.keep_dir:
            print(f"logs kept in {work_dir}", flush=True)
        else:
            import shutil

            shutil.rmtree(work_dir, ignore_errors=True)
    if options.json:
        options.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
