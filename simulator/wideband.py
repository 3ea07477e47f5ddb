"""G.722 and OPUS as the simulated network speaks them: not the server's implementation.

The server codes both through FFmpeg (PyAV: FFmpeg's g722, libopus). The simulator decodes what
it hears with others, so that a mistake in how the server drives its codecs cannot cancel out:
- G.722: Sippy Software's libg722 (the `g722` package; Bellcore/CMU/Steve Underwood lineage,
  passes the ITU test vectors), both ways.
- OPUS: what the app sends is decoded by FFmpeg's own Opus decoder (`opus`, written from RFC
  6716 independently of libopus), at 48 kHz, and decimated to the call's rate by a windowed-sinc
  filter here (2.5 ms of delay, and no output held back: a streaming soxr keeps ~16 ms until
  flushed, which would cut the end of every sound the simulator hears). The caller's audio is
  encoded with libopus (through PyAV, VOIP mode, 20 ms packets, one per media message): no other
  Opus encoder is in reach (FFmpeg's native one is CELT-only, 48 kHz, and marked experimental).

AMR-WB is accepted by the REST fake, but its streams carry no media either way (the app's is
counted as ignored): no AMR-WB encoder is available here either.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

Int16Array = npt.NDArray[np.int16]

CODECS = ("G722", "OPUS")
G722_RATE = 16000
OPUS_DECODE_RATE = 48000
OPUS_PCM_RATES = (8000, 12000, 16000, 24000, 48000)
OPUS_CALLER_BITRATE = {8000: 16000, 12000: 20000, 16000: 32000, 24000: 40000, 48000: 64000}


class DecodeError(ValueError):
    """A payload the codec cannot decode."""


def audio_rate(encoding: str, nominal_rate: int) -> int:
    """The rate of the PCM behind a stream of `encoding` at Telnyx's nominal rate."""
    if encoding == "G722":
        return G722_RATE  # RFC 3551 4.5.2: the RTP clock says 8000, the audio is 16 kHz
    if encoding == "OPUS" and nominal_rate not in OPUS_PCM_RATES:
        return OPUS_DECODE_RATE
    return nominal_rate


class Encoder(Protocol):
    def encode(self, pcm: Int16Array) -> bytes: ...


class Decoder(Protocol):
    def decode(self, payload: bytes) -> Int16Array: ...


class G722Encoder:
    def __init__(self) -> None:
        import G722

        self._state = G722.G722(G722_RATE, 64000)

    def encode(self, pcm: Int16Array) -> bytes:
        return bytes(self._state.encode(np.ascontiguousarray(pcm, dtype=np.int16)))


class G722Decoder:
    def __init__(self) -> None:
        import G722

        self._state = G722.G722(G722_RATE, 64000)

    def decode(self, payload: bytes) -> Int16Array:
        if not payload:
            return np.zeros(0, dtype=np.int16)
        return np.frombuffer(self._state.decode(payload), dtype=np.int16).copy()


class OpusEncoder:
    """libopus through PyAV: one packet per frame of `frame_ms`."""

    def __init__(self, rate: int, frame_ms: int = 20) -> None:
        import av

        self.rate = rate
        ctx: Any = av.CodecContext.create("libopus", "w")
        ctx.sample_rate, ctx.layout, ctx.format = rate, "mono", "s16"
        ctx.bit_rate = OPUS_CALLER_BITRATE[rate]
        ctx.options = {"application": "voip", "frame_duration": str(frame_ms)}
        ctx.open()
        self._ctx = ctx
        self._pts = 0

    def encode(self, pcm: Int16Array) -> bytes:
        from av.audio.frame import AudioFrame

        frame = AudioFrame.from_ndarray(np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1),
                                        format="s16", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self._pts
        self._pts += len(pcm)
        return b"".join(bytes(p) for p in self._ctx.encode(frame))


class Decimator:
    """48 kHz -> 48 kHz / ratio, streaming: a 241-tap Blackman-windowed sinc low-pass at 90 % of
    the output's Nyquist frequency (over 70 dB down past it), every ratio-th output kept."""

    TAPS = 241

    def __init__(self, ratio: int) -> None:
        n = np.arange(self.TAPS) - (self.TAPS - 1) / 2
        cutoff = 0.45 / ratio  # cycles per input sample
        h = 2 * cutoff * np.sinc(2 * cutoff * n) * np.blackman(self.TAPS)
        self._h = (h / h.sum())[::-1].copy()
        self._ratio = ratio
        self._history = np.zeros(self.TAPS - 1)
        self._phase = 0  # index of the next kept output within the next chunk

    def __call__(self, x: npt.NDArray[np.floating]) -> npt.NDArray[np.float64]:
        buf = np.concatenate([self._history, x])
        windows = np.lib.stride_tricks.sliding_window_view(buf, self.TAPS)
        out: npt.NDArray[np.float64] = windows[self._phase::self._ratio] @ self._h
        self._phase = (self._phase - len(x)) % self._ratio
        self._history = buf[len(buf) - (self.TAPS - 1):]
        return out


class OpusDecoder:
    """FFmpeg's native Opus decoder (not libopus), 48 kHz, then decimated to `rate`."""

    def __init__(self, rate: int) -> None:
        import av

        if OPUS_DECODE_RATE % rate:
            raise ValueError(f"the simulator plays OPUS at a divisor of 48000 Hz, not {rate} Hz")
        ctx: Any = av.CodecContext.create("opus", "r")
        ctx.sample_rate, ctx.layout = OPUS_DECODE_RATE, "mono"
        ctx.open()
        self._ctx = ctx
        ratio = OPUS_DECODE_RATE // rate
        self._decimate = Decimator(ratio) if ratio > 1 else None

    def decode(self, payload: bytes) -> Int16Array:
        import av
        import av.error

        try:
            frames = self._ctx.decode(av.Packet(payload))
        except (av.error.FFmpegError, ValueError) as exc:
            raise DecodeError(f"OPUS packet of {len(payload)} bytes does not decode: {exc}") from exc
        parts = [np.asarray(f.to_ndarray(), dtype=np.float32).reshape(-1) if f.format.name.startswith("flt")
                 else f.to_ndarray().reshape(-1).astype(np.float32) / 32768.0 for f in frames]
        x: npt.NDArray[np.floating] = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        if self._decimate is not None:
            x = self._decimate(x)
        return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)


def new_encoder(encoding: str, rate: int) -> Encoder:
    """A fresh encoder for one direction of one stream; `rate` is the PCM rate (audio_rate)."""
    if encoding == "G722":
        return G722Encoder()
    if encoding == "OPUS":
        return OpusEncoder(rate)
    raise ValueError(f"the simulator cannot encode {encoding}")


def new_decoder(encoding: str, rate: int) -> Decoder:
    if encoding == "G722":
        return G722Decoder()
    if encoding == "OPUS":
        return OpusDecoder(rate)
    raise ValueError(f"the simulator cannot decode {encoding}")


def encode_frames(pcm: Int16Array, encoding: str, rate: int, frame_samples: int) -> list[bytes]:
    """A whole clip as one stream, one payload per frame (the last one padded with silence)."""
    encoder = new_encoder(encoding, rate)
    frames = -(-len(pcm) // frame_samples)
    padded = np.zeros(frames * frame_samples, dtype=np.int16)
    padded[:len(pcm)] = pcm
    return [encoder.encode(padded[i * frame_samples:(i + 1) * frame_samples]) for i in range(frames)]


_SILK_MS = (10.0, 20.0, 40.0, 60.0)
_CELT_MS = (2.5, 5.0, 10.0, 20.0)


def opus_packet_ms(packet: bytes) -> float:
    """Audio length of one Opus packet from its TOC byte (RFC 6716 3.1); DecodeError if malformed."""
    if not packet:
        raise DecodeError("an empty OPUS packet")
    config, code = packet[0] >> 3, packet[0] & 3
    if config < 12:
        frame_ms = _SILK_MS[config % 4]
    elif config < 16:
        frame_ms = 10.0 if config % 2 == 0 else 20.0
    else:
        frame_ms = _CELT_MS[config % 4]
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        if len(packet) < 2:
            raise DecodeError("an OPUS code 3 packet without its frame count")
        count = packet[1] & 0x3F
    if count == 0 or count * frame_ms > 120:
        raise DecodeError(f"an OPUS packet of {count} x {frame_ms} ms")
    return count * frame_ms


def payload_samples(encoding: str, payload: bytes, rate: int) -> int:
    """How many samples at `rate` (the PCM rate) one payload of `encoding` holds."""
    if encoding == "G722":
        return 2 * len(payload)  # 64 kbit/s: one byte per two 16 kHz samples
    if encoding == "OPUS":
        return round(opus_packet_ms(payload) * rate / 1000)
    raise ValueError(f"{encoding} is not a simulator wideband codec")
