"""Real PostgreSQL and Redis servers for the tests, `make demo-cluster` and the benchmarks, each on a
free loopback port in a directory of its own.

A server can be stopped (gracefully) or killed and started again on the same port with the same
directory, so outage tests can take the database away under running code and bring it back.
`make test` installs the Debian packages that provide the binaries (see the Makefile's `services`).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import redis

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
INSTALL_HINT = "`make test` installs them (Debian packages postgresql and redis-server)"


class ServiceError(RuntimeError):
    """Not installed, or would not start or stop (the message has the server's log)."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def postgres_bin_dir() -> Path:
    """The newest Debian PostgreSQL's bin directory (/usr/lib/postgresql/<version>/bin)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    if not found:
        raise ServiceError(f"PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/postgres): {INSTALL_HINT}")
    return Path(found[-1]).parent


def redis_server_binary() -> str:
    found = shutil.which("redis-server") or ("/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server")
                                             else None)
    if not found:
        raise ServiceError(f"redis-server is not installed: {INSTALL_HINT}")
    return found


class _Server:
    """A child process with a port, a directory and a log file; subclasses say how to start and probe it."""

    name = "server"

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix=f"test-{self.name}-"))
        self.port = free_port()
        self.log_path = self.dir / f"{self.name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self) -> None:
        if self.running:
            return
        with self.log_path.open("ab") as log:
            # Its own session: kill() takes the whole process group (PostgreSQL's backends too).
            self._process = subprocess.Popen(self._command(), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True,
                                             **self._run_as())
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._accepts_connections():
            if self._process.poll() is not None:
                raise ServiceError(f"{self.name} exited with {self._process.returncode} at start:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise ServiceError(f"{self.name} did not accept connections on port {self.port} within "
                                   f"{START_TIMEOUT_S:g} s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Graceful shutdown; the directory is kept for a start() on the same port."""
        if not self.running:
            return
        assert self._process is not None
        self._process.send_signal(self._stop_signal)
        try:
            self._process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ServiceError(f"{self.name} did not stop within {STOP_TIMEOUT_S:g} s:\n{self.log_tail()}") from None

    def kill(self) -> None:
        """SIGKILL to the server and its children, as a crash would."""
        if self._process is None or self._process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, signal.SIGKILL)
        self._process.wait()

    def close(self) -> None:
        """Stop and delete the directory: the end of the server."""
        try:
            self.stop()
        finally:
            self.kill()
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    _stop_signal = signal.SIGTERM

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _accepts_connections(self) -> bool:
        raise NotImplementedError

    def _run_as(self) -> dict[str, Any]:
        return {}


class PostgresServer(_Server):
    """initdb on first start; trust auth on 127.0.0.1, fsync off, the unix socket in its directory.

    PostgreSQL refuses to run as root, so under root (tests and CI) it runs as the `postgres` user.
    """

    name = "postgres"
    USER = "postgres"  # the superuser role the URL connects as
    # Fast shutdown: rolls back open transactions and disconnects clients (SIGTERM would wait for them).
    _stop_signal = signal.SIGINT

    def __init__(self) -> None:
        self.bin = postgres_bin_dir()
        super().__init__()
        self.data = self.dir / "data"
        self._account = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        if self._account is not None:
            os.chown(self.dir, self._account.pw_uid, self._account.pw_gid)

    @property
    def url(self) -> str:
        return self.database_url("postgres")

    def database_url(self, dbname: str) -> str:
        return f"postgresql://{self.USER}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        if not (self.data / "PG_VERSION").exists():
            self._initdb()
        super().start()

    def create_database(self, dbname: str) -> str:
        with psycopg.connect(self.url, autocommit=True) as db:
            db.execute(f'CREATE DATABASE "{dbname}"')
        return self.database_url(dbname)

    def drop_database(self, dbname: str) -> None:
        with psycopg.connect(self.url, autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')

    def _initdb(self) -> None:
        done = subprocess.run([str(self.bin / "initdb"), "-D", str(self.data), "-U", self.USER, "--auth=trust",
                               "-E", "UTF8", "--no-locale", "--no-sync"],
                              capture_output=True, stdin=subprocess.DEVNULL, **self._run_as())
        if done.returncode != 0:
            raise ServiceError(f"initdb failed ({done.returncode}):\n{done.stdout.decode()}{done.stderr.decode()}")

    def _command(self) -> list[str]:
        return [str(self.bin / "postgres"), "-D", str(self.data), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.dir}",
                # fsync off: nothing survives a machine crash, but a commit survives a kill of the
                # server (its WAL is written to the OS at once; synchronous_commit stays on).
                "-c", "fsync=off", "-c", "full_page_writes=off",
                "-c", "max_connections=200"]

    def _accepts_connections(self) -> bool:
        try:
            psycopg.connect(self.url, connect_timeout=1).close()
        except psycopg.OperationalError:
            return False
        return True

    def _run_as(self) -> dict[str, Any]:
        if self._account is None:
            return {}
        return {"user": self._account.pw_uid, "group": self._account.pw_gid, "extra_groups": [],
                "env": {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C", "HOME": str(self.dir)}}


class RedisServer(_Server):
    """No persistence (`--save ''`, no AOF): a restart starts empty."""

    name = "redis"

    def __init__(self) -> None:
        self.binary = redis_server_binary()
        super().__init__()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=5)

    def _command(self) -> list[str]:
        return [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(self.dir), "--daemonize", "no", "--logfile", ""]

    def _accepts_connections(self) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


S = TypeVar("S", bound=_Server)


def started(factory: Callable[[], S]) -> S:
    """A new server, running; on a failed start its directory is gone again."""
    server = factory()
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return server
