"""Frame geometry: the one place that knows how long a frame is and how many samples it holds."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

FRAME_MS = 20
"""Telnyx accepts 20 ms to 30 s per media message; 20 ms is the RTP packetisation time."""


@dataclass(frozen=True)
class FrameGeometry:
    """Sample rate and frame length of one stream; everything else is derived from these two."""

    sample_rate: int
    frame_ms: int = FRAME_MS

    def __post_init__(self) -> None:
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be positive, got {self.sample_rate}")
        if self.frame_ms <= 0:
            raise ValueError(f"frame_ms must be positive, got {self.frame_ms}")
        if (self.sample_rate * self.frame_ms) % 1000:
            raise ValueError(f"{self.frame_ms} ms is not a whole number of samples at {self.sample_rate} Hz")

    @cached_property  # asked for every call on every media clock tick
    def samples_per_frame(self) -> int:
        return self.sample_rate * self.frame_ms // 1000

    @property
    def frame_seconds(self) -> float:
        return self.frame_ms / 1000

    def ms_to_samples(self, ms: float) -> int:
        """Whole samples in `ms` milliseconds at this rate (rounded to nearest, never negative)."""
        return max(0, round(ms * self.sample_rate / 1000))
