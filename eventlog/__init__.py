"""The durable event log: one SQLite file (WAL), one writer thread fed by a queue.

Request threads and the media loop only append rows to a queue, so nothing blocks on disk; the
writer, when it finds the queue empty, looks again WRITE_INTERVAL_S later, and commits what it
finds in batches (flush() wakes it and waits for the commit).
Readers open their own short-lived connections; WAL lets them read while the writer writes.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SCHEMA = (Path(__file__).with_name("schema.sql")).read_text()
# An idle writer looks for new rows this often (a busy one commits batch after batch): rare
# enough that it seldom takes the GIL from the media loop, short enough that a crash loses at
# most this much of the log.
WRITE_INTERVAL_S = 0.02
# Statuses of a call that was still live when the process stopped; see mark_interrupted.
LIVE_STATUSES = ("answering", "answered", "streaming", "disconnected")


def utc_now() -> str:
    """ISO 8601 UTC with millisecond precision and a Z, the one time format of the API."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass(frozen=True)
class _Event:
    at: str
    call_control_id: str | None
    event: str
    data: str


@dataclass(frozen=True)
class _CallUpsert:
    call_control_id: str
    stream_id: str | None
    status: str
    data: str
    at: str


@dataclass
class _Flush:
    done: threading.Event


class EventLog:
    def __init__(self, path: Path, *, batch: int = 500) -> None:
        self.path = path
        self._batch = batch
        # Appended to by any thread without waking the writer: the media loop records events
        # too, and a wake-up per record would hand the GIL to the writer each time. An idle
        # writer looks again every WRITE_INTERVAL_S, or at once for flush() and close().
        self._queue: deque[_Event | _CallUpsert | _Flush | None] = deque()
        self._wakeup = threading.Event()
        # Set by the writer thread when a write fails; read by /health. Plain attribute:
        # a single reference assignment, no lock needed.
        self.last_error: str | None = None
        path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.executescript(SCHEMA)
        self._thread = threading.Thread(target=self._write_loop, name="eventlog-writer", daemon=True)
        self._thread.start()

    # -- writing (any thread, never blocks) -------------------------------------------------

    def record(self, event: str, call_control_id: str | None = None, **data: Any) -> None:
        self._queue.append(_Event(utc_now(), call_control_id, event, _dumps(data)))

    def save_call(self, call_control_id: str, status: str, view: dict[str, Any],
                  stream_id: str | None = None) -> None:
        """Upsert the call's row so /streams?status=all survives a restart."""
        self._queue.append(_CallUpsert(call_control_id, stream_id, status, _dumps(view), utc_now()))

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until everything queued so far is committed; False at once while writes fail
        (readers flush for read-your-writes, and a failing disk should not also make them wait)."""
        if not self._thread.is_alive() or self.last_error is not None:
            return False
        marker = _Flush(threading.Event())
        self._queue.append(marker)
        self._wakeup.set()
        return marker.done.wait(timeout)

    def close(self, timeout: float = 5.0) -> None:
        if self._thread.is_alive():
            self._queue.append(None)
            self._wakeup.set()
            self._thread.join(timeout)

    @property
    def healthy(self) -> bool:
        return self._thread.is_alive() and self.last_error is None

    # -- reading (any thread, own connection) -----------------------------------------------

    def events(
        self,
        *,
        call_control_id: str | None = None,
        event: str | None = None,
        since: str | None = None,
        after_id: int = 0,
        limit: int = 100,
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Events in log order after `after_id`; returns (items, next cursor or None)."""
        where: list[str] = ["id > ?"]
        args: list[object] = [after_id]
        if call_control_id:
            where.append("call_control_id = ?")
            args.append(call_control_id)
        if event:
            # "injection" matches injection.created, injection.finished, ...
            where.append("(event = ? OR event LIKE ? ESCAPE '\\')")
            args += [event, _like_prefix(event)]
        if since:
            where.append("at >= ?")
            args.append(since)
        sql = f"SELECT id, at, call_control_id, event, data FROM events WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
        with self._connect() as db:
            rows = db.execute(sql, [*args, limit + 1]).fetchall()
        items = [
            {"id": r[0], "at": r[1], "call_control_id": r[2], "event": r[3], "data": json.loads(r[4])}
            for r in rows[:limit]
        ]
        next_cursor = items[-1]["id"] if len(rows) > limit else None
        return items, next_cursor

    def calls(self, *, status: str | None = None, after: int = 0,
              limit: int = 100) -> tuple[list[dict[str, Any]], int | None]:
        """Calls in the order they were first logged, after cursor `after`; (items, next cursor or None).

        The cursor is the row's rowid: an upsert keeps it, so pages are stable while calls change.
        """
        where: list[str] = ["rowid > ?"]
        args: list[object] = [after]
        if status:
            where.append("status = ?")
            args.append(status)
        with self._connect() as db:
            rows = db.execute(f"SELECT rowid, data FROM calls WHERE {' AND '.join(where)} ORDER BY rowid LIMIT ?",
                              [*args, limit + 1]).fetchall()
        items = [json.loads(r[1]) for r in rows[:limit]]
        return items, (rows[limit - 1][0] if len(rows) > limit else None)

    def call(self, key: str) -> dict[str, Any] | None:
        """A call by call_control_id or stream_id."""
        with self._connect() as db:
            row = db.execute(
                "SELECT data FROM calls WHERE call_control_id = ? OR stream_id = ? LIMIT 1", (key, key)
            ).fetchone()
        return json.loads(row[0]) if row else None

    def mark_interrupted(self) -> list[str]:
        """At start-up: calls that were live when the last process stopped can't be resumed."""
        placeholders = ",".join("?" * len(LIVE_STATUSES))
        now = utc_now()
        with self._connect() as db:
            rows = db.execute(
                f"SELECT call_control_id, data FROM calls WHERE status IN ({placeholders})", LIVE_STATUSES
            ).fetchall()
            for ccid, data in rows:
                view = json.loads(data)
                view.update(status="interrupted", ended_at=view.get("ended_at") or now,
                            end_reason="server_restart")
                db.execute("UPDATE calls SET status = 'interrupted', data = ?, updated_at = ? "
                           "WHERE call_control_id = ?", (_dumps(view), now, ccid))
                db.execute("INSERT INTO events (at, call_control_id, event, data) VALUES (?, ?, ?, ?)",
                           (now, ccid, "stream.interrupted", _dumps({"reason": "server_restart"})))
        return [r[0] for r in rows]

    # -- internals ---------------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=10)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            with db:
                yield db
        finally:
            db.close()

    def _write_loop(self) -> None:
        db = sqlite3.connect(self.path, timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        stopping = False
        pending = self._queue
        while not stopping:
            if not pending:
                self._wakeup.wait(WRITE_INTERVAL_S)
                self._wakeup.clear()
                continue
            items: list[_Event | _CallUpsert | _Flush | None] = []
            while pending and len(items) < self._batch:
                items.append(pending.popleft())
            flushes = [i for i in items if isinstance(i, _Flush)]
            stopping = any(i is None for i in items)
            if self._write(db, items):
                for f in flushes:
                    f.done.set()
        db.close()

    def _write(self, db: sqlite3.Connection, items: list[Any]) -> bool:
        """Commit the batch; on failure put it back (flush markers too: nothing was committed)."""
        events = [(i.at, i.call_control_id, i.event, i.data) for i in items if isinstance(i, _Event)]
        calls = [(i.call_control_id, i.stream_id, i.status, i.data, i.at, i.at)
                 for i in items if isinstance(i, _CallUpsert)]
        if not events and not calls:
            return True
        try:
            with db:
                db.executemany("INSERT INTO events (at, call_control_id, event, data) VALUES (?, ?, ?, ?)",
                               events)
                db.executemany(
                    "INSERT INTO calls (call_control_id, stream_id, status, data, created_at, updated_at) "
                    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (call_control_id) DO UPDATE SET "
                    "stream_id = COALESCE(excluded.stream_id, calls.stream_id), status = excluded.status, "
                    "data = excluded.data, updated_at = excluded.updated_at",
                    calls,
                )
            self.last_error = None
            return True
        except sqlite3.Error as exc:
            # Keep serving calls; /health turns degraded and the rows are kept for the next try.
            self.last_error = str(exc)
            logger.error("event log write failed (%d rows kept for retry): %s", len(events) + len(calls), exc)
            self._queue.extendleft(reversed([i for i in items if i is not None]))
            threading.Event().wait(0.5)
            return False


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, default=str, separators=(",", ":"))


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + ".%"
