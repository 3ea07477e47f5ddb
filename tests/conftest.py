"""Set-up shared by every test directory."""

from __future__ import annotations

import gc
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from eventlog import EventLog
from livecall import API_KEY
from metrics import Metrics
from simulator import FakeTelnyx
from simulator.servers import PostgresServer, RedisServer, S, ServiceError, started


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before each test, collect and freeze what is alive, as `python app.py` freezes what start-up
    # allocated (app.main). The server and the simulator run in this process, next to every test
    # module and every library the tests import (300,000 objects): unfrozen, a full collection
    # walked them all in 130-250 ms on this machine, and a test whose bystander call was playing
    # then heard the server's stall as a gap. Frozen, a collection walks one test's objects only.
    gc.collect()
    gc.freeze()


@pytest.fixture
def log(tmp_path: Path) -> Iterator[EventLog]:
    """A real event log of the test's own, for unit tests of what writes to it."""
    log = EventLog(tmp_path / "events.sqlite3")
    yield log
    log.close()


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


# -- real PostgreSQL and Redis (simulator/servers.py) ------------------------------------------------
# One server of each per test session, started on first use; each test gets a fresh database of its
# own. Missing binaries fail the test (CI must not skip these quietly): `make test` installs them.


def _start_service(factory: Callable[[], S]) -> S:
    try:
        return started(factory)
    except ServiceError as exc:  # not installed, or would not start: say so, with its log
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = _start_service(PostgresServer)
    yield server
    server.close()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = _start_service(RedisServer)
    yield server
    server.close()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A new, empty database on the session's PostgreSQL, dropped after the test."""
    if not postgres_server.running:  # an outage test before this one left it stopped
        postgres_server.start()
    name = f"t_{secrets.token_hex(6)}"
    yield postgres_server.create_database(name)
    if postgres_server.running:
        postgres_server.drop_database(name)


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """The session's Redis, emptied (all of its databases) before the test."""
    if not redis_server.running:
        redis_server.start()
    with redis_server.client() as client:
        client.flushall()
    yield redis_server.url


# The simulated Telnyx and a clips folder, for every test that runs calls (tests/e2e, tests/browser).

@pytest.fixture
def telnyx() -> Iterator[FakeTelnyx]:
    with FakeTelnyx(api_key=API_KEY) as fake:
        yield fake


@pytest.fixture
def media_dir(tmp_path: Path) -> Path:
    path = tmp_path / "media"
    path.mkdir()
    return path
