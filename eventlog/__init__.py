"""The durable event log: SQLite (one file, WAL) or PostgreSQL, one writer thread fed by a queue.

Request threads and the media loop only append rows to a queue, so nothing blocks on the database;
the writer, when it finds the queue empty, looks again WRITE_INTERVAL_S later, and commits what it
finds in batches (flush() wakes it and waits for the commit). While writes fail it keeps at most
`max_queued` rows, dropping (and counting) the oldest, and reconnects until the database is back.
Readers use short transactions of their own: a new SQLite connection, or one from a small pool on
PostgreSQL. What differs between the two databases is in dialect.py; the schema is migrations/.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from eventlog import migrations
from eventlog.dialect import Connection, Database, Session, database

logger = logging.getLogger(__name__)

# An idle writer looks for new rows this often (a busy one commits batch after batch): rare
# enough that it seldom takes the GIL from the media loop, short enough that a crash loses at
# most this much of the log.
WRITE_INTERVAL_S = 0.02
# A failed write is tried again this much later, on a new connection.
RETRY_INTERVAL_S = 0.5
# Rows kept while writes fail: about 100 MB at worst, hours of a busy node's events.
MAX_QUEUED = 100_000
# Statuses of a call that was still live when the process stopped; see mark_interrupted.
LIVE_STATUSES = ("answering", "answered", "streaming", "disconnected")


class Unavailable(Exception):
    """The event log's database cannot be reached now: a read to try again later (a 503)."""


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


_Item = _Event | _CallUpsert | _Flush


@dataclass
class _Trouble:
    """Failed writes or dropped rows, from the first until a write succeeds (the writer's own)."""

    since: float  # time.monotonic()
    dropped_before: int  # EventLog.dropped when it began
    failure_logged: bool = False
    drop_logged: bool = False

_INSERT_EVENT = "INSERT INTO events (at, call_control_id, event, data) VALUES (?, ?, ?, ?)"
_UPSERT_CALL = (
    "INSERT INTO calls (call_control_id, stream_id, status, data, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (call_control_id) DO UPDATE SET "
    "stream_id = COALESCE(excluded.stream_id, calls.stream_id), status = excluded.status, "
    "data = excluded.data, updated_at = excluded.updated_at"
)


def open_log(database_url: str, path: Path, *, batch: int = 500, max_queued: int = MAX_QUEUED) -> EventLog:
    """The log on PostgreSQL when `database_url` is set (scaled mode), else in the SQLite file at `path`."""
    return EventLog(database_url or path, batch=batch, max_queued=max_queued)


class EventLog:
    def __init__(self, path_or_url: Path | str, *, batch: int = 500, max_queued: int = MAX_QUEUED) -> None:
        """A SQLite file at a path, or PostgreSQL at a postgresql:// URL; migrates its schema first.

        Raises Unavailable when the database cannot be reached at start-up.
        """
        self._batch = batch
        self._max_queued = max_queued
        self._db: Database = database(path_or_url)
        try:
            migrations.apply(self._db)
        except self._db.unreachable as exc:
            self._db.close()
            raise Unavailable(f"the event log database is unavailable: {exc}") from exc
        except BaseException:
            self._db.close()
            raise
        # Appended to by any thread without waking the writer: the media loop records events
        # too, and a wake-up per record would hand the GIL to the writer each time. An idle
        # writer looks again every WRITE_INTERVAL_S, or at once for flush() and close().
        # None asks the writer to stop.
        self._queue: deque[_Item | None] = deque()
        self._wakeup = threading.Event()
        # Set by the writer thread when a write fails, cleared when one succeeds; read by /health.
        # Plain attributes, like `dropped` (rows lost to max_queued, only ever raised by the
        # writer): single reference assignments, no lock needed.
        self.last_error: str | None = None
        self.dropped = 0
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
        (readers flush for read-your-writes, and a failing database should not also make them wait)."""
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
        self._db.close()

    @property
    def healthy(self) -> bool:
        return self._thread.is_alive() and self.last_error is None

    # -- reading (any thread, a short transaction of its own; Unavailable when unreachable) ----

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
            where.append(f"(event = ? OR event {self._db.prefix_like} ? ESCAPE '\\')")
            args += [event, _like_prefix(event)]
        if since:
            where.append("at >= ?")
            args.append(since)
        sql = f"SELECT id, at, call_control_id, event, data FROM events WHERE {' AND '.join(where)} ORDER BY id LIMIT ?"
        with self._session() as db:
            rows = db.query(sql, [*args, limit + 1])
        items = [
            {"id": r[0], "at": r[1], "call_control_id": r[2], "event": r[3], "data": json.loads(r[4])}
            for r in rows[:limit]
        ]
        next_cursor = items[-1]["id"] if len(rows) > limit else None
        return items, next_cursor

    def last_event_id(self) -> int:
        """The id of the newest event committed, 0 for none: a cursor for 'from now on'."""
        with self._session() as db:
            rows = db.query("SELECT MAX(id) FROM events")
        return int(rows[0][0] or 0)

    def calls(self, *, status: str | None = None, after: int = 0,
              limit: int = 100) -> tuple[list[dict[str, Any]], int | None]:
        """Calls in the order they were first logged, after cursor `after`; (items, next cursor or None).

        The cursor is a number the row got at its first insert (SQLite's rowid, PostgreSQL's seq):
        an upsert keeps it, so pages are stable while calls change.
        """
        cursor = self._db.paging_column
        where: list[str] = [f"{cursor} > ?"]
        args: list[object] = [after]
        if status:
            where.append("status = ?")
            args.append(status)
        with self._session() as db:
            rows = db.query(f"SELECT {cursor}, data FROM calls WHERE {' AND '.join(where)} ORDER BY {cursor} LIMIT ?",
                            [*args, limit + 1])
        items = [json.loads(r[1]) for r in rows[:limit]]
        return items, (rows[limit - 1][0] if len(rows) > limit else None)

    def call(self, key: str) -> dict[str, Any] | None:
        """A call by call_control_id or stream_id."""
        with self._session() as db:
            rows = db.query("SELECT data FROM calls WHERE call_control_id = ? OR stream_id = ? LIMIT 1", (key, key))
        return json.loads(rows[0][0]) if rows else None

    def live_calls(self) -> list[tuple[str, str]]:
        """The calls the last process was playing when it stopped (a crash leaves them live, a
        SIGTERM interrupted by "server_shutdown"), with when each was created: at start-up."""
        statuses = (*LIVE_STATUSES, "interrupted")
        placeholders = ",".join("?" * len(statuses))
        with self._session() as db:
            rows = db.query(f"SELECT call_control_id, status, data, created_at FROM calls "
                            f"WHERE status IN ({placeholders})", statuses)
        return [(str(ccid), str(created)) for ccid, status, data, created in rows
                if status != "interrupted" or json.loads(data).get("end_reason") == "server_shutdown"]

    def mark_interrupted(self, keep: frozenset[str] = frozenset()) -> list[str]:
        """At start-up: calls that were live when the last process stopped, but those in `keep`
        (which it will try to resume), can't be resumed."""
        placeholders = ",".join("?" * len(LIVE_STATUSES))
        now = utc_now()
        with self._session() as db:
            rows = [r for r in db.query(f"SELECT call_control_id, data FROM calls WHERE status IN ({placeholders})",
                                        LIVE_STATUSES) if r[0] not in keep]
            for ccid, data in rows:
                view = json.loads(data)
                view.update(status="interrupted", ended_at=view.get("ended_at") or now,
                            end_reason="server_restart")
                db.run("UPDATE calls SET status = 'interrupted', data = ?, updated_at = ? "
                       "WHERE call_control_id = ?", (_dumps(view), now, ccid))
                db.run(_INSERT_EVENT, (now, ccid, "stream.interrupted", _dumps({"reason": "server_restart"})))
        return [r[0] for r in rows]

    # -- injections of live calls, for a restarted process (any thread; waits for the disk) ----

    def save_injection(self, call_control_id: str, injection_id: str, state: dict[str, Any],
                       audio: bytes | None = None) -> None:
        """Keep an injection's state, and its audio when given (else the audio kept stays)."""
        with self._session() as db:
            db.run("INSERT INTO injections (call_control_id, injection_id, state, audio) VALUES (?, ?, ?, ?) "
                   "ON CONFLICT (call_control_id, injection_id) DO UPDATE SET state = excluded.state, "
                   "audio = COALESCE(excluded.audio, injections.audio)",
                   (call_control_id, injection_id, _dumps(state), audio))

    def injections(self, call_control_id: str) -> list[tuple[dict[str, Any], bytes | None]]:
        with self._session() as db:
            rows = db.query("SELECT state, audio FROM injections WHERE call_control_id = ?", (call_control_id,))
        return [(json.loads(state), bytes(audio) if audio is not None else None) for state, audio in rows]

    def forget_injections(self, call_control_id: str) -> None:
        with self._session() as db:
            db.run("DELETE FROM injections WHERE call_control_id = ?", (call_control_id,))

    # -- internals ---------------------------------------------------------------------------

    @contextmanager
    def _session(self) -> Iterator[Session]:
        try:
            with self._db.session() as session:
                yield session
        except self._db.unreachable as exc:
            raise Unavailable(f"the event log database is unavailable: {exc}") from exc

    def _write_loop(self) -> None:
        connection: Connection | None = None
        # Taken from the queue, not yet committed, oldest first (flush markers in their place).
        # This thread's own: only it reads or changes the backlog.
        backlog: deque[_Item] = deque()
        stopping = False
        trouble: _Trouble | None = None
        while True:
            stopping = self._take_queued(backlog) or stopping
            if not backlog:
                if stopping:
                    break
                self._wakeup.wait(WRITE_INTERVAL_S)
                self._wakeup.clear()
                continue
            dropped = self._drop_over_limit(backlog)
            if dropped:
                trouble = trouble or _Trouble(time.monotonic(), self.dropped - dropped)
                if not trouble.drop_logged:
                    trouble.drop_logged = True
                    logger.error("event log holds more than %d unwritten rows: dropping the oldest (%d now, "
                                 "counted in EventLog.dropped)", self._max_queued, dropped)
            batch = list(itertools.islice(backlog, self._batch))
            try:
                connection = connection or self._db.connect()
                self._commit(connection, batch)
            except self._db.errors as exc:
                # Keep serving calls; /health turns degraded and the rows wait for the next try, on a
                # new connection (the old one may be dead: the server restarted, the network broke).
                _close_quietly(connection)
                connection = None
                self.last_error = str(exc)
                rows = _count_rows(backlog)
                trouble = trouble or _Trouble(time.monotonic(), self.dropped)
                if not trouble.failure_logged:
                    trouble.failure_logged = True
                    logger.error("event log write failed (%d rows kept for retry, at most %d): %s",
                                 rows, self._max_queued, exc)
                if stopping:
                    logger.error("event log closed while its writes fail: %d rows were not written", rows)
                    break
                time.sleep(RETRY_INTERVAL_S)
                continue
            for _ in batch:
                backlog.popleft()
            self.last_error = None
            for item in batch:
                if isinstance(item, _Flush):
                    item.done.set()
            if trouble is not None:
                logger.warning("event log writes succeed again after %.1f s; %d rows were dropped meanwhile",
                               time.monotonic() - trouble.since, self.dropped - trouble.dropped_before)
                trouble = None
        _close_quietly(connection)

    def _take_queued(self, backlog: deque[_Item]) -> bool:
        """Move what was queued into the backlog; True when close() asked the writer to stop."""
        stop = False
        while self._queue:  # only this thread pops, so the queue cannot empty under it
            item = self._queue.popleft()
            if item is None:
                stop = True
            else:
                backlog.append(item)
        return stop

    def _drop_over_limit(self, backlog: deque[_Item]) -> int:
        """Drop the oldest rows beyond max_queued and count them in `dropped`; flush markers stay."""
        if len(backlog) <= self._max_queued:
            return 0
        excess = _count_rows(backlog) - self._max_queued
        markers: list[_Flush] = []
        dropped = 0
        while dropped < excess:
            item = backlog.popleft()
            if isinstance(item, _Flush):
                markers.append(item)
            else:
                dropped += 1
        backlog.extendleft(reversed(markers))
        self.dropped += dropped
        return dropped

    def _commit(self, connection: Connection, batch: list[_Item]) -> None:
        events = [(i.at, i.call_control_id, i.event, i.data) for i in batch if isinstance(i, _Event)]
        calls = [(i.call_control_id, i.stream_id, i.status, i.data, i.at, i.at)
                 for i in batch if isinstance(i, _CallUpsert)]
        if not events and not calls:
            return
        with connection.transaction() as db:
            self._db.lock_writes(db)
            if events:
                db.run_many(_INSERT_EVENT, events)
            if calls:
                db.run_many(_UPSERT_CALL, calls)


def _count_rows(backlog: deque[_Item]) -> int:
    return sum(1 for item in backlog if not isinstance(item, _Flush))


def _close_quietly(connection: Connection | None) -> None:
    """Close a connection that may already be broken."""
    if connection is not None:
        try:
            connection.close()
        except Exception:  # a dead connection may fail to close; it is being dropped anyway
            logger.debug("closing the event log's writer connection failed", exc_info=True)


def _dumps(data: dict[str, Any]) -> str:
    return json.dumps(data, default=str, separators=(",", ":"))


def _like_prefix(prefix: str) -> str:
    escaped = prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + ".%"
