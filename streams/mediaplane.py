"""The media plane: one event-loop thread serving every Telnyx media WebSocket on our port.

A thread pair per socket (the flask-sock shape) spends most of its CPU waking threads and
handing the GIL around once hundreds of calls each send a frame every 20 ms. Here one
`selectors` loop owns the listening socket and all websockets; plain HTTP requests are only
peeked at and handed, unconsumed, to werkzeug on a small thread pool (mediaplane_http).

Threads:
- the loop thread reads, parses and dispatches frames, and calls Handler methods; they must
  return quickly. Between socket events it also runs the Timer (the media clock) when due.
  The listener, the connections still being routed and the wake-up socket sit on a selector
  of their own, polled again after every tick of the timer: when the clock's ticks take most
  of the loop's time, a request or a handshake is served after the next tick, not behind
  every media socket that is readable too.
- any thread may call Connection.send_text/close. A send frames the message and
  writes it straight to the non-blocking socket under the connection's lock; only what the
  kernel does not take is buffered, and only then is the loop woken to watch for writability.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from streams import mediaplane_wire as wire
from streams.mediaplane_http import HttpPool

logger = logging.getLogger(__name__)

__all__ = ["Connection", "FrontDoor", "Handler"]

_READ = selectors.EVENT_READ
_WRITE = selectors.EVENT_WRITE
_RECV_SIZE = 65536
_MAX_HEAD = 16384
_SWEEP_S = 1.0
_ACCEPT_RETRY_S = 0.1  # out of descriptors: how soon to try accepting again
# How often a connection whose first bytes did not yet decide its route is peeked again.
_REPEEK_S = 0.005

# Connection states. Only OPEN accepts sends.
_OPEN = 0
_CLOSING = 1   # we sent a close frame and wait for the peer's
_DRAINING = 2  # the close handshake is done; flush what is buffered, then tear down
# We failed the connection: our close frame is flushed, then our side shut down, and input is
# discarded until the peer closes. Closing at once with unread input would send a reset that
# can destroy our close frame in the peer's receive queue before it reads it.
_LINGER = 3
_CLOSED = 4    # tear down at the loop's next chance


class Handler(Protocol):
    """One websocket's application side. Called on the loop thread: never block in here."""

    def on_message(self, conn: Connection, data: str | bytes) -> None: ...

    def on_close(self, conn: Connection, code: int | None) -> None:
        """Called exactly once. `code` is the peer's close code, the one we closed with, or
        None when the connection was lost without a close frame."""


AcceptFn = Callable[[str, str, dict[str, str], str], "Handler | None"]


class Timer(Protocol):
    """Work the loop runs on a schedule between socket events (the media clock)."""

    def next_deadline(self, now: float) -> float | None:
        """Monotonic time of the next run (maybe past), or None for nothing scheduled."""

    def run_due(self, now: float) -> bool:
        """Run what is due at `now`; False when nothing was."""


class Connection:
    """One accepted websocket. Sending and closing are thread-safe and never block."""

    __slots__ = ("_door", "_frag_op", "_frag_parts", "_frag_size", "_handler", "_lock", "_notified",
                 "_rbuf", "_sock", "_state", "_want_write", "_watching", "_wbuf", "bytes_in", "bytes_out",
                 "close_code", "close_deadline", "context", "fd", "headers", "last_rx", "messages_in",
                 "messages_out", "path", "query", "remote_addr")

    def __init__(self, door: FrontDoor, sock: socket.socket, request: wire.UpgradeRequest,
                 remote_addr: str, handler: Handler) -> None:
        self._door = door
        self._sock = sock
        self.fd = sock.fileno()
        self._handler = handler
        self.path = request.path
        self.query = request.query
        self.headers = request.headers
        self.remote_addr = remote_addr
        # Free for the application (e.g. its call session).
        self.context: Any = None
        # Guards _state, _wbuf, _want_write, close_code, the outbound counters and every write
        # to _sock: senders on any thread and the loop's flushes take it.
        self._lock = threading.Lock()
        self._state = _OPEN
        self._wbuf = bytearray()
        self._want_write = False
        self.close_code: int | None = None
        self.close_deadline = 0.0
        self.messages_out = 0
        self.bytes_out = 0
        # Loop-thread-only state from here on.
        self._watching = False
        self._notified = False
        self._rbuf = bytearray()
        self._frag_op = -1
        self._frag_parts: list[bytes] = []
        self._frag_size = 0
        self.messages_in = 0
        self.bytes_in = 0
        self.last_rx = time.monotonic()

    def __repr__(self) -> str:
        return f"<Connection {self.remote_addr} {self.path} state={self._state}>"

    @property
    def open(self) -> bool:
        return self._state == _OPEN

    @property
    def buffered_bytes(self) -> int:
        """Outbound bytes the kernel has not taken yet (the peer's read backlog, roughly)."""
        return len(self._wbuf)

    # -- sending (any thread) ------------------------------------------------------------------

    def send_text(self, text: str | bytes) -> bool:
        """Queue one text message (or its UTF-8); False once the connection is closing or closed."""
        data = wire.frame_text(text)
        with self._lock:
            if self._state != _OPEN:
                return False
            self.messages_out += 1
            self.bytes_out += len(data)
            return self._write_locked(data)

    def close(self, code: int = wire.CLOSE_NORMAL, reason: str = "") -> None:
        """Start the close handshake; on_close follows once the peer answers or times out."""
        with self._lock:
            if self._state != _OPEN:
                return
            self._state = _CLOSING
            self.close_code = code
            self.close_deadline = time.monotonic() + self._door.close_timeout_s
            self._write_locked(wire.close_frame(code, reason))
        self._door._attention(self)

    def _write_locked(self, data: bytes) -> bool:
        wbuf = self._wbuf
        if wbuf:
            wbuf += data
            if len(wbuf) > self._door.max_backlog:
                self._overflow_locked()
                return False
            return True
        try:
            sent = self._sock.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            # The peer is gone; the loop will see it too, this only hurries the teardown.
            self._state = _CLOSED
            self._door._attention(self)
            return False
        if sent == len(data):
            return True
        wbuf += memoryview(data)[sent:]
        if len(wbuf) > self._door.max_backlog:
            self._overflow_locked()
            return False
        if not self._want_write:
            self._want_write = True
            self._door._attention(self)
        return True

    def _overflow_locked(self) -> None:
        # A close frame cannot follow a half-written frame, so the connection is simply dropped.
        logger.warning("websocket %s %s: peer reads too slowly (%d bytes queued), dropping it",
                       self.remote_addr, self.path, len(self._wbuf))
        self._state = _CLOSED
        self.close_code = wire.CLOSE_POLICY
        self._wbuf.clear()
        self._door._attention(self)

    # -- loop thread only ----------------------------------------------------------------------

    def _flush(self) -> None:
        """Writable: push the backlog; on empty, stop watching (or finish a drain)."""
        with self._lock:
            wbuf = self._wbuf
            if wbuf and self._state != _CLOSED:
                try:
                    sent = self._sock.send(wbuf)
                except BlockingIOError:
                    sent = 0
                except OSError:
                    self._state = _CLOSED
                    sent = 0
                del wbuf[:sent]
            if wbuf and self._state != _CLOSED:
                return
            self._want_write = False
            state = self._state
            if state == _LINGER:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_WR)
        if state in (_DRAINING, _CLOSED):
            self._door._teardown(self)
        elif self._watching:
            self._watching = False
            self._door._selector.modify(self._sock, _READ, self._on_event)

    def _on_event(self, events: int) -> None:
        if events & _READ:
            self._on_readable()
        if events & _WRITE and self._state != _CLOSED:
            self._flush()

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._lost()
            return
        self.last_rx = self._door._now
        self.bytes_in += len(data)
        if self._state >= _DRAINING:
            return  # the stream is finished; what still arrives is not ours to parse
        if self._rbuf:
            self._rbuf += data
            self._parse(self._rbuf)
        else:
            self._parse(data)

    def _lost(self) -> None:
        with self._lock:
            if self._state == _OPEN:
                self.close_code = None
            self._state = _CLOSED
        self._door._teardown(self)

    def _parse(self, buf: bytes | bytearray) -> None:
        """Handle every complete frame in `buf`; keep the incomplete tail for the next read."""
        door = self._door
        max_size = door.max_message_size
        n = len(buf)
        pos = 0
        unmask = wire.unmask
        while n - pos >= 2 and self._state < _DRAINING:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if not b1 & 0x80:
                self._fail(wire.CLOSE_PROTOCOL_ERROR, "client frames must be masked")
                return
            length = b1 & 0x7F
            start = pos + 6
            if length == 126:
                if n - pos < 4:
                    break
                length = (buf[pos + 2] << 8) | buf[pos + 3]
                start = pos + 8
            elif length == 127:
                if n - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2:pos + 10], "big")
                start = pos + 14
            if length + self._frag_size > max_size:
                self._fail(wire.CLOSE_TOO_BIG, f"message exceeds {max_size} bytes")
                return
            end = start + length
            if end > n:
                break
            payload = unmask(buf[start:end], buf[start - 4:start])
            pos = end
            if b0 & 0x70:
                self._fail(wire.CLOSE_PROTOCOL_ERROR, "reserved bits set without an extension")
                return
            opcode = b0 & 0x0F
            if opcode == wire.OP_TEXT and b0 & 0x80 and self._frag_op < 0:
                try:
                    text = payload.decode()
                except UnicodeDecodeError:
                    self._fail(wire.CLOSE_INVALID_DATA, "text message is not UTF-8")
                    return
                self._deliver(text)
            else:
                self._frame(b0, opcode, payload)
        if self._state >= _DRAINING:
            return
        if pos == 0 and buf is self._rbuf:
            return
        if buf is self._rbuf:
            del buf[:pos]
        elif pos < n:
            self._rbuf += buf[pos:]

    def _deliver(self, data: str | bytes) -> None:
        self.messages_in += 1
        try:
            self._handler.on_message(self, data)
        except Exception:
            logger.exception("websocket %s %s: message handler failed", self.remote_addr, self.path)
            self._fail(wire.CLOSE_INTERNAL_ERROR, "internal error", protocol=False)

    def _frame(self, b0: int, opcode: int, payload: bytes) -> None:
        """Everything but an unfragmented text message: fragments, binary, control frames."""
        fin = b0 & 0x80
        if opcode >= 0x8:
            if not fin or len(payload) > 125:
                self._fail(wire.CLOSE_PROTOCOL_ERROR, "control frames must be final and short")
            elif opcode == wire.OP_PING:
                with self._lock:
                    if self._state == _OPEN:
                        self._write_locked(wire.frame(wire.OP_PONG, payload))
            elif opcode == wire.OP_CLOSE:
                self._on_close_frame(payload)
            elif opcode != wire.OP_PONG:
                self._fail(wire.CLOSE_PROTOCOL_ERROR, f"unknown control opcode {opcode}")
            return
        if opcode == wire.OP_CONT:
            if self._frag_op < 0:
                self._fail(wire.CLOSE_PROTOCOL_ERROR, "continuation without a message to continue")
                return
        elif opcode in (wire.OP_TEXT, wire.OP_BINARY):
            if self._frag_op >= 0:
                self._fail(wire.CLOSE_PROTOCOL_ERROR, "new message inside a fragmented one")
                return
            self._frag_op = opcode
        else:
            self._fail(wire.CLOSE_PROTOCOL_ERROR, f"unknown data opcode {opcode}")
            return
        self._frag_parts.append(payload)
        self._frag_size += len(payload)
        if not fin:
            return
        message = b"".join(self._frag_parts)
        op = self._frag_op
        self._frag_op = -1
        self._frag_parts = []
        self._frag_size = 0
        if op == wire.OP_BINARY:
            self._deliver(message)
            return
        try:
            text = message.decode()
        except UnicodeDecodeError:
            self._fail(wire.CLOSE_INVALID_DATA, "text message is not UTF-8")
            return
        self._deliver(text)

    def _on_close_frame(self, payload: bytes) -> None:
        try:
            code, _reason = wire.parse_close(payload)
        except wire.CloseFrameError as exc:
            self._fail(exc.code, str(exc))
            return
        with self._lock:
            if self._state == _OPEN:
                # The peer started the handshake: echo its code, then close once flushed.
                self.close_code = code
                self._write_locked(wire.close_frame(code))
            if self._state != _CLOSED:
                self._state = _DRAINING
            pending = bool(self._wbuf)
        if pending:
            self._door._watch_write(self)
        else:
            self._door._teardown(self)

    def _fail(self, code: int, message: str, *, protocol: bool = True) -> None:
        """Fail the connection with `code` (protocol violation or handler error)."""
        if protocol:
            self._door.protocol_errors += 1
            logger.info("websocket %s %s: %s; closing with %d", self.remote_addr, self.path, message, code)
        self._rbuf.clear()
        self._frag_parts = []
        self._frag_size = 0
        self._frag_op = -1
        with self._lock:
            if self._state == _OPEN:
                self.close_code = code
                self._write_locked(wire.close_frame(code, message))
            if self._state == _CLOSED:
                return
            self._state = _LINGER
            self.close_deadline = self._door._now + self._door.close_timeout_s
            pending = bool(self._wbuf)
            if not pending:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_WR)
        if pending:
            self._door._watch_write(self)

    def _shutdown_sock_locked(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


class _Pending:
    """A connection whose route is not decided yet, or a websocket whose head is being read."""

    __slots__ = ("addr", "deadline", "head", "reading", "sock")

    def __init__(self, sock: socket.socket, addr: Any, deadline: float) -> None:
        self.sock = sock
        self.addr = addr
        self.deadline = deadline
        self.head = bytearray()
        self.reading = False  # True once routed to the websocket side and consuming its head


def _dispatch(key: selectors.SelectorKey, mask: int) -> None:
    """Run a ready selector key's callback; a bug on one socket must not take every call down
    with the loop."""
    try:
        key.data(mask)
    except Exception:
        logger.exception("media plane: event handling failed for %r", key.fileobj)


class FrontDoor:
    """Owns the port: websockets on `ws_paths` in the loop thread, all else to `wsgi_app`.

    `accept(path, query, headers, remote_addr)` runs on the loop thread for every valid upgrade
    and returns the connection's Handler, or None to refuse it with 403.
    """

    def __init__(self, host: str, port: int, *, ws_paths: Iterable[str], accept: AcceptFn,
                 wsgi_app: Any = None, http_workers: int = 8, http_timeout_s: float = 30.0,
                 idle_timeout_s: float = 10.0, handshake_timeout_s: float = 10.0,
                 close_timeout_s: float = 2.0, max_message_size: int = 1 << 20,
                 max_backlog: int = 1 << 20, send_buffer_bytes: int | None = None,
                 backlog: int = 1024, timer: Timer | None = None) -> None:
        self.ws_paths = frozenset(ws_paths)
        # Run on the loop thread; wake() makes the loop ask it again for its next deadline.
        self._timer = timer
        self._accept_fn = accept
        self.idle_timeout_s = idle_timeout_s
        self.handshake_timeout_s = handshake_timeout_s
        self.close_timeout_s = close_timeout_s
        self.max_message_size = max_message_size
        self.max_backlog = max_backlog
        # SO_SNDBUF for accepted sockets. Linux grows it to megabytes by default; a small one
        # keeps a stalled peer's backlog visible to us (buffered_bytes, max_backlog) instead
        # of hidden in the kernel.
        self.send_buffer_bytes = send_buffer_bytes
        self._listener = socket.create_server((host, port), backlog=backlog, reuse_port=False)
        self._listener.setblocking(False)
        self.host = host
        self.port: int = self._listener.getsockname()[1]
        self._http = HttpPool(wsgi_app, host, self.port, workers=http_workers, timeout_s=http_timeout_s) \
            if wsgi_app is not None else None
        self._selector = selectors.DefaultSelector()
        # The listener, pending connections and the wake-up socket (see the module docstring).
        self._control = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        # Connections that need the loop (write watch, teardown). deque.append/popleft are
        # atomic, and _wake_sent keeps it to one wake-up byte per loop iteration (see _attention).
        self._inbox: deque[Connection] = deque()
        self._wake_sent = False
        self._conns: dict[int, Connection] = {}
        # Guards removals from _conns together with the _closed_* totals, so stats() taken on
        # another thread never sees a connection counted twice or not at all. Not per message.
        self._stats_lock = threading.Lock()
        self._pending: dict[int, _Pending] = {}
        self._undecided: list[_Pending] = []
        self._stopping = threading.Event()
        # Out of descriptors: the listener is off the selector until then.
        self._accept_resume_at: float | None = None
        self._accept_failed_at = -1  # accept_failures when the current episode began; -1: none
        self._thread: threading.Thread | None = None
        self._now = time.monotonic()
        # Counters, written by the loop thread only (per-connection ones live on each Connection;
        # bytes are wire bytes, frame headers included).
        self.connections_accepted = 0
        self.accept_failures = 0  # accepts refused for want of descriptors or memory
        self.http_handed_off = 0
        self.protocol_errors = 0
        self.upgrades_refused = 0
        self._closed_messages_in = 0
        self._closed_bytes_in = 0
        self._closed_messages_out = 0
        self._closed_bytes_out = 0

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> FrontDoor:
        self._thread = threading.Thread(target=self._run, name=f"mediaplane-{self.port}", daemon=True)
        self._thread.start()
        return self

    def __enter__(self) -> FrontDoor:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop accepting, close every websocket with 1001, stop the HTTP pool, join."""
        self._stopping.set()
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                logger.error("media plane loop did not stop within %.1f s", timeout_s)
        else:
            self._close_resources()
        if self._http is not None:
            self._http.stop()

    @property
    def connections(self) -> list[Connection]:
        return list(self._conns.values())

    def stats(self) -> dict[str, int]:
        with self._stats_lock:
            conns = list(self._conns.values())
            closed = (self._closed_messages_in, self._closed_bytes_in,
                      self._closed_messages_out, self._closed_bytes_out)
        return {
            "websockets": len(conns),
            "connections_accepted": self.connections_accepted,
            "accept_failures": self.accept_failures,
            "http_handed_off": self.http_handed_off,
            "upgrades_refused": self.upgrades_refused,
            "protocol_errors": self.protocol_errors,
            "messages_in": closed[0] + sum(c.messages_in for c in conns),
            "bytes_in": closed[1] + sum(c.bytes_in for c in conns),
            "messages_out": closed[2] + sum(c.messages_out for c in conns),
            "bytes_out": closed[3] + sum(c.bytes_out for c in conns),
        }

    # -- cross-thread signalling ---------------------------------------------------------------

    def wake(self) -> None:
        """Make the loop poll its timer again soon (any thread)."""
        self._wake()

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"x")

    def _attention(self, conn: Connection) -> None:
        """Ask the loop to look at `conn` (write watch or teardown). Callable from any thread."""
        self._inbox.append(conn)
        # The loop clears _wake_sent after draining the wake socket and before emptying the
        # inbox, so an append it may miss is always followed by a fresh wake-up byte.
        if not self._wake_sent:
            self._wake_sent = True
            self._wake()

    def _drain_inbox(self, _events: int = 0) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while self._wake_r.recv(4096):
                pass
        self._wake_sent = False
        inbox = self._inbox
        while inbox:
            conn = inbox.popleft()
            state = conn._state
            if state == _CLOSED:
                self._teardown(conn)
            elif conn._want_write:
                self._watch_write(conn)

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        sel = self._selector
        self._control.register(self._listener, _READ, self._on_acceptable)
        self._control.register(self._wake_r, _READ, self._drain_inbox)
        sel.register(self._control, _READ, self._poll_control)
        next_sweep = time.monotonic() + _SWEEP_S
        timer = self._timer
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                timeout = _REPEEK_S if self._undecided else max(0.0, next_sweep - now)
                if self._accept_resume_at is not None:
                    timeout = min(timeout, max(0.0, self._accept_resume_at - now))
                if timer is not None:
                    due = timer.next_deadline(now)
                    if due is not None:
                        timeout = min(timeout, max(0.0, due - now))
                events = sel.select(timeout)
                self._now = now = time.monotonic()
                # Before the events, and between them once due: our frames have a deadline,
                # inbound ones can wait a moment (hundreds may be ready at once).
                due = self._run_timer(now)
                for key, mask in events:
                    _dispatch(key, mask)
                    if due is not None:
                        t = time.monotonic()
                        if t >= due:
                            self._now = now = t
                            due = self._run_timer(now)
                if self._undecided:
                    self._repeek()
                if now >= next_sweep:
                    next_sweep = now + _SWEEP_S
                    self._sweep(now)
                if self._accept_resume_at is not None and now >= self._accept_resume_at:
                    self._accept_resume_at = None
                    self._control.register(self._listener, _READ, self._on_acceptable)
            self._shutdown()
        except Exception:
            logger.exception("media plane loop crashed")
            raise
        finally:
            self._close_resources()

    def _run_timer(self, now: float) -> float | None:
        """Run what the timer has due and, if it ran, what arrived on the control selector
        meanwhile; return when the timer is due next."""
        timer = self._timer
        if timer is None:
            return None
        try:
            if timer.run_due(now):
                self._poll_control()  # first: a call it starts may wake an idle clock
            return timer.next_deadline(now)
        except Exception:
            logger.exception("media plane: timer failed")
            return None

    def _poll_control(self, _events: int = 0) -> None:
        """Accept, route and handshake whatever is ready now, and empty the inbox."""
        if self._undecided:
            self._repeek()
        for key, mask in self._control.select(0):
            _dispatch(key, mask)

    def _close_resources(self) -> None:
        self._selector.close()
        self._control.close()
        self._listener.close()
        self._wake_r.close()
        self._wake_w.close()

    def _sweep(self, now: float) -> None:
        """Once a second: dead peers, unanswered closes, stalled handshakes."""
        idle_before = now - self.idle_timeout_s
        for conn in list(self._conns.values()):
            state = conn._state
            if state == _OPEN:
                if conn.last_rx < idle_before:
                    logger.info("websocket %s %s: no frame for %.0f s, closing",
                                conn.remote_addr, conn.path, self.idle_timeout_s)
                    self._abort(conn, wire.CLOSE_GOING_AWAY)
            elif state != _CLOSED and conn.close_deadline and conn.close_deadline < now:
                self._teardown(conn)
        for fd, pending in list(self._pending.items()):
            if pending.deadline < now:
                self._drop_pending(fd, pending)

    def _abort(self, conn: Connection, code: int) -> None:
        """Best-effort close frame, then tear down at once: the peer is not expected to answer."""
        with conn._lock:
            if conn._state == _OPEN:
                conn.close_code = code
                if not conn._wbuf:
                    with contextlib.suppress(OSError):
                        conn._sock.send(wire.close_frame(code))
            conn._state = _CLOSED
        self._teardown(conn)

    def _watch_write(self, conn: Connection) -> None:
        if conn.close_deadline == 0.0 and conn._state != _OPEN:
            conn.close_deadline = self._now + self.close_timeout_s
        if not conn._watching and self._conns.get(conn.fd) is conn:
            conn._watching = True
            self._selector.modify(conn._sock, _READ | _WRITE, conn._on_event)

    def _teardown(self, conn: Connection) -> None:
        if conn._notified:
            return
        conn._notified = True
        with conn._lock:
            conn._state = _CLOSED
            conn._wbuf.clear()
        registered = self._conns.get(conn.fd) is conn
        if registered:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(conn._sock)
        with self._stats_lock:
            if registered:
                del self._conns[conn.fd]
            self._closed_messages_in += conn.messages_in
            self._closed_bytes_in += conn.bytes_in
            self._closed_messages_out += conn.messages_out
            self._closed_bytes_out += conn.bytes_out
        with conn._lock:
            conn._shutdown_sock_locked()
        try:
            conn._handler.on_close(conn, conn.close_code)
        except Exception:
            logger.exception("websocket %s %s: close handler failed", conn.remote_addr, conn.path)

    def _shutdown(self) -> None:
        """Runs in the loop thread on stop: 1001 to everyone, a bounded wait for the echoes."""
        with contextlib.suppress(KeyError, ValueError):  # KeyError: accepting was paused
            self._control.unregister(self._listener)
        self._listener.close()
        for fd, pending in list(self._pending.items()):
            self._drop_pending(fd, pending)
        for conn in list(self._conns.values()):
            conn.close(wire.CLOSE_GOING_AWAY, "server shutting down")
        deadline = time.monotonic() + self.close_timeout_s
        while self._conns:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, mask in self._selector.select(min(remaining, 0.1)):
                key.data(mask)  # the connections, and _poll_control: only the inbox is left on it
            self._now = time.monotonic()
        for conn in list(self._conns.values()):
            self._teardown(conn)

    # -- accepting and routing -----------------------------------------------------------------

    def _on_acceptable(self, _events: int) -> None:
        # Accept a batch per wake-up: connection storms arrive together.
        for _ in range(64):
            try:
                sock, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                if self._accept_failed_at >= 0:  # the backlog is drained: the episode is over
                    logger.warning("accepting connections again, after %d failed tries",
                                   self.accept_failures - self._accept_failed_at)
                    self._accept_failed_at = -1
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # The listener stays readable, so keep it off the selector for a moment
                    # instead of spinning on it; the connections waiting meanwhile stay in the
                    # kernel's backlog. Logged once per episode, not once per try.
                    if self._accept_failed_at < 0:
                        self._accept_failed_at = self.accept_failures
                        logger.error("accept failed, trying again every %.1f s until it works: %s",
                                     _ACCEPT_RETRY_S, exc)
                    self.accept_failures += 1
                    self._control.unregister(self._listener)
                    self._accept_resume_at = self._now + _ACCEPT_RETRY_S
                    return
                logger.debug("accept failed: %s", exc)  # e.g. a client reset before we got to it
                continue
            self.connections_accepted += 1
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if self.send_buffer_bytes:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer_bytes)
            fd = sock.fileno()
            pending = _Pending(sock, addr, self._now + self.handshake_timeout_s)
            self._pending[fd] = pending
            self._control.register(sock, _READ, lambda ev, p=pending: self._on_pending(p))
            # A busy loop accepts late, and the request is usually in by then: route it now.
            try:
                self._on_pending(pending)
            except Exception:  # this connection only; the rest of the batch is still accepted
                logger.exception("media plane: routing a new connection from %s failed", addr)
                if self._pending.get(fd) is pending:  # not handed on already
                    self._drop_pending(fd, pending)

    def _on_pending(self, pending: _Pending) -> None:
        if pending.reading:
            self._read_head(pending)
        else:
            self._route(pending, registered=True)

    def _route(self, pending: _Pending, *, registered: bool) -> None:
        sock = pending.sock
        try:
            peeked = sock.recv(_MAX_HEAD, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            peeked = b""
        if not peeked:
            self._drop_pending(sock.fileno(), pending)
            return
        kind = wire.classify_request_line(peeked, self.ws_paths)
        if kind == wire.UNDECIDED and len(peeked) < _MAX_HEAD:
            if registered:
                # Level-triggered readiness would fire again at once for bytes we leave in
                # place, so re-peek on a short timer instead (rare: a request line split in TCP).
                self._control.unregister(sock)
                self._undecided.append(pending)
            return
        if not registered:
            self._undecided.remove(pending)
            self._control.register(sock, _READ, lambda ev, p=pending: self._on_pending(p))
        if kind == wire.WEBSOCKET:
            pending.reading = True
            self._read_head(pending)
            return
        self._control.unregister(sock)
        del self._pending[sock.fileno()]
        if self._http is None:
            self._refuse(sock, wire.http_response("404 Not Found", "not found\n"))
            return
        self.http_handed_off += 1
        self._http.submit(sock, pending.addr)

    def _repeek(self) -> None:
        for pending in list(self._undecided):
            if pending.sock.fileno() in self._pending:
                self._route(pending, registered=False)

    def _drop_pending(self, fd: int, pending: _Pending) -> None:
        self._pending.pop(fd, None)
        if pending in self._undecided:
            self._undecided.remove(pending)
        else:
            with contextlib.suppress(KeyError, ValueError):
                self._control.unregister(pending.sock)
        pending.sock.close()

    def _refuse(self, sock: socket.socket, response: bytes) -> None:
        self.upgrades_refused += 1
        with contextlib.suppress(OSError):
            sock.send(response)
            sock.shutdown(socket.SHUT_WR)
        sock.close()

    def _read_head(self, pending: _Pending) -> None:
        sock = pending.sock
        fd = sock.fileno()
        try:
            data = sock.recv(_MAX_HEAD + 1 - len(pending.head))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._drop_pending(fd, pending)
            return
        pending.head += data
        end = pending.head.find(b"\r\n\r\n")
        if end < 0:
            if len(pending.head) > _MAX_HEAD:
                self._drop_pending_with(fd, pending, wire.http_response(
                    "431 Request Header Fields Too Large", "request head too large\n"))
            return
        head = bytes(pending.head[:end])
        rest = bytes(pending.head[end + 4:])
        try:
            request = wire.parse_upgrade(head)
        except wire.UpgradeRefused as exc:
            logger.info("websocket upgrade from %s refused: %s", pending.addr, exc)
            self._drop_pending_with(fd, pending, exc.response())
            return
        remote = pending.addr[0] if isinstance(pending.addr, tuple) else str(pending.addr)
        try:
            handler = self._accept_fn(request.path, request.query, request.headers, remote)
        except Exception:
            logger.exception("websocket accept for %s %s failed", remote, request.path)
            self._drop_pending_with(fd, pending, wire.http_response("500 Internal Server Error", "error\n"))
            return
        if handler is None:
            self._drop_pending_with(fd, pending, wire.http_response("403 Forbidden", "forbidden\n"))
            return
        del self._pending[fd]
        conn = Connection(self, sock, request, remote, handler)
        conn.last_rx = self._now
        with self._stats_lock:
            self._conns[fd] = conn
        self._control.unregister(sock)
        self._selector.register(sock, _READ, conn._on_event)
        with conn._lock:
            conn._write_locked(wire.switching_protocols(request.key))
        if rest:
            # A client may pipeline its first frames right behind the handshake.
            conn._rbuf += rest
            conn._parse(conn._rbuf)

    def _drop_pending_with(self, fd: int, pending: _Pending, response: bytes) -> None:
        self._pending.pop(fd, None)
        with contextlib.suppress(KeyError, ValueError):
            self._control.unregister(pending.sock)
        self._refuse(pending.sock, response)
