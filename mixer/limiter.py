"""A peak limiter that is transparent below its threshold.

While the limiter is at rest (0 dB of gain reduction) and a frame's peak is at or below the
threshold, the frame is returned untouched, bit for bit. Above it, the gain drops at once to
exactly what keeps every sample at the threshold (no overshoot, so the int16 conversion never
clips or wraps) and recovers at `release_db_per_second`, so the reduction does not chatter.

The envelope is "instant attack, linear-in-dB release": g[i] = min(r[i], g[i-1] + s) with
r the per-sample requirement. Unrolled, g[i] = i*s + min over k <= i of (r[k] - k*s), a running
minimum numpy computes without a Python loop.
"""

from __future__ import annotations

import numpy as np


class Limiter:
    """Per-stream limiter state. Not thread-safe: it belongs to the mixing thread."""

    def __init__(self, threshold_dbfs: float, sample_rate: int, *, release_db_per_second: float = 40.0) -> None:
        if threshold_dbfs > 0:
            raise ValueError(f"limiter threshold must be <= 0 dBFS, got {threshold_dbfs}")
        self.threshold_dbfs = float(threshold_dbfs)
        self.threshold = np.float32(10.0 ** (threshold_dbfs / 20.0))
        self._step_db = release_db_per_second / sample_rate
        self.reset()

    def reset(self) -> None:
        """Back to rest: the next sound starts without leftover gain reduction."""
        self.gain_db = 0.0  # current gain reduction (<= 0)
        # A frame whose peak is at most this passes untouched: the threshold at rest, -1 while
        # the gain recovers. Lets a caller with many frames skip the call for most of them.
        self.passes_below = float(self.threshold)

    def process(self, x: np.ndarray, peak: float | None = None) -> None:
        """Limit float32 `x` in place; `peak` is max |x| when the caller has it already."""
        n = len(x)
        if n == 0:
            return
        if peak is None:
            peak = max(float(x.max()), -float(x.min()))
        if peak <= self.passes_below:
            return
        i = np.arange(n, dtype=np.float64)
        magnitude = np.maximum(np.abs(x).astype(np.float64), float(self.threshold))
        required = self.threshold_dbfs - 20.0 * np.log10(magnitude)  # <= 0 dB
        ramp = i * self._step_db
        gain_db = np.minimum.accumulate(required - ramp) + ramp
        np.minimum(gain_db, self.gain_db + ramp + self._step_db, out=gain_db)
        np.minimum(gain_db, 0.0, out=gain_db)
        self.gain_db = float(gain_db[-1])
        self.passes_below = float(self.threshold) if self.gain_db >= 0.0 else -1.0
        x *= (10.0 ** (gain_db / 20.0)).astype(np.float32)
        # Rounding in the gain can leave a sample an ulp above the threshold; keep the promise.
        np.clip(x, -self.threshold, self.threshold, out=x)
