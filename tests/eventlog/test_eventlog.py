"""The event log on both databases: queue-fed writer, filters and cursors, history across restarts,
failing writes held back (up to max_queued) and retried."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import psycopg
import pytest

from eventlog import EventLog, open_log
from livecall import wait_until

Target = Path | str  # a SQLite file or a postgresql:// URL


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "sqlite":
        return tmp_path / "log.db"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def log(target: Target) -> Iterator[EventLog]:
    log = EventLog(target)
    yield log
    log.close()


def execute(target: Target, sql: str) -> None:
    """Change the database behind the log's back."""
    if isinstance(target, Path):
        with closing(sqlite3.connect(target)) as db, db:
            db.execute(sql)
    else:
        with psycopg.connect(target, autocommit=True) as pg:
            pg.execute(sql)


def test_open_log_picks_postgresql_for_a_url_else_the_file(tmp_path: Path, postgres_url: str) -> None:
    on_file = open_log("", tmp_path / "log.db")
    on_file.record("a.b")
    assert on_file.flush() and (tmp_path / "log.db").exists()
    on_file.close()
    on_server = open_log(postgres_url, tmp_path / "unused.db")
    on_server.record("a.b")
    assert on_server.flush() and not (tmp_path / "unused.db").exists()
    assert [e["event"] for e in on_server.events()[0]] == ["a.b"]
    on_server.close()


def test_events_are_written_filtered_and_paginated(log: EventLog) -> None:
    for i in range(5):
        log.record("injection.created", "call-a", n=i)
    log.record("webhook.received", "call-b")
    log.record("injection_x", "call-b")  # not matched by the "injection" prefix filter
    assert log.flush()
    page, cursor = log.events(event="injection", limit=3)
    assert [e["data"]["n"] for e in page] == [0, 1, 2] and cursor == page[-1]["id"]
    rest, end = log.events(event="injection", after_id=cursor, limit=3)
    assert [e["data"]["n"] for e in rest] == [3, 4] and end is None
    only_b, _ = log.events(call_control_id="call-b")
    assert [e["event"] for e in only_b] == ["webhook.received", "injection_x"]
    assert all(e["at"].endswith("Z") for e in page)


def test_the_event_prefix_is_literal_and_since_compares_times(log: EventLog) -> None:
    for name in ("a%b.x", "a_b.x", "axb.x", "a%b", "A%B.y"):
        log.record(name)
    assert log.flush()
    assert [e["event"] for e in log.events(event="a%b")[0]] == ["a%b.x", "a%b", "A%B.y"]  # ASCII case ignored
    assert [e["event"] for e in log.events(event="a_b")[0]] == ["a_b.x"]
    everything, _ = log.events()
    since = everything[2]["at"]
    later, _ = log.events(since=since)
    assert later == [e for e in everything if e["at"] >= since] and later[-1]["event"] == "A%B.y"
    assert log.events(since="2999-01-01T00:00:00.000Z") == ([], None)


def test_calls_page_stably_while_they_change(log: EventLog) -> None:
    for i in range(5):
        log.save_call(f"c{i}", "streaming", {"call_control_id": f"c{i}", "n": i}, stream_id=f"s{i}")
    assert log.flush()
    first, cursor = log.calls(limit=2)
    assert [c["n"] for c in first] == [0, 1] and cursor is not None
    log.save_call("c0", "ended", {"call_control_id": "c0", "n": 0, "status": "ended"})  # no stream id: kept
    log.save_call("c3", "ended", {"call_control_id": "c3", "n": 3, "status": "ended"})
    assert log.flush()
    rest, end = log.calls(after=cursor, limit=5)
    assert [c["n"] for c in rest] == [2, 3, 4] and end is None  # c0 did not move to the end
    assert [c["n"] for c in log.calls(status="ended")[0]] == [0, 3]
    assert log.call("s0") == {"call_control_id": "c0", "n": 0, "status": "ended"}
    assert log.call("c3")["status"] == "ended"  # type: ignore[index]
    assert log.call("nobody") is None


def test_history_survives_a_restart(target: Target) -> None:
    log = EventLog(target)
    log.save_call("c1", "streaming", {"call_control_id": "c1", "status": "streaming"}, stream_id="s1")
    log.save_call("c2", "ended", {"call_control_id": "c2", "status": "ended"})
    log.close()

    again = EventLog(target)
    assert again.mark_interrupted() == ["c1"]
    assert again.call("s1")["status"] == "interrupted"  # type: ignore[index]
    assert again.call("c1")["end_reason"] == "server_restart"  # type: ignore[index]
    assert again.call("c2")["status"] == "ended"  # type: ignore[index]
    events, _ = again.events(call_control_id="c1")
    assert [e["event"] for e in events] == ["stream.interrupted"]
    again.close()


def test_sqlite_runs_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    EventLog(path).close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_locked_database_holds_rows_until_it_is_free(tmp_path: Path) -> None:
    path = tmp_path / "log.db"
    log = EventLog(path)
    assert log.flush()  # the writer has opened its connection and is idle
    blocker = sqlite3.connect(path, timeout=5)
    blocker.execute("BEGIN EXCLUSIVE")  # the writer cannot commit while this is held
    log.record("webhook.received", "c1")
    try:
        assert not log.flush(timeout=0.3)  # stuck behind the lock
    finally:
        blocker.rollback()
        blocker.close()
    assert log.flush(timeout=40)
    rows, _ = log.events(call_control_id="c1")
    assert len(rows) == 1
    assert log.healthy
    log.close()


def test_a_failing_write_degrades_health_keeps_rows_and_holds_flush(target: Target, log: EventLog) -> None:
    assert log.flush()
    execute(target, "ALTER TABLE events RENAME TO events_away")  # the writer's inserts now fail
    log.record("webhook.received", "c1")
    assert not log.flush(timeout=1.0)  # nothing committed, so flush does not say it was
    assert not log.healthy and "events" in (log.last_error or "")
    assert not log.flush(timeout=10)  # and at once (not timed here): readers don't wait on it
    execute(target, "ALTER TABLE events_away RENAME TO events")
    wait_until(lambda: log.healthy, what="the retried write")
    assert log.flush()
    rows, _ = log.events(call_control_id="c1")
    assert [r["event"] for r in rows] == ["webhook.received"]
    assert log.dropped == 0


def test_rows_over_max_queued_are_dropped_oldest_first_and_counted(target: Target) -> None:
    log = EventLog(target, max_queued=10)
    assert log.flush()
    execute(target, "ALTER TABLE events RENAME TO events_away")
    for n in range(25):
        log.record("webhook.received", "c1", n=n)
    wait_until(lambda: log.dropped == 15, what="15 rows dropped")
    # The writer drops the oldest rows before it tries (and fails) to write the rest.
    wait_until(lambda: not log.healthy, what="the failed write")
    assert log.dropped == 15
    execute(target, "ALTER TABLE events_away RENAME TO events")
    wait_until(lambda: log.healthy, what="the retried write")
    assert log.flush()
    rows, _ = log.events(call_control_id="c1")
    assert [r["data"]["n"] for r in rows] == list(range(15, 25))
    assert log.dropped == 15
    log.close()
