"""The few codecs the simulator needs to speak and to listen: G.711 μ-law/A-law and L16.

Kept inside the simulator on purpose: it is a stand-in for the telephone network and must not
share code with the engine it is used to test. Table-driven numpy, same results as Sun's g711.c
(the algorithm behind `audioop`).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Int16Array = npt.NDArray[np.int16]

ULAW_SILENCE = 0xFF
ALAW_SILENCE = 0xD5
# Codecs the simulator can encode and decode; others are accepted by the REST fake only.
SUPPORTED_CODECS = ("PCMU", "PCMA", "L16")


def _ulaw_decode_table() -> Int16Array:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = ((u & 0x0F) << 3) + 0x84
    t = t << ((u & 0x70) >> 4)
    return np.where(u & 0x80, 0x84 - t, t - 0x84).astype(np.int16)


def _alaw_decode_table() -> Int16Array:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> 4
    t = (a & 0x0F) << 4
    t = np.where(seg == 0, t + 8, t + 0x108)
    t = np.where(seg > 1, t << np.maximum(seg - 1, 0), t)
    return np.where(a & 0x80, t, -t).astype(np.int16)


def _segment(value: npt.NDArray[np.int32], ends: tuple[int, ...]) -> npt.NDArray[np.int32]:
    return np.searchsorted(np.array(ends), value, side="left").astype(np.int32)


def _ulaw_encode_table() -> npt.NDArray[np.uint8]:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 2
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), 8159) + (0x84 >> 2)
    seg = _segment(mag, (0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF))
    uval = (seg << 4) | ((mag >> (seg + 1)) & 0x0F)
    return (np.where(seg >= 8, 0x7F, uval) ^ mask).astype(np.uint8)


def _alaw_encode_table() -> npt.NDArray[np.uint8]:
    pcm = np.arange(-32768, 32768, dtype=np.int32) >> 3
    mask = np.where(pcm >= 0, 0xD5, 0x55)
    mag = np.where(pcm >= 0, pcm, -pcm - 1)
    seg = _segment(mag, (0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF))
    low = np.where(seg < 2, mag >> 1, mag >> np.maximum(seg, 1)) & 0x0F
    aval = (seg << 4) | low
    return (np.where(seg >= 8, 0x7F, aval) ^ mask).astype(np.uint8)


_ULAW_DEC = _ulaw_decode_table()
_ALAW_DEC = _alaw_decode_table()
_ULAW_ENC = _ulaw_encode_table()
_ALAW_ENC = _alaw_encode_table()


def bytes_per_sample(encoding: str) -> int:
    return 2 if encoding == "L16" else 1


def encode(pcm: Int16Array, encoding: str, *, l16_byteorder: str = "big") -> bytes:
    """int16 mono samples -> wire payload bytes of `encoding` (no RTP header)."""
    index = pcm.astype(np.int32) + 32768
    if encoding == "PCMU":
        return _ULAW_ENC[index].tobytes()
    if encoding == "PCMA":
        return _ALAW_ENC[index].tobytes()
    if encoding == "L16":
        return pcm.astype(">i2" if l16_byteorder == "big" else "<i2").tobytes()
    raise ValueError(f"the simulator cannot encode {encoding}")


def decode(payload: bytes, encoding: str, *, l16_byteorder: str = "big") -> Int16Array:
    """Wire payload bytes -> int16 mono samples. L16 payloads must have an even length."""
    # take() is fancy indexing without its generality: a third less time on a 20 ms frame.
    if encoding == "PCMU":
        return _ULAW_DEC.take(np.frombuffer(payload, dtype=np.uint8))
    if encoding == "PCMA":
        return _ALAW_DEC.take(np.frombuffer(payload, dtype=np.uint8))
    if encoding == "L16":
        return np.frombuffer(payload, dtype=">i2" if l16_byteorder == "big" else "<i2").astype(np.int16)
    raise ValueError(f"the simulator cannot decode {encoding}")


def silence_payload(encoding: str, samples: int) -> bytes:
    if encoding == "PCMU":
        return bytes([ULAW_SILENCE]) * samples
    if encoding == "PCMA":
        return bytes([ALAW_SILENCE]) * samples
    return bytes(2 * samples)
