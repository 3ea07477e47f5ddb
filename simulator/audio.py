"""What the simulated caller says: silence, a tone, speech-like noise with talk spurts, or a WAV.

A CallerAudio renders once per sample rate (cached), so hundreds of calls that share one
instance share one buffer. Everything synthetic is seeded: the same instance always says the
same thing.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import soundfile as sf

FloatArray = npt.NDArray[np.float32]
Int16Array = npt.NDArray[np.int16]


def db_to_amplitude(dbfs: float) -> float:
    return float(10.0 ** (dbfs / 20.0))


def to_pcm16(x: npt.NDArray[np.floating]) -> Int16Array:
    return np.clip(np.rint(x * 32768.0), -32768, 32767).astype(np.int16)


def resample(x: FloatArray, rate_in: int, rate_out: int) -> FloatArray:
    """Linear interpolation: good enough for a test caller, no extra dependency."""
    if rate_in == rate_out or len(x) == 0:
        return x.astype(np.float32, copy=False)
    n_out = round(len(x) * rate_out / rate_in)
    positions = np.arange(n_out) * (rate_in / rate_out)
    return np.interp(positions, np.arange(len(x)), x).astype(np.float32)


@dataclass(eq=False)
class CallerAudio:
    """A description of caller audio; `render(rate)` gives float32 mono in [-1, 1].

    An empty render means silence for the whole call. `loop` repeats the clip; otherwise the
    caller falls silent after it.
    """

    kind: str
    loop: bool = True
    params: dict[str, Any] = field(default_factory=dict)
    _cache: dict[int, FloatArray] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # guards _cache

    @classmethod
    def silence(cls) -> CallerAudio:
        return cls("silence")

    @classmethod
    def tone(cls, frequency_hz: float = 440.0, level_dbfs: float = -12.0, duration_s: float = 1.0) -> CallerAudio:
        """A continuous sine; duration_s is the loop period (whole cycles keep the seam clean)."""
        return cls("tone", params={"frequency_hz": frequency_hz, "level_dbfs": level_dbfs, "duration_s": duration_s})

    @classmethod
    def speech_like(cls, *, seed: int = 1, talk_s: float = 1.6, pause_s: float = 1.4, level_dbfs: float = -14.0,
                    cycles: int = 4) -> CallerAudio:
        """Talk spurts of syllable-modulated, voice-band noise separated by pauses (loops)."""
        return cls("speech", params={"seed": seed, "talk_s": talk_s, "pause_s": pause_s,
                                     "level_dbfs": level_dbfs, "cycles": cycles})

    @classmethod
    def from_wav(cls, source: str | Path | bytes, *, loop: bool = False) -> CallerAudio:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
        return cls("wav", loop=loop, params={"data": data})

    @classmethod
    def from_pcm(cls, samples: npt.NDArray[np.floating], sample_rate: int, *, loop: bool = False) -> CallerAudio:
        return cls("pcm", loop=loop, params={"samples": np.asarray(samples, dtype=np.float32),
                                             "sample_rate": sample_rate})

    def render(self, sample_rate: int) -> FloatArray:
        with self._lock:
            cached = self._cache.get(sample_rate)
            if cached is None:
                cached = self._render(sample_rate)
                cached.setflags(write=False)
                self._cache[sample_rate] = cached
            return cached

    def _render(self, rate: int) -> FloatArray:
        p = self.params
        if self.kind == "silence":
            return np.zeros(0, dtype=np.float32)
        if self.kind == "tone":
            freq = float(p["frequency_hz"])
            cycles = max(1, round(freq * float(p["duration_s"])))
            n = round(cycles * rate / freq)
            t = np.arange(n) / rate
            amp = db_to_amplitude(float(p["level_dbfs"]))
            return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)
        if self.kind == "speech":
            return _speech_like(rate, **p)
        if self.kind == "wav":
            data, file_rate = sf.read(io.BytesIO(p["data"]), dtype="float32", always_2d=True)
            return resample(data.mean(axis=1).astype(np.float32), int(file_rate), rate)
        if self.kind == "pcm":
            return resample(p["samples"], int(p["sample_rate"]), rate)
        raise ValueError(f"unknown caller audio kind {self.kind!r}")


def _speech_like(rate: int, *, seed: int, talk_s: float, pause_s: float, level_dbfs: float,
                 cycles: int) -> FloatArray:
    rng = np.random.default_rng(seed)
    talk_n, pause_n = round(talk_s * rate), round(pause_s * rate)
    out = np.zeros(cycles * (talk_n + pause_n), dtype=np.float32)
    spectrum_len = talk_n // 2 + 1
    freqs = np.fft.rfftfreq(talk_n, 1 / rate)
    # Voice-band emphasis: energy between ~200 Hz and ~3 kHz, falling above.
    shape = np.where(freqs < 200, 0.1, 1.0) / (1.0 + (freqs / 1500.0) ** 2)
    t = np.arange(talk_n) / rate
    for c in range(cycles):
        spectrum = (rng.standard_normal(spectrum_len) + 1j * rng.standard_normal(spectrum_len)) * shape
        noise = np.fft.irfft(spectrum, n=talk_n)
        # Add a voiced buzz with a wandering pitch so it reads as speech on a spectrogram.
        pitch = 120 + 30 * np.sin(2 * np.pi * 0.7 * t + c)
        buzz = np.sign(np.sin(2 * np.pi * np.cumsum(pitch) / rate)) * 0.3
        syllables = 0.5 * (1 - np.cos(2 * np.pi * 4.0 * t)) * (0.6 + 0.4 * rng.random())
        spurt = (noise / (np.max(np.abs(noise)) + 1e-9) + buzz) * syllables
        edge = min(len(spurt) // 2, round(0.02 * rate))
        if edge:
            ramp = np.linspace(0.0, 1.0, edge)
            spurt[:edge] *= ramp
            spurt[-edge:] *= ramp[::-1]
        start = c * (talk_n + pause_n)
        out[start:start + talk_n] = spurt
    peak = np.max(np.abs(out))
    if peak > 0:
        out *= db_to_amplitude(level_dbfs) / peak
    return out


def wav_bytes(pcm: Int16Array, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, pcm, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()
