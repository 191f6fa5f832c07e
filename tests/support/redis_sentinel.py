"""A Redis master, one replica and three Sentinels on free loopback ports.

Each server writes an append-only file in its own folder. The Sentinels watch
the master under ``MASTER_NAME`` with a quorum of 2 and fail over after
``DOWN_AFTER_MS`` of silence. ``stop`` ends every process that is still
running, also after a test killed some of them. With ``master_password`` the
master and the replica require it, and with ``sentinel_password`` the
Sentinels require theirs, as a production setup with AUTH would.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.support.redis_server import free_port

MASTER_NAME = "webhook-master"
QUORUM = 2
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000
START_TIMEOUT_S = 20.0


class RedisProcess:
    """One ``redis-server`` process, a data server or a Sentinel."""

    def __init__(
        self,
        name: str,
        directory: Path,
        port: int,
        command: list[str],
        password: str | None = None,
    ) -> None:
        self.name = name
        self.directory = directory
        self.port = port
        self.command = command
        self.password = password
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            self.command,
            cwd=self.directory,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = self.client(socket_timeout=1.0)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"{self.name} on port {self.port} did not start; see "
                        f"{self.directory / 'redis.log'}"
                    ) from None
                time.sleep(0.05)

    def kill(self) -> None:
        """Send SIGKILL, as a crashed host would stop answering."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def client(self, **options: float) -> redis.Redis:
        return redis.Redis(
            host="127.0.0.1", port=self.port, password=self.password, **options
        )


class SentinelGroup:
    """The master, its replica and the Sentinels, in folders under ``directory``."""

    def __init__(
        self,
        directory: Path,
        sentinels: int = 3,
        *,
        master_password: str | None = None,
        sentinel_password: str | None = None,
    ) -> None:
        executable = shutil.which("redis-server")
        if executable is None:
            raise RuntimeError(
                "redis-server is not installed; install it (Debian: apt-get install "
                "redis-server) to run the Sentinel tests"
            )
        self.executable = executable
        self.master_password = master_password
        self.sentinel_password = sentinel_password
        self.master = self._data_server(directory / "master", replica_of=None)
        self.replica = self._data_server(
            directory / "replica", replica_of=self.master.port
        )
        self.sentinels = [
            self._sentinel(directory / f"sentinel-{index}")
            for index in range(sentinels)
        ]

    @property
    def url(self) -> str:
        """The ``sentinel://`` URL of all Sentinels, in kombu's form, database 0.

        The master's password, if any, goes in the first part, where kombu
        reads it.
        """
        parts = [f"sentinel://127.0.0.1:{s.port}" for s in self.sentinels]
        if self.master_password:
            parts[0] = f"sentinel://:{self.master_password}@127.0.0.1:"
            parts[0] += str(self.sentinels[0].port)
        return ";".join(parts) + "/0"

    def _data_server(self, directory: Path, replica_of: int | None) -> RedisProcess:
        directory.mkdir(parents=True)
        port = free_port()
        command = [
            self.executable,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--dir",
            str(directory),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--logfile",
            str(directory / "redis.log"),
        ]
        if replica_of is not None:
            command += ["--replicaof", "127.0.0.1", str(replica_of)]
        if self.master_password:
            # Either server may become the master, so both require the
            # password and use it towards the other.
            command += [
                "--requirepass",
                self.master_password,
                "--masterauth",
                self.master_password,
            ]
        return RedisProcess(
            directory.name, directory, port, command, self.master_password
        )

    def _sentinel(self, directory: Path) -> RedisProcess:
        directory.mkdir(parents=True)
        port = free_port()
        # Sentinel rewrites its configuration file, so each gets its own.
        config = directory / "sentinel.conf"
        config.write_text(
            "\n".join(
                [
                    "bind 127.0.0.1",
                    f"port {port}",
                    f"dir {directory}",
                    f"logfile {directory / 'redis.log'}",
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} "
                    f"{QUORUM}",
                    f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {MASTER_NAME} {FAILOVER_TIMEOUT_MS}",
                    f"sentinel parallel-syncs {MASTER_NAME} 1",
                    *self._auth_lines(),
                    "",
                ]
            )
        )
        command = [self.executable, str(config), "--sentinel"]
        return RedisProcess(
            directory.name, directory, port, command, self.sentinel_password
        )

    def _auth_lines(self) -> list[str]:
        lines = []
        if self.master_password:
            lines.append(f"sentinel auth-pass {MASTER_NAME} {self.master_password}")
        if self.sentinel_password:
            # Sentinels talk to each other with the same password.
            lines.append(f"requirepass {self.sentinel_password}")
            lines.append(f"sentinel sentinel-pass {self.sentinel_password}")
        return lines

    def start(self) -> None:
        """Start every process and wait until the Sentinels know each other.

        Raises:
            RuntimeError: a process did not start, or the Sentinels did not
                see the replica and each other within ``START_TIMEOUT_S``.
        """
        self.master.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._sentinels_ready():
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the Sentinels did not find the replica and each other within "
                    f"{START_TIMEOUT_S:g} s; see the redis.log files under "
                    f"{self.master.directory.parent}"
                )
            time.sleep(0.2)

    def _sentinels_ready(self) -> bool:
        others = len(self.sentinels) - 1
        for sentinel in self.sentinels:
            client = sentinel.client(socket_timeout=1.0)
            try:
                replicas = client.sentinel_slaves(MASTER_NAME)
                peers = client.sentinel_sentinels(MASTER_NAME)
            except redis.RedisError:
                return False
            finally:
                client.close()
            if len(replicas) < 1 or len(peers) < others:
                return False
        return (
            self.replica.client().info("replication").get("master_link_status") == "up"
        )

    def master_port(self) -> int | None:
        """Return the master's port as the first Sentinel that answers reports it."""
        for sentinel in self.sentinels:
            client = sentinel.client(socket_timeout=1.0)
            try:
                address = client.sentinel_get_master_addr_by_name(MASTER_NAME)
            except redis.RedisError:
                continue
            finally:
                client.close()
            if address:
                return int(address[1])
        return None

    def stop(self) -> None:
        for process in [*self.sentinels, self.replica, self.master]:
            process.stop()


@contextmanager
def running_sentinel_group(
    directory: Path,
    *,
    master_password: str | None = None,
    sentinel_password: str | None = None,
) -> Iterator[SentinelGroup]:
    group = SentinelGroup(
        directory,
        master_password=master_password,
        sentinel_password=sentinel_password,
    )
    try:
        group.start()
        yield group
    finally:
        group.stop()
