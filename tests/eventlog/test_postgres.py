"""The event log shared by several nodes on one PostgreSQL, and its PostgreSQL going away and coming back."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest

from eventlog import EventLog, Unavailable
from eventlog.dialect import PostgreSQL
from livecall import wait_until
from simulator.servers import PostgresServer, started


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A server of the test's own, since the test takes it away."""
    server = started(PostgresServer)
    yield server
    server.close()


def test_two_nodes_see_each_others_events_and_calls(postgres_url: str) -> None:
    a, b = EventLog(postgres_url), EventLog(postgres_url)
    try:
        for n in range(3):
            a.record("injection.created", "call-a", n=n)
            b.record("injection.created", "call-b", n=n)
        a.save_call("call-a", "streaming", {"call_control_id": "call-a"}, stream_id="s-a")
        b.save_call("call-b", "streaming", {"call_control_id": "call-b"}, stream_id="s-b")
        assert a.flush() and b.flush()
        for log in (a, b):
            events, _ = log.events(event="injection")
            assert sorted((e["call_control_id"], e["data"]["n"]) for e in events) == [
                ("call-a", 0), ("call-a", 1), ("call-a", 2), ("call-b", 0), ("call-b", 1), ("call-b", 2)]
            assert log.call("s-a") == {"call_control_id": "call-a"}
            assert log.call("s-b") == {"call_control_id": "call-b"}
        # A call that moves to another node keeps its place in the pages.
        first, _ = a.calls()
        b.save_call("call-a", "ended", {"call_control_id": "call-a", "status": "ended"})
        assert b.flush()
        again, _ = a.calls()
        assert [c["call_control_id"] for c in again] == [c["call_control_id"] for c in first]
        assert a.call("call-a") == {"call_control_id": "call-a", "status": "ended"}
    finally:
        a.close()
        b.close()


def test_ids_become_visible_in_order_across_writers(postgres_url: str) -> None:
    # Node a's writer takes an id and has not committed; node b's writer must not take and commit a
    # larger one meanwhile, or a reader paging with a cursor past b's row would never see a's.
    EventLog(postgres_url).close()  # the schema
    db = PostgreSQL(postgres_url)
    first, second = db.connect(), db.connect()
    b_committed = threading.Event()

    def write_b() -> None:
        with second.transaction() as session:
            db.lock_writes(session)
            session.run("INSERT INTO events (at, call_control_id, event, data) VALUES (?, ?, ?, ?)",
                        ("2026-01-01T00:00:01Z", "b", "test.b", "{}"))
        b_committed.set()

    try:
        with first.transaction() as session:
            db.lock_writes(session)
            session.run("INSERT INTO events (at, call_control_id, event, data) VALUES (?, ?, ?, ?)",
                        ("2026-01-01T00:00:00Z", "a", "test.a", "{}"))
            writer_b = threading.Thread(target=write_b)
            writer_b.start()
            assert not b_committed.wait(1.0)  # b waits for a's commit
            with db.session() as reader:
                assert reader.query("SELECT event FROM events WHERE event LIKE ?", ("test.%",)) == []
        writer_b.join(10)
        assert b_committed.is_set()
        with db.session() as reader:
            assert reader.query("SELECT event FROM events WHERE event LIKE ? ORDER BY id", ("test.%",)) == [
                ("test.a",), ("test.b",)]
    finally:
        first.close()
        second.close()
        db.close()


@pytest.mark.parametrize("outage", ["stop", "kill"])
def test_an_outage_queues_rows_fails_reads_and_heals_by_itself(own_postgres: PostgresServer, outage: str) -> None:
    log = EventLog(own_postgres.create_database("log"))
    try:
        log.record("webhook.received", "c1", n=0)
        assert log.flush()
        getattr(own_postgres, outage)()

        for n in range(1, 6):
            log.record("webhook.received", "c1", n=n)
        log.save_call("c1", "streaming", {"call_control_id": "c1"}, stream_id="s1")
        wait_until(lambda: not log.healthy, what="the failed write")
        assert log.last_error
        assert not log.flush()
        with pytest.raises(Unavailable, match="the event log database is unavailable"):
            log.events()
        with pytest.raises(Unavailable):
            log.call("s1")

        own_postgres.start()
        wait_until(lambda: log.healthy, timeout=20, what="the writer's reconnection")
        assert log.flush()
        events, _ = log.events(call_control_id="c1")
        assert [e["data"]["n"] for e in events] == [0, 1, 2, 3, 4, 5]
        assert log.call("s1") == {"call_control_id": "c1"}
        assert log.dropped == 0
    finally:
        log.close()


def test_a_start_without_the_database_raises_unavailable(own_postgres: PostgresServer) -> None:
    url = own_postgres.create_database("log")
    own_postgres.stop()
    with pytest.raises(Unavailable, match="the event log database is unavailable"):
        EventLog(url)
