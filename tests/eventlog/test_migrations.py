"""eventlog/migrations: versions recorded in schema_migrations, applied once, an old SQLite file adopted."""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from pathlib import Path

import psycopg
import pytest

from eventlog import EventLog, migrations
from eventlog.dialect import PostgreSQL, SQLite

# eventlog/schema.sql as it was before versioned migrations (commit d8eeb6a), run by every start.
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    call_control_id TEXT,
    event TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX IF NOT EXISTS events_by_call ON events (call_control_id, id);
CREATE INDEX IF NOT EXISTS events_by_name ON events (event, id);
CREATE INDEX IF NOT EXISTS events_by_time ON events (at, id);

CREATE TABLE IF NOT EXISTS calls (
    call_control_id TEXT PRIMARY KEY,
    stream_id TEXT,
    status TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}',
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS calls_by_stream ON calls (stream_id);
"""


def sqlite_schema(path: Path) -> list[tuple[str, str]]:
    with closing(sqlite3.connect(path)) as db:
        return db.execute("SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' "
                          "AND name != 'schema_migrations' ORDER BY name").fetchall()


def test_an_old_sqlite_file_is_adopted_as_version_1_with_its_rows(tmp_path: Path) -> None:
    old = tmp_path / "old.db"
    with closing(sqlite3.connect(old)) as db, db:
        db.executescript(OLD_SCHEMA)
        db.execute("INSERT INTO events (at, call_control_id, event, data) "
                   "VALUES ('2025-01-01T00:00:00.000Z', 'c1', 'webhook.received', '{\"n\":1}')")
        db.execute("INSERT INTO calls VALUES ('c1', 's1', 'ended', '{\"status\":\"ended\"}', 'x', 'x')")
    new = tmp_path / "new.db"
    EventLog(new).close()

    log = EventLog(old)
    assert log.events()[0][0]["data"] == {"n": 1}
    assert log.call("s1") == {"status": "ended"}
    log.record("webhook.received", "c1", n=2)
    assert log.flush()
    assert [e["id"] for e in log.events()[0]] == [1, 2]
    log.close()
    with closing(sqlite3.connect(old)) as db:
        assert db.execute("SELECT version FROM schema_migrations").fetchall() == [(1,), (2,)]
    assert sqlite_schema(old) == sqlite_schema(new)  # the same tables and indexes as a new file


def test_each_version_is_applied_once(tmp_path: Path, postgres_url: str) -> None:
    for db in (SQLite(tmp_path / "log.db"), PostgreSQL(postgres_url)):
        try:
            assert migrations.apply(db) == [m.version for m in migrations.load()]
            assert migrations.apply(db) == []
        finally:
            db.close()


def test_migrations_are_numbered_from_1_without_gaps(tmp_path: Path) -> None:
    (tmp_path / "0001_first.sql").write_text("CREATE TABLE a (x INTEGER);")
    (tmp_path / "0003_third.sql").write_text("CREATE TABLE b (x INTEGER);")
    with pytest.raises(RuntimeError) as raised:
        migrations.load(tmp_path)
    assert str(raised.value) == "event log migrations must be numbered 1, 2, 3... without gaps, found [1, 3]"


def test_a_new_version_is_applied_in_one_transaction_after_the_old_ones(tmp_path: Path) -> None:
    db = SQLite(tmp_path / "log.db")
    first = migrations.load()
    known = [m.version for m in first]
    assert migrations.apply(db, first) == known
    following = len(first) + 1
    broken = migrations.Migration(following, "broken",
                                  "CREATE TABLE extra (x INTEGER);\nCREATE TABLE extra (x INTEGER);")
    with pytest.raises(sqlite3.OperationalError, match="already exists"):
        migrations.apply(db, [*first, broken])
    with closing(sqlite3.connect(db.path)) as conn:
        assert [v for (v,) in conn.execute("SELECT version FROM schema_migrations ORDER BY version")] == known
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'extra'").fetchall() == []  # rolled back
    fixed = migrations.Migration(following, "extra", "CREATE TABLE extra (\n    x $text\n);")
    assert migrations.apply(db, [*first, fixed]) == [following]


def test_nodes_starting_together_on_postgresql_migrate_once(postgres_url: str) -> None:
    logs: list[EventLog] = []
    errors: list[BaseException] = []

    def start() -> None:
        try:
            logs.append(EventLog(postgres_url))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for log in logs:
        log.close()
    assert errors == [] and len(logs) == 6
    with psycopg.connect(postgres_url) as db:
        assert db.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall() == [(1,), (2,)]
