"""Finishing many calls' frames together: limiter, int16 conversion and encoding in one pass.

On a 160-sample frame, numpy's fixed cost per operation (about a microsecond) is most of the
work, and a call's frame takes a dozen operations. A media clock that serves hundreds of calls
therefore has each call mix into one row of a block (Mixer.mix_unscaled_into, then the block
times its column of gains) and finishes the block at once: one peak per row for the limiters
(which act only on rows that need them), one int16 conversion, one table lookup per codec. Row
by row, the result is exactly what Mixer.mix and Codec.encode give for that call alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mixer.codecs import float_to_pcm16
from mixer.mixer import Mixer


class FrameBlock:
    """A reusable float32 block of frames of one size; grows to the most rows ever asked for."""

    def __init__(self, samples: int) -> None:
        self.samples = samples
        self._buf = np.zeros((0, samples), dtype=np.float32)

    def rows(self, count: int) -> np.ndarray:
        """`count` rows to mix into (their old contents are garbage: a row a call mixes into is
        overwritten, and only those rows are finished)."""
        if count > len(self._buf):
            self._buf = np.zeros((max(count, 2 * len(self._buf)), self.samples), dtype=np.float32)
        return self._buf[:count]


def finish_frames(block: np.ndarray, mixers: Sequence[Mixer], gains: Sequence[float] | None = None) -> np.ndarray:
    """Scale row i by gains[i], limit it with mixers[i]'s limiter, in place, and return the block
    as int16. Rows are mixed frames as Mixer.mix_into leaves them, or as mix_unscaled_into does
    with `gains` the gains it returned."""
    if gains is not None:
        block *= np.array(gains, dtype=np.float32)[:, None]
    peaks = np.abs(block).max(axis=1).tolist()
    for i, (mixer, peak) in enumerate(zip(mixers, peaks, strict=True)):
        # Else the limiter would leave the row as it is. `not <=`: a NaN peak is processed, as by mix().
        if not peak <= mixer.limiter.passes_below:
            mixer.limiter.process(block[i], peak)
    return float_to_pcm16(block)
