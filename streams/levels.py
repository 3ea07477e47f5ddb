"""A call's live levels for GET /streams/<id>: the caller's and ours, RMS dBFS over the last WINDOW_S.

The media path only remembers (a deque append); the measuring is done when a view asks, on the
request thread. The caller's audio is kept as it arrived (decoding it per frame on the loop
would cost what the clock's batching saves); ours as the level the framer measures for a whole
tick's block at once, on one tick in SENT_EVERY_TICKS (a meter needs no more, and 500 calls'
appends every tick cost the clock half a millisecond). Only what is younger than WINDOW_S
counts, so a silent or ended stream reads as FLOOR_DBFS rather than as its last loud frame.
"""

from __future__ import annotations

import math
from collections import deque

import numpy as np

from mixer.codecs import Codec
from mixer.ducking import rms_dbfs

WINDOW_S = 0.3  # what is older than this is not "now"
FRAMES = 15  # caller frames kept: WINDOW_S of 20 ms frames
SENT_EVERY_TICKS = 5  # our level is measured on one tick in this many (every 100 ms at 20 ms)
FLOOR_DBFS = -96.0  # reported for silence or no audio (16-bit's floor): a number, always


def _floor(level: float) -> float:
    return round(max(level, FLOOR_DBFS), 1)


class CallerMeter:
    """The caller's last frames, raw. One writer (the socket's thread); readers copy."""

    def __init__(self) -> None:
        self._frames: deque[tuple[float, Codec, bytes]] = deque(maxlen=FRAMES)

    def add(self, at: float, codec: Codec, payload: bytes) -> None:
        self._frames.append((at, codec, payload))

    def dbfs(self, now: float) -> float:
        recent = [(codec, payload) for at, codec, payload in list(self._frames) if now - at <= WINDOW_S]
        if not recent:
            return FLOOR_DBFS
        pcm = np.concatenate([codec.decode(payload) for codec, payload in recent])
        return _floor(rms_dbfs(pcm))


class SentMeter:
    """The levels of our last frames, as the framer measured them. One writer (the clock's thread)."""

    def __init__(self) -> None:
        self._frames: deque[tuple[float, float]] = deque(maxlen=FRAMES)

    def add(self, at: float, level_dbfs: float) -> None:
        self._frames.append((at, level_dbfs))

    def dbfs(self, now: float) -> float:
        recent = [level for at, level in list(self._frames) if now - at <= WINDOW_S]
        if not recent:
            return FLOOR_DBFS
        mean = sum(10.0 ** (level / 10.0) for level in recent) / len(recent)  # silence: -inf dB, zero power
        return _floor(10.0 * math.log10(mean)) if mean > 0 else FLOOR_DBFS
