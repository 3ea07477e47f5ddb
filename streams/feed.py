"""GET /events: the event log as Server-Sent Events, for any number of listeners at one query a poll.

One thread (`event-feed`, started with the first listener) reads the log's new rows every
poll_s and hands each listener the rows its filters match. It reads the database, not the
process's own events, so that in scaled mode every node's events reach every node's listeners.
A listener writes into a Sink: the front door's ResponseStream under `python app.py` (a bounded
buffer sent by the loop; a client that does not read is dropped there), or a QueueSink behind any
other WSGI server. Writing never blocks this thread.

Each message is one event as /stream-log shows it, with its id as the SSE id, so a client that
reconnects with Last-Event-ID (or `cursor`) misses nothing and sees nothing twice.

Ids are given when a row is inserted, not when it is committed: on PostgreSQL two nodes' writers
may commit 101 before 100, and a reader that moved on past 101 would never send 100. So a feed
stops at a gap in the ids until it fills, or for GAP_WAIT_S at most (an id a failed write used
up never comes; SQLite's single writer leaves no gaps).
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from eventlog import EventLog, Unavailable

logger = logging.getLogger(__name__)

PAGE = 500  # rows read per query; a listener far behind catches up a page per round
RETRY_MS = 2000  # the reconnection delay a client is told (`retry:`)
GAP_WAIT_S = 2.0  # how long a missing id is waited for (see the module docstring)


class Sink(Protocol):
    @property
    def closed(self) -> bool: ...

    def write(self, data: bytes) -> bool:
        """Queue `data`, never blocking; False once the client is gone or dropped."""

    def end(self) -> None:
        """No more data: finish the response."""


class FeedsFull(Exception):
    """Every listener slot is taken."""


@dataclass
class Listener:
    sink: Sink
    call_control_id: str | None
    event: str | None  # a name or a prefix before a dot, case-insensitive as /stream-log
    after: int  # the last event id it has seen (or skipped)
    ends_at: float  # monotonic: the feed closes then, and the client reconnects with Last-Event-ID
    quiet_since: float  # monotonic: when it was last written to

    def wants(self, row: dict[str, Any]) -> bool:
        if self.call_control_id is not None and row["call_control_id"] != self.call_control_id:
            return False
        if self.event is None:
            return True
        name = str(row["event"]).casefold()
        wanted = self.event.casefold()
        return name == wanted or name.startswith(wanted + ".")


def message(row: dict[str, Any]) -> bytes:
    """One event as an SSE message: its id, and the /stream-log item as JSON on one line."""
    return f"id: {row['id']}\ndata: {json.dumps(row, separators=(',', ':'))}\n\n".encode()


class EventFeed:
    def __init__(self, log: EventLog, *, max_listeners: int, max_age_s: float, poll_s: float = 0.2,
                 heartbeat_s: float = 15.0, clock: Callable[[], float] = time.monotonic,
                 threaded: bool = True) -> None:
        """`threaded=False`: no thread; the caller runs poll() (tests)."""
        self._log = log
        self.max_listeners = max_listeners
        self._max_age_s = max_age_s
        self._poll_s = poll_s
        self._heartbeat_s = heartbeat_s
        self._clock = clock
        self._threaded = threaded
        # Guards _listeners and _thread; held only to add, remove or copy, never around I/O.
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._unavailable_logged = False
        self._gaps: dict[int, float] = {}  # first id of a gap -> when it was first seen (feed thread)

    def __len__(self) -> int:
        return len(self._listeners)

    def last_id(self) -> int:
        """Where a listener without a cursor starts: after everything logged so far."""
        self._log.flush()
        return self._log.last_event_id()

    def listen(self, open_sink: Callable[[], Sink], *, call_control_id: str | None, event: str | None,
               after: int) -> Listener:
        """Add a listener writing into the sink `open_sink()` makes (called only if there is room).

        Raises FeedsFull when max_listeners are listening already.
        """
        now = self._clock()
        with self._lock:
            if self._stop.is_set() or len(self._listeners) >= self.max_listeners:
                raise FeedsFull
            listener = Listener(open_sink(), call_control_id, event, after, now + self._max_age_s, now)
            self._listeners.append(listener)
            if self._thread is None and self._threaded:
                self._thread = threading.Thread(target=self._run, name="event-feed", daemon=True)
                self._thread.start()
        self._wake.set()  # its backlog now, not a poll later
        return listener

    def close(self) -> None:
        """End every feed and stop the thread (server shutdown)."""
        with self._lock:
            self._stop.set()
            thread, self._thread = self._thread, None
            listeners, self._listeners = self._listeners, []
        self._wake.set()
        if thread is not None:
            thread.join(5)
        for listener in listeners:
            listener.sink.end()

    # -- the feed thread ----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # the feeds must outlive one bad round
                logger.exception("event feed round failed")
            self._wake.wait(self._poll_s)
            self._wake.clear()

    def poll(self) -> None:
        """One round: new rows to each listener that wants them, heartbeats, expiries."""
        with self._lock:
            listeners = list(self._listeners)
        if not listeners:
            return
        start = min(listener.after for listener in listeners)
        now = self._clock()
        rows = self._settled(start, self._read(start), now)
        gone = []
        for listener in listeners:
            if listener.sink.closed:
                gone.append(listener)
                continue
            chunk = b"".join(message(row) for row in rows if row["id"] > listener.after and listener.wants(row))
            if rows:
                listener.after = max(listener.after, rows[-1]["id"])
            if not chunk and now - listener.quiet_since >= self._heartbeat_s:
                chunk = b": keep-alive\n\n"  # proxies keep the connection; a dead peer shows up
            if chunk:
                listener.quiet_since = now
                if not listener.sink.write(chunk):
                    gone.append(listener)
                    continue
            if now >= listener.ends_at:
                listener.sink.end()
                gone.append(listener)
        if gone:
            with self._lock:
                self._listeners = [listener for listener in self._listeners if listener not in gone]
        if len(rows) == PAGE:
            self._wake.set()  # more waiting: the next round at once

    def _settled(self, start: int, rows: list[dict[str, Any]], now: float) -> list[dict[str, Any]]:
        """`rows` up to the first gap in the ids after `start` that may still fill (see the module
        docstring); a gap older than GAP_WAIT_S is taken as for good."""
        expected = start + 1
        for i, row in enumerate(rows):
            if row["id"] != expected:
                seen = self._gaps.setdefault(expected, now)
                if now - seen < GAP_WAIT_S:
                    rows = rows[:i]
                    break
            expected = row["id"] + 1
        for first in [first for first in self._gaps if first <= start]:
            del self._gaps[first]  # everyone is past it
        return rows

    def _read(self, after: int) -> list[dict[str, Any]]:
        try:
            rows, _ = self._log.events(after_id=after, limit=PAGE)
        except Unavailable as exc:  # the feeds wait; the rows will be there when it is back
            if not self._unavailable_logged:
                self._unavailable_logged = True
                logger.warning("event feed: the event log cannot be read: %s", exc)
            return []
        self._unavailable_logged = False
        return rows


class QueueSink:
    """A Sink for WSGI servers without streams (not `python app.py`): the response's iterator
    takes what was written; the buffer is bounded like a ResponseStream's."""

    def __init__(self, max_pending: int = 1 << 20) -> None:
        self._queue: queue.Queue[bytes | None] = queue.Queue()
        self._max_pending = max_pending
        # Guards _pending and _closed: the feed thread writes, the server's thread reads.
        self._lock = threading.Lock()
        self._pending = 0
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def write(self, data: bytes) -> bool:
        with self._lock:
            if self._closed:
                return False
            if self._pending + len(data) > self._max_pending:
                self._closed = True
                self._queue.put(None)
                return False
            self._pending += len(data)
        self._queue.put(data)
        return True

    def end(self) -> None:
        with self._lock:
            self._closed = True
        self._queue.put(None)

    def body(self, first: bytes) -> Iterator[bytes]:
        """The response body: `first`, then what is written until end(); closing it closes the sink."""
        try:
            yield first
            while (data := self._queue.get()) is not None:
                with self._lock:
                    self._pending -= len(data)
                yield data
        finally:
            with self._lock:
                self._closed = True
