"""Redis over TLS: broker, results, CLI and health with ``rediss://`` URLs.

The test makes a CA, a server and a client certificate with the openssl CLI,
starts a redis-server that accepts TLS only and requires client certificates,
and runs one job end to end through a real worker.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tests.reliability.common import job, run_health, wait_until, write_tenant
from tests.support.redis_server import free_port
from tests.support.webhook_server import Reply, running_server
from tests.support.worker_process import (
    PROJECT_ROOT,
    WorkerNames,
    project_python,
    read_stream,
    running_worker,
    submit_with_cli,
)
from worker.redis_client import redis_from_url
from worker.settings import WorkerSettings

OPENSSL_TIMEOUT_S = 30


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def _openssl(directory: Path, *args: str) -> None:
    subprocess.run(
        ["openssl", *args],
        cwd=directory,
        check=True,
        capture_output=True,
        timeout=OPENSSL_TIMEOUT_S,
    )


def _signed(directory: Path, name: str, extensions: str) -> tuple[Path, Path]:
    """Create a key and a certificate for ``name`` signed by ``ca.key``."""
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(
        directory,
        "req",
        "-new",
        "-nodes",
        "-newkey",
        "rsa:2048",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
    )
    _openssl(
        directory,
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        f"{name}.crt",
        "-extfile",
        f"{name}.ext",
    )
    return directory / f"{name}.crt", directory / f"{name}.key"


def make_certificates(directory: Path) -> Certificates:
    directory.mkdir()
    _openssl(
        directory,
        "req",
        "-x509",
        "-new",
        "-nodes",
        "-newkey",
        "rsa:2048",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=webhook-step-worker test CA",
    )
    server_cert, server_key = _signed(
        directory,
        "server",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    client_cert, client_key = _signed(
        directory, "client", "extendedKeyUsage=clientAuth\n"
    )
    return Certificates(
        directory / "ca.crt", server_cert, server_key, client_cert, client_key
    )


@dataclass
class TlsRedis:
    port: int
    certificates: Certificates
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"rediss://127.0.0.1:{self.port}/0"


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[TlsRedis]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl CLI is not installed, so no certificates can be made")
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    certificates = make_certificates(tmp_path / "certs")
    data = tmp_path / "redis"
    data.mkdir()
    # Errors in the arguments go to stderr before the log file is opened.
    startup_errors = data / "stderr.txt"
    port = free_port()
    process = subprocess.Popen(
        [
            "redis-server",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-port",
            str(port),
            "--tls-cert-file",
            str(certificates.server_cert),
            "--tls-key-file",
            str(certificates.server_key),
            "--tls-ca-cert-file",
            str(certificates.ca),
            "--tls-auth-clients",
            "yes",
            "--dir",
            str(data),
            "--save",
            "",
            "--appendonly",
            "no",
            "--logfile",
            str(data / "redis.log"),
        ],
        stderr=startup_errors.open("wb"),
    )
    server = TlsRedis(port, certificates, process)
    try:
        client = redis_from_url(server.url, tls_settings(server), socket_timeout=1.0)
        started, _ = wait_until(
            lambda: _answers(client) or process.poll() is not None,
            timeout_s=10,
            interval_s=0.05,
        )
        errors = startup_errors.read_text(errors="replace")
        if process.poll() is not None and "tls" in errors.lower():
            pytest.skip(
                f"this redis-server has no TLS (built without BUILD_TLS): {errors}"
            )
        assert process.poll() is None, f"redis-server exited: {errors}"
        assert started, f"redis-server with TLS did not start; see {data / 'redis.log'}"
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


def tls_settings(server: TlsRedis) -> WorkerSettings:
    return WorkerSettings(
        broker_url=server.url,
        redis_ca_file=server.certificates.ca,
        redis_cert_file=server.certificates.client_cert,
        redis_key_file=server.certificates.client_key,
    )


def test_tls_rejects_unknown_server(tls_redis: TlsRedis) -> None:
    # Without the test CA the server's certificate cannot be verified.
    settings = WorkerSettings(
        broker_url=tls_redis.url,
        redis_cert_file=tls_redis.certificates.client_cert,
        redis_key_file=tls_redis.certificates.client_key,
    )
    client = redis_from_url(tls_redis.url, settings, socket_timeout=2.0)
    with pytest.raises(redis.ConnectionError) as caught:
        client.ping()
    assert "certificate verify failed" in str(caught.value)


def test_tls_job_end_to_end(
    tls_redis: TlsRedis, config_dir: Path, tmp_path: Path
) -> None:
    names = WorkerNames.unique("tls")
    certificates = tls_redis.certificates
    extra_env = {
        "WEBHOOK_WORKER_REDIS_CA_FILE": str(certificates.ca),
        "WEBHOOK_WORKER_REDIS_CERT_FILE": str(certificates.client_cert),
        "WEBHOOK_WORKER_REDIS_KEY_FILE": str(certificates.client_key),
        "WEBHOOK_WORKER_HEALTH_FILE": str(tmp_path / "worker.health"),
    }
    client = redis_from_url(tls_redis.url, tls_settings(tls_redis))
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job("tls-0001")))
    with running_server() as webhook:
        webhook.route("/hook", lambda _request: Reply.json('{"Status": "Checked"}'))
        write_tenant(config_dir, webhook.url("/hook"))
        with running_worker(
            redis_url=tls_redis.url,
            config_dir=config_dir,
            log_path=tmp_path / "worker.log",
            names=names,
            extra_env=extra_env,
        ) as worker:
            # 'submit' sends through Celery's producer, so kombu's TLS is used too.
            submitted_at = time.monotonic()
            job_ids = submit_with_cli(worker.env, [job_file])
            published, _ = wait_until(
                lambda: client.xlen(names.result_stream) >= 1, timeout_s=30
            )
            result_s = time.monotonic() - submitted_at
            results_cli = subprocess.run(
                [
                    project_python(),
                    "-m",
                    "worker.cli",
                    "results",
                    "--from-start",
                    "--count",
                    "1",
                    "--timeout",
                    "10",
                ],
                cwd=PROJECT_ROOT,
                env=worker.env,
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            healthy, _ = wait_until(
                lambda: run_health(worker.env)[0] == 0, timeout_s=15, interval_s=0.5
            )
            calls = webhook.requests_to("/hook")

    entries = read_stream(client, names.result_stream)
    print(
        f"\nTLS: 1 job, result {result_s:.2f} s after submit (CLI start "
        f"included), webhook calls {len(calls)}"
    )
    assert job_ids == ["tls-0001"]
    assert published, f"no result within 30 s; worker log:\n{worker.log_tail()}"
    assert len(entries) == 1
    assert entries[0].result["JobId"] == "tls-0001"
    assert entries[0].result["ActionStatus"] == "Success"
    assert len(calls) == 1
    assert results_cli.returncode == 0, results_cli.stderr
    assert json.loads(results_cli.stdout.splitlines()[0])["JobId"] == "tls-0001"
    assert healthy, "health did not exit 0 with a TLS broker"
