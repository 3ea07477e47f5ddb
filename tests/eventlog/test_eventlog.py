"""The event log: queue-fed writer, WAL, filters and cursors, history across restarts."""

import sqlite3

from eventlog import EventLog
from livecall import wait_until


def test_events_are_written_filtered_and_paginated(tmp_path):
    log = EventLog(tmp_path / "log.db")
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
    log.close()


def test_wal_mode_and_history_survive_a_restart(tmp_path):
    path = tmp_path / "log.db"
    log = EventLog(path)
    log.save_call("c1", "streaming", {"call_control_id": "c1", "status": "streaming"}, stream_id="s1")
    log.save_call("c2", "ended", {"call_control_id": "c2", "status": "ended"})
    log.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    again = EventLog(path)
    assert again.mark_interrupted() == ["c1"]
    assert again.call("s1")["status"] == "interrupted"
    assert again.call("c1")["end_reason"] == "server_restart"
    assert again.call("c2")["status"] == "ended"
    events, _ = again.events(call_control_id="c1")
    assert [e["event"] for e in events] == ["stream.interrupted"]
    again.close()


def test_a_locked_database_holds_rows_until_it_is_free(tmp_path):
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


def test_a_failing_write_degrades_health_keeps_rows_and_holds_flush(tmp_path):
    path = tmp_path / "log.db"
    log = EventLog(path)
    assert log.flush()
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE events RENAME TO events_away")  # the writer's inserts now fail
    log.record("webhook.received", "c1")
    assert not log.flush(timeout=1.0)  # nothing committed, so flush does not say it was
    assert not log.healthy and "no such table" in (log.last_error or "")
    assert not log.flush(timeout=10)  # and at once (not timed here): readers don't wait on it
    with sqlite3.connect(path) as db:
        db.execute("ALTER TABLE events_away RENAME TO events")
    wait_until(lambda: log.healthy, what="the retried write")
    assert log.flush()
    rows, _ = log.events(call_control_id="c1")
    assert [r["event"] for r in rows] == ["webhook.received"]
    assert log.healthy
    log.close()
