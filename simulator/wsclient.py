"""Telnyx's end of the media WebSocket (RFC 6455, client side) as one asyncio.Protocol per socket.

The media loop sends and receives 50 messages a second per call on one thread, so the cost of
each message is the simulator's capacity. A general-purpose client spends most of that on
machinery this use does not need: a reader task and a future per message, a send lock, an
async context per send. Here frames are parsed inline as bytes arrive and handed to one
callback, with the time they arrived as `received_at` (on plain connections the kernel's, see
simulator.stamped); a send is one `transport.write` of a masked frame. The handshake, masking,
ping, close handshake, size limit and failure codes follow RFC 6455 and the `websockets`
library's client (the same reasons, the same `close_code` after a close: the peer's code, 1005
for an empty close frame, 1006 when none arrived).

Not supported, because Telnyx does not use them: extensions (no compression), subprotocols,
HTTP proxies, redirects.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import ipaddress
import logging
import os
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

from simulator import stamped

try:
    from websockets.speedups import apply_mask
except ImportError:  # no C extension on this platform
    from websockets.utils import apply_mask

logger = logging.getLogger(__name__)

__all__ = ["ConnectionClosed", "HandshakeError", "InvalidStatus", "WebSocketClient", "open_socket"]

ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MAX_RESPONSE_HEAD = 16384

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009
# Codes a peer may put in a close frame (RFC 6455 7.4, IANA registry); 3000-4999 are free too.
_VALID_CLOSE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})


class _MaskKeys:
    """Fresh masking keys from the OS's CSPRNG (RFC 6455 5.3 asks for a strong source), read
    4 KiB at a time: one getrandom() per thousand frames instead of one per frame. One pool per
    loop thread (_thread_mask_keys): every MediaEngine (one per FakeTelnyx) has its own."""

    def __init__(self) -> None:
        self._pool = b""
        self._pos = 0

    def next(self) -> bytes:
        pos = self._pos
        if pos + 4 > len(self._pool):
            self._pool, pos = os.urandom(4096), 0
        self._pos = pos + 4
        return self._pool[pos:pos + 4]


_pools = threading.local()


def _thread_mask_keys() -> _MaskKeys:
    """This thread's pool; a client looks it up once, as it is built on its loop's thread."""
    keys: _MaskKeys | None = getattr(_pools, "keys", None)
    if keys is None:
        keys = _pools.keys = _MaskKeys()
    return keys


_HEAD_16 = struct.Struct("!BBH")
_HEAD_64 = struct.Struct("!BBQ")

# Connection states.
_CONNECTING = 0
_OPEN = 1
_CLOSING = 2  # a close frame went one way (or we failed the connection); waiting for TCP to end
_CLOSED = 3


class HandshakeError(Exception):
    """The server did not complete a valid WebSocket upgrade."""


class InvalidStatus(HandshakeError):
    """The server answered the upgrade with an HTTP status other than 101."""

    def __init__(self, status: int) -> None:
        super().__init__(f"server rejected WebSocket connection: HTTP {status}")
        self.status = status


class ConnectionClosed(Exception):
    """The socket is closing or closed: nothing more can be sent."""


@dataclass(frozen=True)
class _Target:
    host: str
    port: int
    secure: bool
    resource: str  # path and query, as sent in the request line
    host_header: str


def _parse_url(url: str) -> _Target:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss"):
        raise ValueError(f"not a WebSocket URL: {url}")
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in {url}")
    secure = parts.scheme == "wss"
    port = parts.port or (443 if secure else 80)  # a bad port raises ValueError too
    resource = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        bracketed = ipaddress.ip_address(host).version == 6
    except ValueError:
        bracketed = False
    host_header = f"[{host}]" if bracketed else host
    if port != (443 if secure else 80):
        host_header += f":{port}"
    return _Target(host, port, secure, resource, host_header)


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + ACCEPT_GUID).digest()).decode()


class WebSocketClient(asyncio.Protocol):
    """One client WebSocket. Loop thread only.

    Messages (str for text, bytes for binary) go to the callback given to `attach`; until then
    they are kept, so nothing the server sends right after the upgrade is lost. The callback
    must not block; it may send.
    """

    def __init__(self, target: _Target, headers: Iterable[tuple[str, str]], *, max_size: int,
                 close_timeout: float) -> None:
        self.max_size = max_size
        self.close_timeout = close_timeout
        self._loop = asyncio.get_running_loop()
        self._mask_keys = _thread_mask_keys()  # the loop thread's, read per frame without a lookup
        self._target = target
        self._key = base64.b64encode(os.urandom(16)).decode()
        self._headers = list(headers)
        self._transport: asyncio.Transport | None = None
        self._state = _CONNECTING
        self.handshake: asyncio.Future[None] = self._loop.create_future()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._close_timer: asyncio.TimerHandle | None = None
        self._rbuf = bytearray()
        self._need = 0  # bytes _rbuf must hold before a frame can be complete
        self._discard = False  # failed or close received: ignore all further input
        self._frag_op: int | None = None  # opcode of the fragmented message being assembled
        self._frag: list[bytes] = []
        self._frag_size = 0
        self._on_message: Callable[[str | bytes], None] | None = None
        self._on_closed: Callable[[], None] | None = None
        self._early: list[str | bytes] = []
        self.close_rcvd: tuple[int, str] | None = None  # the peer's close frame, once it arrived
        # When the bytes of the message being delivered reached us (time.monotonic() clock): the
        # kernel's stamp on plain connections (simulator.stamped), the read's time on TLS ones.
        self.received_at = 0.0

    # ---- public ----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._state == _CLOSED

    @property
    def close_code(self) -> int | None:
        """The peer's close code once the connection is closed (1006: it sent none)."""
        if self._state != _CLOSED:
            return None
        return self.close_rcvd[0] if self.close_rcvd is not None else CLOSE_ABNORMAL

    @property
    def close_reason(self) -> str | None:
        if self._state != _CLOSED:
            return None
        return self.close_rcvd[1] if self.close_rcvd is not None else ""

    def attach(self, on_message: Callable[[str | bytes], None], on_closed: Callable[[], None]) -> None:
        """Start delivering: messages received so far first, then each as it arrives."""
        self._on_message, self._on_closed = on_message, on_closed
        early, self._early = self._early, []
        for message in early:
            on_message(message)
        if self._state == _CLOSED:
            on_closed()

    def buffered(self) -> int:
        """Bytes written but not yet taken by the kernel."""
        return self._transport.get_write_buffer_size() if self._transport is not None else 0

    def send_text(self, text: str) -> None:
        if self._state != _OPEN:
            raise ConnectionClosed("the WebSocket is closing or closed")
        self._write_frame(0x81, text.encode())

    def send(self, message: str | bytes) -> None:
        """A text frame for str, a binary frame for bytes."""
        if isinstance(message, str):
            self.send_text(message)
            return
        if self._state != _OPEN:
            raise ConnectionClosed("the WebSocket is closing or closed")
        self._write_frame(0x82, bytes(message))

    async def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Closing handshake: send a close frame, wait for the server to end the connection."""
        if self._state == _OPEN:
            self._send_close(code, reason)
        elif self._state == _CONNECTING:
            self.abort()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def abort(self) -> None:
        """Drop the TCP connection: no close frame, no waiting."""
        if self._state != _CLOSED:
            self._state = max(self._state, _CLOSING)
        if self._transport is not None:
            self._transport.abort()

    # ---- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses but have the same methods.
        self._transport = writer = cast(asyncio.Transport, transport)
        t = self._target
        lines = [f"GET {t.resource} HTTP/1.1", f"Host: {t.host_header}", "Upgrade: websocket",
                 "Connection: Upgrade", f"Sec-WebSocket-Key: {self._key}", "Sec-WebSocket-Version: 13"]
        lines += [f"{name}: {value}" for name, value in self._headers]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    def data_received(self, data: bytes) -> None:
        self.data_received_at(data, time.monotonic())

    def data_received_at(self, data: bytes, received_at: float) -> None:
        if self._discard:
            return
        self.received_at = received_at
        if self._rbuf:
            self._rbuf += data
            if len(self._rbuf) < self._need:
                return
            data = bytes(self._rbuf)
            self._rbuf.clear()
        if self._state == _CONNECTING:
            data = self._response(data)
            if not data:
                return
        self._parse(data)

    def eof_received(self) -> bool | None:
        if self._state == _CONNECTING and not self.handshake.done():
            self.handshake.set_exception(HandshakeError("connection closed during the handshake"))
        return None  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._state = _CLOSED
        if self._close_timer is not None:
            self._close_timer.cancel()
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeError(f"connection lost during the handshake: {exc}"))
        if not self._closed.done():
            self._closed.set_result(None)
        if self._on_closed is not None:
            self._on_closed()

    # ---- handshake -------------------------------------------------------------------------

    def _response(self, data: bytes) -> bytes:
        """Check the upgrade response; returns the bytes after it (frames), b"" if none yet."""
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            if len(data) > MAX_RESPONSE_HEAD:
                self._handshake_failed(HandshakeError("response head too long"))
            else:
                self._rbuf += data
                self._need = len(data) + 1
            return b""
        try:
            self._check_response(head.decode("iso-8859-1"))
        except HandshakeError as exc:
            self._handshake_failed(exc)
            return b""
        self._state = _OPEN
        self._need = 0
        self.handshake.set_result(None)
        return rest

    def _check_response(self, head: str) -> None:
        status_line, *header_lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
            raise HandshakeError(f"not an HTTP response: {status_line[:100]!r}")
        if int(parts[1]) != 101:
            raise InvalidStatus(int(parts[1]))
        headers: dict[str, list[str]] = {}
        for line in header_lines:
            name, colon, value = line.partition(":")
            if not colon:
                raise HandshakeError(f"invalid response header: {line[:100]!r}")
            headers.setdefault(name.strip().lower(), []).append(value.strip())
        connection = [v.strip().lower() for value in headers.get("connection", []) for v in value.split(",")]
        if "upgrade" not in connection:
            raise HandshakeError(f"invalid Connection header: {', '.join(headers.get('connection', []))}")
        upgrade = [v.strip().lower() for value in headers.get("upgrade", []) for v in value.split(",")]
        if upgrade != ["websocket"]:
            raise HandshakeError(f"invalid Upgrade header: {', '.join(headers.get('upgrade', []))}")
        accept = headers.get("sec-websocket-accept", [])
        if len(accept) != 1:
            raise HandshakeError("missing or repeated Sec-WebSocket-Accept header")
        if accept[0] != accept_key(self._key):
            raise HandshakeError(f"invalid Sec-WebSocket-Accept header: {accept[0]}")
        for name in ("sec-websocket-extensions", "sec-websocket-protocol"):
            if name in headers:  # we asked for neither
                raise HandshakeError(f"unexpected {name} header: {headers[name][0]}")

    def _handshake_failed(self, exc: HandshakeError) -> None:
        self._discard = True
        if not self.handshake.done():
            self.handshake.set_exception(exc)
        assert self._transport is not None
        self._transport.close()

    # ---- frames in -------------------------------------------------------------------------

    def _parse(self, data: bytes) -> None:
        pos, n = 0, len(data)
        need = 2  # bytes from `pos` that the next frame needs at least
        while n - pos >= 2:
            b0, b1 = data[pos], data[pos + 1]
            length = b1 & 0x7F
            if length < 126:
                start = pos + 2
            elif length == 126:
                if n - pos < 4:
                    need = 4
                    break
                length = (data[pos + 2] << 8) | data[pos + 3]
                start = pos + 4
            else:
                if n - pos < 10:
                    need = 10
                    break
                length = int.from_bytes(data[pos + 2:pos + 10], "big")
                start = pos + 10
            if b0 != 0x81 or b1 & 0x80 or self._frag_op is not None:
                problem = self._check_head(b0, b1, length)
                if problem is not None:
                    self._fail(*problem)
                    return
            elif length > self.max_size:
                self._fail(CLOSE_TOO_BIG, f"frame with {length} bytes exceeds limit of {self.max_size} bytes")
                return
            end = start + length
            if end > n:
                need = end - pos
                break
            if b0 == 0x81 and self._frag_op is None:  # the common case: a whole text message
                try:
                    text = data[start:end].decode()
                except UnicodeDecodeError as exc:
                    self._fail(CLOSE_INVALID_DATA, f"{exc.reason} at position {exc.start}")
                    return
                self._deliver(text)
            else:
                self._frame(b0 & 0x80, b0 & 0x0F, data[start:end])
            if self._discard:
                return
            pos = end
            need = 2
        if pos < n:
            self._rbuf += data[pos:] if pos else data
            self._need = need
        else:
            self._need = 0

    def _check_head(self, b0: int, b1: int, length: int) -> tuple[int, str] | None:
        opcode = b0 & 0x0F
        if opcode not in (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
            return CLOSE_PROTOCOL_ERROR, "invalid opcode"
        if b1 & 0x80:
            return CLOSE_PROTOCOL_ERROR, "incorrect masking"
        if b0 & 0x70:
            return CLOSE_PROTOCOL_ERROR, "reserved bits must be 0"
        if opcode >= OP_CLOSE:
            if length > 125:
                return CLOSE_PROTOCOL_ERROR, "control frame too long"
            if not b0 & 0x80:
                return CLOSE_PROTOCOL_ERROR, "fragmented control frame"
            return None
        if opcode == OP_CONT and self._frag_op is None:
            return CLOSE_PROTOCOL_ERROR, "unexpected continuation frame"
        if opcode != OP_CONT and self._frag_op is not None:
            return CLOSE_PROTOCOL_ERROR, "expected a continuation frame"
        if length > self.max_size - self._frag_size:
            after = f"after reading {self._frag_size} bytes " if self._frag_size else ""
            return CLOSE_TOO_BIG, f"frame with {length} bytes {after}exceeds limit of {self.max_size} bytes"
        return None

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode == OP_PING:
            if self._state == _OPEN:
                self._write_frame(0x80 | OP_PONG, payload)
        elif opcode == OP_PONG:
            pass
        elif opcode == OP_CLOSE:
            self._close_frame(payload)
        elif not fin:  # first or middle fragment
            if opcode != OP_CONT:
                self._frag_op = opcode
            self._frag.append(payload)
            self._frag_size += len(payload)
        else:
            if opcode == OP_CONT:
                opcode = self._frag_op or OP_BINARY
                payload = b"".join([*self._frag, payload])
                self._frag_op, self._frag, self._frag_size = None, [], 0
            if opcode == OP_BINARY:
                self._deliver(payload)
                return
            try:
                text = payload.decode()
            except UnicodeDecodeError as exc:
                self._fail(CLOSE_INVALID_DATA, f"{exc.reason} at position {exc.start}")
                return
            self._deliver(text)

    def _close_frame(self, payload: bytes) -> None:
        if len(payload) == 1:
            self._fail(CLOSE_PROTOCOL_ERROR, "close frame too short")
            return
        code, reason = CLOSE_NO_STATUS, ""
        if payload:
            code = int.from_bytes(payload[:2], "big")
            try:
                reason = payload[2:].decode()
            except UnicodeDecodeError as exc:
                self._fail(CLOSE_INVALID_DATA, f"{exc.reason} at position {exc.start}")
                return
            if code not in _VALID_CLOSE_CODES and not 3000 <= code < 5000:
                self._fail(CLOSE_PROTOCOL_ERROR, "invalid status code")
                return
        self.close_rcvd = (code, reason)
        self._discard = True
        if self._state == _OPEN:  # echo it; the server then ends the TCP connection
            self._write_frame(0x80 | OP_CLOSE, payload)
            self._closing()

    def _deliver(self, message: str | bytes) -> None:
        if self._on_message is None:
            self._early.append(message)
            return
        try:
            self._on_message(message)
        except Exception:
            logger.exception("message handler failed")

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 7.1.7): close frame with the reason, ignore further input."""
        logger.info("failing WebSocket connection: %d %s", code, reason)
        self._discard = True
        if self._state == _OPEN:
            self._send_close(code, reason)

    # ---- frames out ------------------------------------------------------------------------

    def _write_frame(self, b0: int, data: bytes) -> None:
        n = len(data)
        mask = self._mask_keys.next()
        if n < 126:
            head = bytes((b0, 0x80 | n))
        elif n < 65536:
            head = _HEAD_16.pack(b0, 0xFE, n)
        else:
            head = _HEAD_64.pack(b0, 0xFF, n)
        assert self._transport is not None
        self._transport.write(head + mask + apply_mask(data, mask))

    def _send_close(self, code: int, reason: str) -> None:
        if code not in _VALID_CLOSE_CODES and not 3000 <= code <= 4999:
            raise ValueError(f"{code} may not be sent in a close frame")
        # A control frame carries at most 125 bytes: the code and 123 of reason, whole characters.
        raw = reason.encode()[:123].decode(errors="ignore").encode()
        self._write_frame(0x80 | OP_CLOSE, code.to_bytes(2, "big") + raw)
        self._closing()

    def _closing(self) -> None:
        """A close frame went one way: the server should end TCP; after close_timeout we do."""
        self._state = _CLOSING
        if self._close_timer is None:
            self._close_timer = self._loop.call_later(self.close_timeout, self.abort)


async def open_socket(url: str, headers: dict[str, str], *, max_size: int, open_timeout: float,
                      close_timeout: float) -> WebSocketClient:
    """Connect and upgrade. Raises ValueError (bad URL), OSError, HandshakeError, TimeoutError."""
    target = _parse_url(url)
    loop = asyncio.get_running_loop()
    context = ssl.create_default_context() if target.secure else None

    def factory() -> WebSocketClient:
        return WebSocketClient(target, headers.items(), max_size=max_size, close_timeout=close_timeout)

    async with asyncio.timeout(open_timeout):
        if context is None:
            client = await stamped.connect(target.host, target.port, factory)
        else:
            _, client = await loop.create_connection(factory, target.host, target.port, ssl=context)
        try:
            await client.handshake
        except BaseException:  # refused, timed out or cancelled: no half-open socket stays behind
            client.abort()
            raise
    return client
