"""Wire codecs for Telnyx RTP mode: G.711 μ-law (PCMU), A-law (PCMA), L16, G.722 and OPUS.

G.711 and L16 are stateless: one shared instance per format, and the media clock encodes every
call of a format as one block. G.722 and OPUS keep state between frames (mixer.wideband): each
call has its own instance per direction, and they are never batched.

G.711 is table driven. The tables are computed once, at import, by vectorised numpy versions of
the segment arithmetic of Sun's reference g711.c (the one CPython's audioop used), so the results
are bit-exact with audioop over the whole domain: every int16 input, every 8-bit code. Note that
ITU-T G.191's μ-law encoder rounds 508 negative inputs one step differently; we follow audioop.

Encoding indexes a 65,536-entry table with the uint16 view of the int16 samples; decoding indexes
a 256-entry int16 table with the payload bytes. Both are a single numpy gather.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from mixer.errors import UnsupportedCodec

_SEG_SHIFT = 4
_QUANT_MASK = 0x0F
_SIGN_BIT = 0x80

# Upper bound of each of the 8 segments, on the reference code's reduced-precision inputs.
_ULAW_SEG_END = np.array([0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF], dtype=np.int32)
_ALAW_SEG_END = np.array([0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF], dtype=np.int32)
_ULAW_BIAS = 0x84
_ULAW_CLIP = 8159  # largest 14-bit magnitude μ-law can represent after biasing


def _all_int16() -> np.ndarray:
    """Every int16 value, laid out so that index i holds the value whose uint16 bit pattern is i."""
    return np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.int16).astype(np.int32)


def _segment(magnitude: np.ndarray, seg_end: np.ndarray) -> np.ndarray:
    """Index of the first segment whose end is >= magnitude (8 when above every segment)."""
    return np.searchsorted(seg_end, magnitude, side="left").astype(np.int32)


def _build_ulaw_encode() -> np.ndarray:
    pcm = _all_int16() >> 2  # the reference encoder works on 14-bit samples
    mask = np.where(pcm < 0, 0x7F, 0xFF)
    mag = np.minimum(np.abs(pcm), _ULAW_CLIP) + (_ULAW_BIAS >> 2)
    seg = _segment(mag, _ULAW_SEG_END)
    code = (np.minimum(seg, 7) << _SEG_SHIFT) | ((mag >> (np.minimum(seg, 7) + 1)) & _QUANT_MASK)
    code = np.where(seg >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8)


def _build_ulaw_decode() -> np.ndarray:
    u = ~np.arange(256, dtype=np.int32) & 0xFF
    t = (((u & _QUANT_MASK) << 3) + _ULAW_BIAS) << ((u & 0x70) >> _SEG_SHIFT)
    return np.where(u & _SIGN_BIT, _ULAW_BIAS - t, t - _ULAW_BIAS).astype(np.int16)


def _build_alaw_encode() -> np.ndarray:
    pcm = _all_int16() >> 3  # the reference encoder works on 13-bit samples
    negative = pcm < 0
    mask = np.where(negative, 0x55, 0xD5)
    mag = np.where(negative, -pcm - 1, pcm)  # one's complement keeps -1 and 0 symmetric
    seg = _segment(mag, _ALAW_SEG_END)
    shift = np.where(seg < 2, 1, np.minimum(seg, 7))
    code = (np.minimum(seg, 7) << _SEG_SHIFT) | ((mag >> shift) & _QUANT_MASK)
    code = np.where(seg >= 8, 0x7F, code)
    return (code ^ mask).astype(np.uint8)


def _build_alaw_decode() -> np.ndarray:
    a = np.arange(256, dtype=np.int32) ^ 0x55
    seg = (a & 0x70) >> _SEG_SHIFT
    t = (a & _QUANT_MASK) << 4
    t = np.where(seg == 0, t + 8, (t + 0x108) << np.maximum(seg - 1, 0))
    return np.where(a & _SIGN_BIT, t, -t).astype(np.int16)


ULAW_ENCODE_TABLE = _build_ulaw_encode()
ULAW_DECODE_TABLE = _build_ulaw_decode()
ALAW_ENCODE_TABLE = _build_alaw_encode()
ALAW_DECODE_TABLE = _build_alaw_decode()
for _table in (ULAW_ENCODE_TABLE, ULAW_DECODE_TABLE, ALAW_ENCODE_TABLE, ALAW_DECODE_TABLE):
    _table.flags.writeable = False

ULAW_SILENCE = 0xFF
ALAW_SILENCE = 0xD5


def _as_int16(pcm: np.ndarray) -> np.ndarray:
    arr = np.asarray(pcm)
    if arr.dtype != np.int16:
        raise TypeError(f"expected int16 samples, got {arr.dtype}")
    return arr


def ulaw_encode(pcm: np.ndarray) -> bytes:
    """int16 samples (any rate, any length) -> one μ-law byte per sample."""
    return ULAW_ENCODE_TABLE[_as_int16(pcm).view(np.uint16)].tobytes()


def ulaw_decode(payload: bytes) -> np.ndarray:
    """μ-law bytes -> int16 samples (a new array, one per byte)."""
    return ULAW_DECODE_TABLE[np.frombuffer(payload, dtype=np.uint8)]


def alaw_encode(pcm: np.ndarray) -> bytes:
    """int16 samples (any rate, any length) -> one A-law byte per sample."""
    return ALAW_ENCODE_TABLE[_as_int16(pcm).view(np.uint16)].tobytes()


def alaw_decode(payload: bytes) -> np.ndarray:
    """A-law bytes -> int16 samples (a new array, one per byte)."""
    return ALAW_DECODE_TABLE[np.frombuffer(payload, dtype=np.uint8)]


def float_to_pcm16(x: np.ndarray) -> np.ndarray:
    """float samples in [-1, 1) -> int16: x * 32768 rounded half to even, clipped to int16's range.

    Scaling by a power of two is exact, so float32 and float64 inputs of equal value agree.
    """
    scaled = np.rint(np.asarray(x, dtype=np.float32) * np.float32(32768.0))
    return np.clip(scaled, -32768.0, 32767.0).astype(np.int16)


def pcm16_to_float(pcm: np.ndarray) -> np.ndarray:
    """int16 samples -> float32 in [-1, 1): pcm / 32768 (exact)."""
    return np.asarray(pcm, dtype=np.int16).astype(np.float32) * np.float32(1.0 / 32768.0)


class Codec(Protocol):
    """What the media socket needs from a codec: bytes in, int16 out, and back."""

    @property
    def name(self) -> str: ...  # "PCMU", "PCMA", "L16", "G722" or "OPUS", as Telnyx spells it

    @property
    def sample_rate(self) -> int: ...  # of the PCM side (G.722: 16000, whatever Telnyx names)

    @property
    def stateful(self) -> bool: ...  # True: one instance per call and direction, never batched

    @property
    def bytes_per_sample(self) -> int: ...  # 0 for compressed codecs

    def encode(self, pcm: np.ndarray) -> bytes: ...

    def decode(self, payload: bytes) -> np.ndarray: ...


@dataclass(frozen=True)
class G711Codec:
    """PCMU or PCMA: one byte per sample, table driven both ways."""

    name: str
    sample_rate: int
    silence_byte: int
    encode_table: np.ndarray
    decode_table: np.ndarray
    bytes_per_sample: int = 1
    stateful: bool = False

    def encode(self, pcm: np.ndarray) -> bytes:
        return self.encode_table[_as_int16(pcm).view(np.uint16)].tobytes()

    def decode(self, payload: bytes) -> np.ndarray:
        return self.decode_table[np.frombuffer(payload, dtype=np.uint8)]


@dataclass(frozen=True)
class L16Codec:
    """Linear 16-bit PCM. RFC 3551 says network (big-endian) order; the byte order is configurable
    because reports about what Telnyx really sends disagree."""

    sample_rate: int
    byteorder: str = "big"
    name: str = "L16"
    silence_byte: int = 0x00
    bytes_per_sample: int = 2
    stateful: bool = False

    @property
    def _wire_dtype(self) -> np.dtype:
        return np.dtype(">i2" if self.byteorder == "big" else "<i2")

    def encode(self, pcm: np.ndarray) -> bytes:
        return _as_int16(pcm).astype(self._wire_dtype, copy=False).tobytes()

    def decode(self, payload: bytes) -> np.ndarray:
        # An odd trailing byte cannot be half a sample of anything useful; drop it rather than
        # fail the whole inbound frame.
        usable = len(payload) - (len(payload) % 2)
        return np.frombuffer(payload, dtype=self._wire_dtype, count=usable // 2).astype(np.int16)


# The rates Telnyx names in `stream_bidirectional_sampling_rate` that we take, per codec. G.722's
# audio is 16 kHz at either nominal rate (mixer.wideband); L16 takes every rate Telnyx lists.
SUPPORTED_RATES: dict[str, tuple[int, ...]] = {
    "PCMU": (8000,),
    "PCMA": (8000,),
    "G722": (8000, 16000),
    "OPUS": (8000, 16000),
    "L16": (8000, 16000, 22050, 24000, 48000),
}
STATEFUL = ("G722", "OPUS")
AMR_WB_REFUSAL = ("AMR-WB is not supported: no maintained library with a Python binding ships an "
                  "AMR-WB encoder (FFmpeg's PyAV wheels carry OpenCORE's decoder only); use G722, OPUS or L16.")


# One instance per stateless format, so calls on the same format share it and the media clock
# encodes them together (it compares codecs by identity). At most eight such formats.
_CODECS: dict[tuple[str, int, str], Codec] = {}


def get_codec(encoding: str, sample_rate: int, l16_byteorder: str = "big", frame_ms: int = 20) -> Codec:
    """The codec for a Telnyx `media_format` (encoding name as Telnyx spells it, case-insensitive).

    Stateless formats (G.711, L16) give one shared instance; G722 and OPUS a new one on every
    call, to be used for one direction of one stream. `frame_ms` is the length of an OPUS packet.
    """
    name = encoding.strip().upper()
    if name in STATEFUL:
        from mixer.wideband import make_wideband  # PyAV loads FFmpeg: only when a call needs it

        return make_wideband(name, sample_rate, frame_ms)
    key = (name, sample_rate, l16_byteorder if name == "L16" else "")
    codec = _CODECS.get(key)
    if codec is None:
        # setdefault is atomic: threads that raced here all get the first instance stored.
        codec = _CODECS.setdefault(key, _make_codec(name, sample_rate, l16_byteorder, encoding))
    return codec


def _make_codec(name: str, sample_rate: int, l16_byteorder: str, encoding: str) -> Codec:
    if name in ("PCMU", "PCMA"):
        if sample_rate not in SUPPORTED_RATES[name]:
            raise UnsupportedCodec(f"{name} runs at 8000 Hz only, not {sample_rate} Hz; "
                                   "choose a sample rate of 8000, or G722, OPUS or L16 for wideband.")
        if name == "PCMU":
            return G711Codec("PCMU", sample_rate, ULAW_SILENCE, ULAW_ENCODE_TABLE, ULAW_DECODE_TABLE)
        return G711Codec("PCMA", sample_rate, ALAW_SILENCE, ALAW_ENCODE_TABLE, ALAW_DECODE_TABLE)
    if name == "L16":
        if sample_rate not in SUPPORTED_RATES["L16"]:
            raise UnsupportedCodec(f"L16 is supported at 8000, 16000, 22050, 24000 or 48000 Hz, "
                                   f"not {sample_rate} Hz.")
        if l16_byteorder not in ("big", "little"):
            raise UnsupportedCodec(f"L16 byte order must be 'big' or 'little', not {l16_byteorder!r}.")
        return L16Codec(sample_rate, l16_byteorder)
    if name == "AMR-WB":
        raise UnsupportedCodec(AMR_WB_REFUSAL)
    raise UnsupportedCodec(f"codec {encoding!r} is not supported; use PCMU, PCMA, G722, OPUS or L16.")
