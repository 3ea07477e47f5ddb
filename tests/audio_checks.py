"""Analysis of what the simulated caller heard: levels, frequency, clicks, silence."""

from __future__ import annotations

import numpy as np

from mixer.codecs import ulaw_decode, ulaw_encode


def to_float(pcm: np.ndarray) -> np.ndarray:
    return pcm.astype(np.float64) / 32768.0


def peak_dbfs(pcm: np.ndarray) -> float:
    peak = float(np.max(np.abs(to_float(pcm)))) if len(pcm) else 0.0
    return 20 * np.log10(peak) if peak > 0 else -np.inf


def sine_peak_dbfs(pcm: np.ndarray) -> float:
    """Peak level of a steady sine from its RMS (robust to G.711 quantisation of single samples)."""
    rms = float(np.sqrt(np.mean(to_float(pcm) ** 2)))
    return 20 * np.log10(rms * np.sqrt(2)) if rms > 0 else -np.inf


def dominant_hz(pcm: np.ndarray, rate: int) -> float:
    x = to_float(pcm) * np.hanning(len(pcm))
    spectrum = np.abs(np.fft.rfft(x, n=8 * len(x)))
    return float(np.argmax(spectrum) * rate / (8 * len(x)))


def max_jump(pcm: np.ndarray) -> int:
    """Largest sample-to-sample step: a click shows up as a step far above the signal's own."""
    return int(np.max(np.abs(np.diff(pcm.astype(np.int32))))) if len(pcm) > 1 else 0


def non_silent(pcm: np.ndarray, threshold: int = 64) -> np.ndarray:
    """The span from the first to the last sample above `threshold`."""
    loud = np.flatnonzero(np.abs(pcm.astype(np.int32)) > threshold)
    return pcm[loud[0]: loud[-1] + 1] if len(loud) else pcm[:0]


def assert_arrived_exactly(call, source: np.ndarray) -> None:
    """`source` (int16, first sample non-zero) arrived as its mu-law round trip, then nothing."""
    # What arrived, in order; the playout clock is not involved, so load cannot shift it.
    arrived = ulaw_decode(b"".join(payload for _, payload in call.received))
    expected = ulaw_decode(ulaw_encode(source))
    start = int(np.flatnonzero(arrived != 0)[0])
    assert np.array_equal(arrived[start:start + len(expected)], expected), call.call_control_id
    assert not arrived[start + len(expected):].any()  # then nothing: the pacer sends no padding
