"""The body of a response that stays open (Server-Sent Events), written from any thread.

A WSGI app that wants one calls `environ[OPEN_STREAM]()` while it handles the request and returns
its response head (and any first bytes) as usual: the pool thread is free again at once, and
the connection stays open for whatever the app writes to the stream later. The loop sends it
without blocking; a client that does not read is dropped, never waited for (see FrontDoor:
at most `max_pending` bytes wait, and none may wait longer than the stall deadline).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

# The environ key of the function that opens a ResponseStream for the request being served.
OPEN_STREAM = "frontdoor.open_stream"


class ResponseStream:
    def __init__(self, max_pending: int) -> None:
        self._max_pending = max_pending
        # Guards _pending, _ended, _closed and _wake: writers on any thread, the loop takes.
        self._lock = threading.Lock()
        self._pending = bytearray()
        self._ended = False  # the app has written everything (end())
        self._closed = False  # the connection is gone, or was dropped for not reading
        self._wake: Callable[[], None] | None = None

    @property
    def closed(self) -> bool:
        """True once nothing written will reach the client: stop writing."""
        return self._closed

    def write(self, data: bytes) -> bool:
        """Queue `data` for the client; False once the stream is closed. A client that lets more
        than max_pending bytes pile up is dropped (the write that overflows returns False)."""
        with self._lock:
            if self._closed or self._ended:
                return False
            if len(self._pending) + len(data) > self._max_pending:
                self._closed = True
            else:
                self._pending += data
            wake = self._wake
        if wake is not None:
            wake()
        return not self._closed

    def end(self) -> None:
        """The app is done: the response ends once what is queued has been sent."""
        with self._lock:
            self._ended = True
            wake = self._wake
        if wake is not None:
            wake()

    # -- the loop's side -------------------------------------------------------------------------

    def attach(self, wake: Callable[[], None]) -> None:
        """Call `wake` (on the writer's thread) whenever there is something for the loop."""
        with self._lock:
            self._wake = wake

    def take(self) -> tuple[bytes, bool]:
        """What waits to be sent, and whether the app has ended the stream."""
        with self._lock:
            data = bytes(self._pending)
            self._pending.clear()
            return data, self._ended

    def detach(self) -> None:
        """The connection is closed: later writes return False."""
        with self._lock:
            self._closed = True
            self._wake = None
            self._pending.clear()
