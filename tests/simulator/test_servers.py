"""simulator/servers.py: real PostgreSQL and Redis on loopback that stop, crash and come back on their port."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
import redis

from simulator.servers import PostgresServer, RedisServer, started


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of the test's own, since the test stops it."""
    server = started(PostgresServer)
    yield server
    server.close()


def test_postgres_keeps_its_data_and_port_across_a_graceful_restart(own_postgres: PostgresServer) -> None:
    url = own_postgres.create_database("keep")
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE TABLE t (x INTEGER)")
        db.execute("INSERT INTO t VALUES (42)")
    port = own_postgres.port

    own_postgres.stop()
    assert not own_postgres.running
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)

    own_postgres.start()
    assert own_postgres.port == port
    with psycopg.connect(url) as db:
        assert db.execute("SELECT x FROM t").fetchall() == [(42,)]


def test_postgres_comes_back_after_a_kill(own_postgres: PostgresServer) -> None:
    url = own_postgres.create_database("crash")
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE TABLE t (x INTEGER)")
        db.execute("INSERT INTO t VALUES (7)")
    own_postgres.kill()
    assert not own_postgres.running
    own_postgres.start()  # crash recovery replays what was committed
    with psycopg.connect(url) as db:
        assert db.execute("SELECT x FROM t").fetchall() == [(7,)]


def test_each_test_gets_an_empty_database_of_its_own(postgres_url: str, postgres_server: PostgresServer) -> None:
    assert postgres_url.startswith(f"postgresql://postgres@127.0.0.1:{postgres_server.port}/t_")
    with psycopg.connect(postgres_url) as db:
        tables = db.execute("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
    assert tables == (0,)


def test_redis_starts_stops_and_restarts_on_its_port() -> None:
    server = started(RedisServer)
    try:
        port = server.port
        with server.client() as client:
            assert client.set("k", "v")
        server.stop()
        with server.client() as client, pytest.raises(redis.ConnectionError):
            client.ping()
        server.start()
        assert server.port == port
        with server.client() as client:
            assert client.ping()
            assert client.get("k") is None  # no persistence: a restart starts empty
        server.kill()
        assert not server.running
        server.start()
        with server.client() as client:
            assert client.ping()
    finally:
        server.close()


def test_each_test_gets_an_empty_redis(redis_url: str, redis_server: RedisServer) -> None:
    assert redis_url == f"redis://127.0.0.1:{redis_server.port}/0"
    with redis.Redis.from_url(redis_url) as client:
        assert client.dbsize() == 0
        client.set("left-behind", "1")  # the next test's redis_url flushes it
