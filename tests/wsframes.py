"""Raw RFC 6455 frames, for tests that send what a well-behaved WebSocket library refuses to."""

from __future__ import annotations

import struct


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0,
          mask: bytes | None = None) -> bytes:
    """One frame as given: any opcode, fin and reserved bits; masked when `mask` is given."""
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    bit = 0x80 if mask is not None else 0
    if n < 126:
        head = bytes((b0, bit | n))
    elif n < 65536:
        head = struct.pack("!BBH", b0, bit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, bit | 127, n)
    if mask is not None:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        head += mask
    return head + payload
