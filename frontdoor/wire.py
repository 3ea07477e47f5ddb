"""RFC 6455 wire helpers: handshake checks, frame building, unmasking.

Pure functions over bytes, no sockets, so they are cheap to test and to reason about. The hot
ones (unmask, frame_text) are written for ~300-byte payloads, the size of one Telnyx media frame.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from enum import IntEnum
from typing import Any

from frontdoor.http import HttpError, Request

_np: Any
try:
    import numpy as _np
except ImportError:  # numpy only speeds up large payloads; the int path handles every size
    _np = None
_apply_mask: Any
try:
    # The websockets package's C XOR (a requirement; the simulator's client masks with it too):
    # ~0.2 us for a media frame against ~1.8 us for the big-int XOR below, 50 times a second per call.
    from websockets.speedups import apply_mask as _apply_mask
except ImportError:
    _apply_mask = None

OP_CONT = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA



class CloseCode(IntEnum):
    """The close codes this server sends or reports (RFC 6455 7.4.1): the one list of them."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS = 1005  # reported only, never sent
    INVALID_DATA = 1007
    POLICY_VIOLATION = 1008
    TOO_BIG = 1009
    INTERNAL_ERROR = 1011


# Codes a peer may put in a close frame (RFC 6455 7.4.1 and the IANA registry); 1005/1006/1015
# are reserved for reporting and must never appear on the wire.
_SENDABLE_CODES = frozenset({1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014})

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_HEAD_16 = struct.Struct("!BBH")
_HEAD_64 = struct.Struct("!BBQ")
_CLOSE_CODE = struct.Struct("!H")

# Below this size Python's big-int XOR beats numpy (no array set-up); measured crossover ~1.5 KiB.
_NUMPY_MIN = 2048


def unmask(payload: bytes | bytearray, mask: bytes | bytearray) -> bytes:
    """XOR `payload` with the repeating 4-byte client `mask`; returns a new bytes object."""
    if _apply_mask is not None:
        return bytes(_apply_mask(payload, mask))
    n = len(payload)
    if n >= _NUMPY_MIN and _np is not None:
        key = _np.frombuffer(bytes(mask) * (n // 4 + 1), dtype=_np.uint8, count=n)
        return (_np.frombuffer(payload, dtype=_np.uint8) ^ key).tobytes()
    return (int.from_bytes(payload, "little")
            ^ int.from_bytes((mask * (n // 4 + 1))[:n], "little")).to_bytes(n, "little")


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final server frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return _HEAD_16.pack(0x80 | opcode, 126, n) + payload
    return _HEAD_64.pack(0x80 | opcode, 127, n) + payload


def frame_text(text: str | bytes) -> bytes:
    """The hot path of every outbound media message: one final text frame (bytes: its UTF-8)."""
    payload = text.encode() if isinstance(text, str) else text
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return _HEAD_16.pack(0x81, 126, n) + payload
    return _HEAD_64.pack(0x81, 127, n) + payload


def close_frame(code: int | None, reason: str = "") -> bytes:
    if code is None or code == CloseCode.NO_STATUS:
        return frame(OP_CLOSE, b"")
    # Control frames carry at most 125 bytes; the reason is cut at a character boundary.
    raw = reason.encode()[:123].decode(errors="ignore").encode()
    return frame(OP_CLOSE, _CLOSE_CODE.pack(code) + raw)


class CloseFrameError(ValueError):
    """A peer's close frame that itself breaks the protocol; carries the code to answer with."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def parse_close(payload: bytes) -> tuple[int, str]:
    """(code, reason) of a peer's close frame; an empty one means 1005 (no status)."""
    if not payload:
        return CloseCode.NO_STATUS, ""
    if len(payload) == 1:
        raise CloseFrameError(CloseCode.PROTOCOL_ERROR, "close frame with a 1-byte payload")
    code = _CLOSE_CODE.unpack_from(payload)[0]
    if code not in _SENDABLE_CODES and not 3000 <= code <= 4999:
        raise CloseFrameError(CloseCode.PROTOCOL_ERROR, f"close code {code} is not allowed on the wire")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise CloseFrameError(CloseCode.INVALID_DATA, "close reason is not UTF-8") from None
    return code, reason


def accept_key(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode("ascii") + _GUID).digest()).decode("ascii")


def switching_protocols(key: str) -> bytes:
    return (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: " + accept_key(key).encode("ascii") + b"\r\n\r\n")


UPGRADE_REQUIRED = (("Upgrade", "websocket"), ("Sec-WebSocket-Version", "13"))


def handshake_key(request: Request) -> str:
    """Validate an RFC 6455 opening handshake; its Sec-WebSocket-Key, or an HttpError to answer."""
    def tokens(name: str) -> set[str]:
        return {t.strip().lower() for t in (request.header(name) or "").split(",")}

    if request.method != "GET" or request.version != "1.1":
        raise HttpError(400, "bad_request", "A WebSocket upgrade is a GET over HTTP/1.1.")
    if "websocket" not in tokens("upgrade"):
        raise HttpError(426, "upgrade_required", "This path only speaks WebSocket.")
    if "upgrade" not in tokens("connection"):
        raise HttpError(400, "bad_request", "The Connection header lacks 'upgrade'.")
    if request.header("sec-websocket-version") != "13":
        raise HttpError(400, "bad_request", "Unsupported Sec-WebSocket-Version; this server speaks 13.")
    key = request.header("sec-websocket-key") or ""
    try:
        valid_key = request.count("sec-websocket-key") == 1 and len(base64.b64decode(key, validate=True)) == 16
    except (binascii.Error, ValueError):
        valid_key = False
    if not valid_key:
        raise HttpError(400, "bad_request", "Missing or malformed Sec-WebSocket-Key.")
    return key
