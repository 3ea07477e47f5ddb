"""Stateful wire codecs, through FFmpeg (PyAV): G.722 and OPUS.

Unlike G.711 and L16 these keep state from one frame to the next (G.722's ADPCM predictors and
QMF delay line; OPUS's whole encoder and decoder), so every call has its own instance per
direction, made fresh when a stream (re)starts, and no two calls are ever encoded as one block.

- G.722 (ITU-T G.722, 64 kbit/s): the audio is 16 kHz whatever the nominal rate says. RFC 3551
  §4.5.2 keeps G.722's RTP clock at 8000 "even though the actual sampling rate for G.722 audio
  is 16,000 Hz", so `media_format.sample_rate` 8000 or 16000 both mean 16 kHz PCM here: 320
  samples in, 160 bytes out per 20 ms. FFmpeg's `g722` encoder and decoder.
- OPUS (RFC 6716) at 8 or 16 kHz: one packet per frame (one per media message, as pipecat's
  Telnyx serializer found necessary), encoded by libopus in VOIP mode. FFmpeg's libopus decoder
  always gives 48 kHz, so decoded audio is resampled to the call's rate by FFmpeg's swresample,
  one resampler per decoder (its filter state carries over between packets). It holds back 1 ms;
  a streaming soxr would hold 16 ms, and the ducking detector would hear the caller a frame late.

A payload that does not decode raises CorruptPayload; the caller turns it into silence.
"""

from __future__ import annotations

import threading
from typing import Any

import av
import av.error
import numpy as np
from av.audio.frame import AudioFrame
from av.audio.resampler import AudioResampler

from mixer.errors import CorruptPayload, UnsupportedCodec

G722_AUDIO_RATE = 16000
G722_NOMINAL_RATES = (8000, 16000)
OPUS_RATES = (8000, 16000)
OPUS_DECODER_RATE = 48000  # what FFmpeg's libopus decoder outputs, whatever it is asked for
# Bit rates in the range libopus itself recommends for speech: narrowband 8-12 kbit/s, wideband
# 16-20 kbit/s give "good"; a little above that leaves room for the music and tones we mix in.
OPUS_BITRATE = {8000: 16000, 16000: 32000}
OPUS_FRAME_MS = (10, 20, 40, 60, 80, 100, 120)  # what libopus accepts for one packet


def _as_int16_row(pcm: np.ndarray) -> np.ndarray:
    arr = np.asarray(pcm)
    if arr.dtype != np.int16:
        raise TypeError(f"expected int16 samples, got {arr.dtype}")
    return np.ascontiguousarray(arr.reshape(1, -1))


class _AvCodec:
    """One direction's FFmpeg codec context; made on first use. Not shared between calls.

    `_lock` guards the two contexts: a session's encoder is used by the media clock only, and its
    decoder by the socket reader, but a reconnect's new reader may overlap the old one's last frame.
    """

    name: str
    sample_rate: int
    stateful = True
    bytes_per_sample = 0  # compressed: payload size says nothing about the number of samples

    _encoder_name: str
    _decoder_name: str
    _coded_rate: int  # the rate the FFmpeg contexts run at

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._encoder: Any = None
        self._decoder: Any = None
        self._pts = 0

    def _open_encoder(self) -> Any:
        ctx: Any = av.CodecContext.create(self._encoder_name, "w")
        ctx.sample_rate = self._coded_rate
        ctx.layout = "mono"
        ctx.format = "s16"
        self._configure_encoder(ctx)
        ctx.open()
        return ctx

    def _configure_encoder(self, ctx: Any) -> None:
        pass

    def _open_decoder(self) -> Any:
        ctx: Any = av.CodecContext.create(self._decoder_name, "r")
        ctx.sample_rate = self._coded_rate
        ctx.layout = "mono"
        ctx.open()
        return ctx

    def encode(self, pcm: np.ndarray) -> bytes:
        """int16 samples of one frame at `sample_rate` -> the payload of one media message."""
        row = _as_int16_row(pcm)
        with self._lock:
            if self._encoder is None:
                self._encoder = self._open_encoder()
            frame = AudioFrame.from_ndarray(row, format="s16", layout="mono")
            frame.sample_rate = self._coded_rate
            frame.pts = self._pts
            self._pts += row.shape[1]
            return b"".join(bytes(packet) for packet in self._encoder.encode(frame))

    def decode(self, payload: bytes) -> np.ndarray:
        """One media message's payload -> int16 samples at `sample_rate` (CorruptPayload if bad)."""
        if not payload:
            return np.zeros(0, dtype=np.int16)
        with self._lock:
            if self._decoder is None:
                self._decoder = self._open_decoder()
            try:
                frames = self._after_decode(self._decoder.decode(av.Packet(payload)))
            except (av.error.FFmpegError, ValueError) as exc:
                raise CorruptPayload(f"{self.name} payload of {len(payload)} bytes does not decode: {exc}") from exc
            pcm = [_mono_int16(frame.to_ndarray()) for frame in frames]
            return np.concatenate(pcm) if pcm else np.zeros(0, dtype=np.int16)

    def _after_decode(self, frames: list[Any]) -> list[Any]:
        return frames

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.sample_rate} Hz>"


def _mono_int16(samples: np.ndarray) -> np.ndarray:
    """A decoded frame's ndarray (s16 or flt, packed or planar, one channel) -> int16 1-D."""
    row = samples.reshape(-1)
    if row.dtype == np.int16:
        return row
    return np.clip(np.rint(row.astype(np.float32) * 32768.0), -32768, 32767).astype(np.int16)


class G722Codec(_AvCodec):
    """G.722 at 64 kbit/s: 16 kHz PCM both ways, 1 byte per 2 samples on the wire."""

    name = "G722"
    sample_rate = G722_AUDIO_RATE
    _encoder_name = _decoder_name = "g722"
    _coded_rate = G722_AUDIO_RATE


class OpusCodec(_AvCodec):
    """OPUS at 8 or 16 kHz, one libopus packet of `frame_ms` per media message."""

    name = "OPUS"
    _encoder_name = _decoder_name = "libopus"
    _coded_rate = 0  # set per instance

    def __init__(self, sample_rate: int, frame_ms: int) -> None:
        super().__init__()
        self.sample_rate = sample_rate
        self.frame_ms = frame_ms
        self._coded_rate = sample_rate
        self._resampler: AudioResampler | None = None

    def _configure_encoder(self, ctx: Any) -> None:
        ctx.bit_rate = OPUS_BITRATE[self.sample_rate]
        ctx.options = {"application": "voip", "frame_duration": str(self.frame_ms), "vbr": "constrained"}

    def _after_decode(self, frames: list[Any]) -> list[Any]:
        if self._resampler is None:
            self._resampler = AudioResampler(format="s16", layout="mono", rate=self.sample_rate)
        return [out for frame in frames for out in self._resampler.resample(frame)]


def make_wideband(name: str, sample_rate: int, frame_ms: int) -> G722Codec | OpusCodec:
    """A new, unshared G722 or OPUS codec; `sample_rate` is the nominal rate Telnyx names."""
    if name == "G722":
        if sample_rate not in G722_NOMINAL_RATES:
            raise UnsupportedCodec(f"G722 is sent at a nominal 8000 or 16000 Hz, not {sample_rate} Hz.")
        return G722Codec()
    if name == "OPUS":
        if sample_rate not in OPUS_RATES:
            raise UnsupportedCodec(f"OPUS is supported at 8000 or 16000 Hz, not {sample_rate} Hz.")
        if frame_ms not in OPUS_FRAME_MS:
            raise UnsupportedCodec(f"an OPUS packet cannot hold {frame_ms} ms; use 20, 40, 60, 80 or 100 ms.")
        return OpusCodec(sample_rate, frame_ms)
    raise UnsupportedCodec(f"codec {name!r} is not a wideband codec.")
