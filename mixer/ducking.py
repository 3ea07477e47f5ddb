"""Ducking: detect the caller speaking from inbound frames, and the gain that follows it.

The detector measures each inbound chunk's RMS level. Speech starts when a chunk reaches
`threshold_dbfs`; it ends only after `hold_ms` of chunks below `threshold_dbfs - hysteresis_db`,
so the gaps between words and a level hovering at the threshold do not make the music pump.
The envelope moves the ducked sources' gain linearly in dB: down to `depth_db` in `attack_ms`,
back to 0 dB in `release_ms`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class DuckingConfig:
    depth_db: float = -12.0       # gain applied to `duck` sources while the caller speaks
    threshold_dbfs: float = -35.0  # RMS level of an inbound chunk that counts as speech
    hysteresis_db: float = 6.0    # speech ends below threshold_dbfs - hysteresis_db ...
    attack_ms: int = 20           # time to go from 0 dB down to depth_db
    release_ms: int = 300         # time to come back from depth_db to 0 dB
    hold_ms: int = 200            # ... after this long below it

    def __post_init__(self) -> None:
        if self.depth_db > 0:
            raise ValueError(f"depth_db must be <= 0, got {self.depth_db}")
        if self.hysteresis_db < 0 or self.attack_ms < 0 or self.release_ms < 0 or self.hold_ms < 0:
            raise ValueError("hysteresis_db, attack_ms, release_ms and hold_ms must not be negative")


def rms_dbfs(pcm: np.ndarray) -> float:
    """RMS level of int16 samples in dBFS (full-scale square wave = 0 dBFS; silence = -inf)."""
    if len(pcm) == 0:
        return float("-inf")
    return levels_dbfs(np.asarray(pcm), [len(pcm)])[0]


_FULL_SCALE_DB = 20.0 * float(np.log10(32768.0))


def levels_dbfs(pcm: np.ndarray, lengths: Sequence[int]) -> list[float]:
    """rms_dbfs of each of the consecutive, non-empty chunks of int16 `pcm` of these lengths.

    One pass for many chunks: a media clock measures every call's inbound frames of a tick at once.
    """
    x = pcm.astype(np.float64)
    starts = np.zeros(len(lengths), dtype=np.intp)
    np.cumsum(lengths[:-1], out=starts[1:])
    mean_square = np.add.reduceat(x * x, starts) / np.asarray(lengths, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return (10.0 * np.log10(mean_square) - _FULL_SCALE_DB).tolist()


def row_levels_dbfs(block: np.ndarray) -> list[float]:
    """rms_dbfs of each row of a 2-D int16 block (rows of equal length), in one pass."""
    x = block.astype(np.float32)
    mean_square = np.einsum("ij,ij->i", x, x, dtype=np.float64) / block.shape[1]
    with np.errstate(divide="ignore"):
        return (10.0 * np.log10(mean_square) - _FULL_SCALE_DB).tolist()


class SpeechDetector:
    """Energy detector with hysteresis and hold. Not thread-safe: it belongs to the mixing thread."""

    def __init__(self, config: DuckingConfig, sample_rate: int) -> None:
        self._on_db = config.threshold_dbfs
        self._off_db = config.threshold_dbfs - config.hysteresis_db
        self._hold_samples = round(config.hold_ms * sample_rate / 1000)
        self._quiet_samples = 0
        self.speaking = False

    def feed_level(self, level_dbfs: float, n_samples: int) -> None:
        if level_dbfs >= self._on_db:
            self.speaking = True
            self._quiet_samples = 0
        elif level_dbfs < self._off_db:
            self._quiet_samples += n_samples
            if self._quiet_samples >= self._hold_samples:
                self.speaking = False
        # Between the two thresholds: keep the current state, and do not count towards the hold.


class DuckEnvelope:
    """The ducked sources' gain, one frame at a time. Not thread-safe: the Mixer's lock guards it."""

    def __init__(self, config: DuckingConfig, sample_rate: int, frame_samples: int) -> None:
        self._depth_db = config.depth_db
        attack = max(1.0, config.attack_ms * sample_rate / 1000)
        release = max(1.0, config.release_ms * sample_rate / 1000)
        self._down_step = -config.depth_db / attack
        self._up_step = -config.depth_db / release
        self._steps = np.arange(1, frame_samples + 1, dtype=np.float64)
        self.level_db = 0.0
        self.gain = 1.0  # 10 ** (level_db / 20), kept up to date: asked for every frame

    def advance(self, n: int, speaking: bool) -> float | np.ndarray:
        """Gain for the next `n` samples: a float while steady, a float32 ramp while moving."""
        target = self._depth_db if speaking else 0.0
        if self.level_db == target:
            return self.gain
        steps = self._steps[:n] if n <= len(self._steps) else np.arange(1, n + 1, dtype=np.float64)
        if target < self.level_db:
            db = np.maximum(self.level_db - self._down_step * steps, target)
        else:
            db = np.minimum(self.level_db + self._up_step * steps, target)
        self.level_db = float(db[-1])
        self.gain = float(10.0 ** (self.level_db / 20.0))
        return (10.0 ** (db / 20.0)).astype(np.float32)
