"""One accepted WebSocket (RFC 6455, server side) on the front door's loop.

Reading, parsing and dispatching run on the loop thread; sending and closing are safe from any
thread and never block: a send writes straight to the non-blocking socket under the
connection's lock (without giving up the GIL, see frontdoor.nowait), and only what the kernel
does not take is buffered, up to `max_backlog` bytes. A peer that reads slower than that is
closed with 1008 and the other connections do not notice.

A frame is judged at its header, before its payload is waited for: a reserved bit, an unknown
opcode, an unmasked frame, a long or fragmented control frame, or a message that would exceed
`max_message_size` closes the connection at once. Text is checked for UTF-8 as it arrives (a
frame's payload so far, then fragment by fragment), and a message may have at most
`max_fragments` fragments.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import selectors
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from frontdoor import wire
from frontdoor.nowait import Reader, send_nowait

logger = logging.getLogger(__name__)

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE
_FLUSH_CHUNK = 262144  # backlog bytes offered to the kernel per writable event

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


@dataclass(frozen=True)
class Limits:
    max_message_size: int = 1 << 20
    max_fragments: int = 64
    max_backlog: int = 1 << 20  # outbound bytes buffered for a peer that does not read
    close_timeout_s: float = 2.0


class Loop(Protocol):
    """What a Connection needs from the loop that owns it."""

    limits: Limits
    now: float
    reader: Reader  # the loop thread's

    def attention(self, conn: Connection) -> None:
        """Any thread: look at `conn` soon (it wants to write, or to be torn down)."""

    def watch_write(self, conn: Connection) -> None:
        """Loop thread: call conn.on_event when the socket is writable."""

    def unwatch_write(self, conn: Connection) -> None: ...

    def teardown(self, conn: Connection) -> None:
        """Loop thread: unregister, close the socket, call on_close once."""

    def protocol_error(self) -> None: ...


class Connection:
    """One accepted websocket. Sending and closing are thread-safe and never block."""

    __slots__ = ("_frag_op", "_frag_parts", "_frag_size", "_handler", "_lock", "_loop", "_notified", "_rbuf",
                 "_sock", "_state", "_utf8", "_want_write", "_wbuf", "bytes_in", "bytes_out", "close_code",
                 "close_deadline", "context", "fd", "headers", "last_rx", "messages_in", "messages_out", "path",
                 "query", "remote_addr", "watching")

    def __init__(self, loop: Loop, sock: socket.socket, *, path: str, query: str, headers: dict[str, str],
                 remote_addr: str, handler: Handler) -> None:
        self._loop = loop
        self._sock = sock
        self.fd = sock.fileno()
        self._handler = handler
        self.path = path
        self.query = query
        self.headers = headers
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
        self.watching = False  # the loop watches for writability
        self._notified = False
        self._rbuf = bytearray()
        self._frag_op = -1
        self._frag_parts: list[bytes] = []
        self._frag_size = 0
        self._utf8: codecs.IncrementalDecoder | None = None  # the fragmented text message's
        self.messages_in = 0
        self.bytes_in = 0
        self.last_rx = time.monotonic()

    def __repr__(self) -> str:
        return f"<Connection {self.remote_addr} {self.path} state={self._state}>"

    @property
    def open(self) -> bool:
        return self._state == _OPEN

    @property
    def closed(self) -> bool:
        """Torn down, or about to be at the loop's next look."""
        return self._state == _CLOSED

    @property
    def wants_write(self) -> bool:
        return self._want_write

    @property
    def buffered_bytes(self) -> int:
        """Outbound bytes the kernel has not taken yet (the peer's read backlog, roughly)."""
        return len(self._wbuf)

    # -- sending (any thread) ------------------------------------------------------------------

    def send_text(self, text: str | bytes) -> bool:
        """Queue one text message (or its UTF-8); False once the connection is closing or closed."""
        return self._send_frame(wire.frame_text(text))

    def send_binary(self, data: bytes) -> bool:
        """Queue one binary message; False once the connection is closing or closed."""
        return self._send_frame(wire.frame(wire.OP_BINARY, data))

    def _send_frame(self, framed: bytes) -> bool:
        with self._lock:
            if self._state != _OPEN:
                return False
            self.messages_out += 1
            self.bytes_out += len(framed)
            return self._write_locked(framed)

    def close(self, code: int = wire.CloseCode.NORMAL, reason: str = "") -> None:
        """Start the close handshake; on_close follows once the peer answers or times out."""
        with self._lock:
            if self._state != _OPEN:
                return
            self._state = _CLOSING
            self.close_code = code
            self.close_deadline = time.monotonic() + self._loop.limits.close_timeout_s
            self._write_locked(wire.close_frame(code, reason))
        self._loop.attention(self)

    def _write_locked(self, data: bytes) -> bool:
        wbuf = self._wbuf
        if wbuf:
            wbuf += data
            if len(wbuf) > self._loop.limits.max_backlog:
                self._overflow_locked()
                return False
            return True
        try:
            sent = send_nowait(self._sock, data)
        except OSError:
            # The peer is gone; the loop will see it too, this only hurries the teardown.
            self._state = _CLOSED
            self._loop.attention(self)
            return False
        if sent == len(data):
            return True
        wbuf += memoryview(data)[sent:]
        if len(wbuf) > self._loop.limits.max_backlog:
            self._overflow_locked()
            return False
        if not self._want_write:
            self._want_write = True
            self._loop.attention(self)
        return True

    def _overflow_locked(self) -> None:
        # The backlog is whole frames (the first maybe partly sent), so a close frame can follow
        # it; nothing else is queued. The peer gets close_timeout_s to take it all, then the
        # connection is torn down whatever it read: a bounded buffer, never a blocked sender.
        logger.warning("websocket %s %s: peer reads too slowly (%d bytes queued), closing with 1008",
                       self.remote_addr, self.path, len(self._wbuf))
        if self._state == _OPEN:  # else our close frame is queued already
            self.close_code = wire.CloseCode.POLICY_VIOLATION
            self._wbuf += wire.close_frame(wire.CloseCode.POLICY_VIOLATION, "peer reads too slowly")
        self._state = _LINGER
        self.close_deadline = time.monotonic() + self._loop.limits.close_timeout_s
        self._want_write = True
        self._loop.attention(self)

    # -- loop thread only ----------------------------------------------------------------------

    def start(self, handshake: bytes, rest: bytes) -> None:
        """Send the 101 answer, then parse any frames the client sent right behind its head."""
        with self._lock:
            self._write_locked(handshake)
        if rest:
            self.feed(rest)

    def flush(self) -> None:
        """Writable: push the backlog; on empty, stop watching (or finish a drain)."""
        with self._lock:
            wbuf = self._wbuf
            if wbuf and self._state != _CLOSED:
                try:
                    # A copy: the backlog is rare, and a bytearray cannot shrink while exported.
                    sent = send_nowait(self._sock, bytes(wbuf[:_FLUSH_CHUNK]))
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
            self._loop.teardown(self)
        elif self.watching:
            self._loop.unwatch_write(self)

    def on_event(self, events: int) -> None:
        if events & READ:
            self._on_readable()
        if events & WRITE and self._state != _CLOSED:
            self.flush()

    def _on_readable(self) -> None:
        try:
            data = self._loop.reader.recv(self._sock)
        except OSError:
            data = b""
        if data is None:
            return
        if not data:
            self.lost()
            return
        self.last_rx = self._loop.now
        self.bytes_in += len(data)
        self.feed(data)

    def feed(self, data: bytes) -> None:
        """Bytes read from the peer."""
        if self._state >= _DRAINING:
            return  # the stream is finished; what still arrives is not ours to parse
        if self._rbuf:
            self._rbuf += data
            self._parse(self._rbuf)
        else:
            self._parse(data)

    def lost(self) -> None:
        with self._lock:
            if self._state == _OPEN:
                self.close_code = None
            self._state = _CLOSED
        self._loop.teardown(self)

    def _parse(self, buf: bytes | bytearray) -> None:
        """Handle every complete frame in `buf`; keep the incomplete tail for the next read."""
        max_size = self._loop.limits.max_message_size
        n = len(buf)
        pos = 0
        unmask = wire.unmask
        while n - pos >= 2 and self._state < _DRAINING:
            b0 = buf[pos]
            b1 = buf[pos + 1]
            if b0 & 0x70:
                self._fail(wire.CloseCode.PROTOCOL_ERROR, "reserved bits set without an extension")
                return
            if not b1 & 0x80:
                self._fail(wire.CloseCode.PROTOCOL_ERROR, "client frames must be masked")
                return
            opcode = b0 & 0x0F
            length = b1 & 0x7F
            if opcode >= 0x8:
                if opcode not in (wire.OP_CLOSE, wire.OP_PING, wire.OP_PONG):
                    self._fail(wire.CloseCode.PROTOCOL_ERROR, f"unknown control opcode {opcode}")
                    return
                if not b0 & 0x80 or length > 125:
                    self._fail(wire.CloseCode.PROTOCOL_ERROR, "control frames must be final and short")
                    return
            elif opcode > wire.OP_BINARY:
                self._fail(wire.CloseCode.PROTOCOL_ERROR, f"unknown data opcode {opcode}")
                return
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
                self._fail(wire.CloseCode.TOO_BIG, f"message exceeds {max_size} bytes")
                return
            end = start + length
            if end > n:
                if n > start and (opcode == wire.OP_TEXT or (opcode == wire.OP_CONT and self._utf8 is not None)):
                    self._check_partial_text(opcode, unmask(buf[start:n], buf[start - 4:start]))
                break
            payload = unmask(buf[start:end], buf[start - 4:start])
            pos = end
            if opcode == wire.OP_TEXT and b0 & 0x80 and self._frag_op < 0:
                try:
                    text = payload.decode()
                except UnicodeDecodeError:
                    self._fail(wire.CloseCode.INVALID_DATA, "text message is not UTF-8")
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

    def _check_partial_text(self, opcode: int, head: bytes) -> None:
        """Fail a text frame as soon as the part of it that has arrived is not UTF-8 (a large
        frame arrives over many reads); the decoder of the message is left as it was."""
        probe = codecs.getincrementaldecoder("utf-8")()
        if opcode == wire.OP_CONT and self._utf8 is not None:
            probe.setstate(self._utf8.getstate())
        try:
            probe.decode(head, final=False)
        except UnicodeDecodeError:
            self._fail(wire.CloseCode.INVALID_DATA, "text message is not UTF-8")

    def _deliver(self, data: str | bytes) -> None:
        self.messages_in += 1
        try:
            self._handler.on_message(self, data)
        except Exception:
            logger.exception("websocket %s %s: message handler failed", self.remote_addr, self.path)
            self._fail(wire.CloseCode.INTERNAL_ERROR, "internal error", protocol=False)

    def _frame(self, b0: int, opcode: int, payload: bytes) -> None:
        """Everything but an unfragmented text message: fragments, binary, control frames."""
        if opcode == wire.OP_PING:
            with self._lock:
                if self._state == _OPEN:
                    self._write_locked(wire.frame(wire.OP_PONG, payload))
            return
        if opcode == wire.OP_CLOSE:
            self._on_close_frame(payload)
            return
        if opcode == wire.OP_PONG:
            return
        if opcode == wire.OP_CONT:
            if self._frag_op < 0:
                self._fail(wire.CloseCode.PROTOCOL_ERROR, "continuation without a message to continue")
                return
        else:  # text or binary: the header checks let nothing else through
            if self._frag_op >= 0:
                self._fail(wire.CloseCode.PROTOCOL_ERROR, "new message inside a fragmented one")
                return
            self._frag_op = opcode
            if opcode == wire.OP_TEXT:
                self._utf8 = codecs.getincrementaldecoder("utf-8")()
        fin = bool(b0 & 0x80)
        if self._utf8 is not None:
            try:
                self._utf8.decode(payload, final=fin)
            except UnicodeDecodeError:
                self._fail(wire.CloseCode.INVALID_DATA, "text message is not UTF-8")
                return
        self._frag_parts.append(payload)
        self._frag_size += len(payload)
        if not fin:
            most = self._loop.limits.max_fragments
            if len(self._frag_parts) >= most:
                self._fail(wire.CloseCode.POLICY_VIOLATION, f"a message of more than {most} fragments")
            return
        message = b"".join(self._frag_parts)
        op = self._frag_op
        self._reset_message()
        # Text was checked fragment by fragment, so it decodes.
        self._deliver(message if op == wire.OP_BINARY else message.decode())

    def _reset_message(self) -> None:
        self._frag_op = -1
        self._frag_parts = []
        self._frag_size = 0
        self._utf8 = None

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
            self._loop.watch_write(self)
        else:
            self._loop.teardown(self)

    def _fail(self, code: int, message: str, *, protocol: bool = True) -> None:
        """Fail the connection with `code` (protocol violation or handler error)."""
        if protocol:
            self._loop.protocol_error()
            logger.info("websocket %s %s: %s; closing with %d", self.remote_addr, self.path, message, code)
        self._rbuf.clear()
        self._reset_message()
        with self._lock:
            if self._state == _OPEN:
                self.close_code = code
                self._write_locked(wire.close_frame(code, message))
            if self._state == _CLOSED:
                return
            self._state = _LINGER
            self.close_deadline = self._loop.now + self._loop.limits.close_timeout_s
            pending = bool(self._wbuf)
            if not pending:
                with contextlib.suppress(OSError):
                    self._sock.shutdown(socket.SHUT_WR)
        if pending:
            self._loop.watch_write(self)

    # -- the loop's side of the teardown -------------------------------------------------------

    def expired(self, now: float, idle_before: float) -> int | None:
        """The sweep's question: None to keep, else the close code to abort with (0: none)."""
        state = self._state
        if state == _OPEN:
            return wire.CloseCode.GOING_AWAY if self.last_rx < idle_before else None
        if state != _CLOSED and self.close_deadline and self.close_deadline < now:
            return 0
        return None

    def abort(self, code: int) -> None:
        """Best-effort close frame, then closed: the peer is not expected to answer."""
        with self._lock:
            if self._state == _OPEN:
                self.close_code = code
                if not self._wbuf and code:
                    with contextlib.suppress(OSError):
                        self._sock.send(wire.close_frame(code))
            self._state = _CLOSED

    def needs_close_deadline(self) -> bool:
        return self.close_deadline == 0.0 and self._state != _OPEN

    def release(self) -> Handler | None:
        """Close the socket; the handler to notify, the first time only."""
        if self._notified:
            return None
        self._notified = True
        with self._lock:
            self._state = _CLOSED
            self._wbuf.clear()
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        return self._handler

    @property
    def sock(self) -> socket.socket:
        return self._sock
