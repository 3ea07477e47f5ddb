"""What the caller heard: a call's playout timeline, shared by its streams (reconnects included).

The stream protocol (simulator.stream) queues what the app sends here as it arrives; tests and
the demo read the timeline back as PCM.
"""

from __future__ import annotations

import threading

import numpy as np

from simulator import g711
from simulator.audio import Int16Array


class Recorder:
    """What the caller heard, on a sample-exact playout timeline shared by a call's streams.

    Positions are sample counts from `origin` (the first `start`), so back-to-back chunks are
    contiguous to the sample and decode(encode(x)) of what the app sent comes back unchanged.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # guards everything below (loop thread writes, tests read)
        self.origin: float | None = None
        self.rate: int | None = None
        self.play_end = 0  # samples: where queued audio ends
        self._segments: list[tuple[int, Int16Array]] = []  # (start sample, pcm), playout order
        # Audible chunks still as the app sent them: (start sample, payload, encoding, L16 byte order).
        # They are decoded together when the timeline is next read, not each on arrival.
        self._undecoded: list[tuple[int, bytes, str, str]] = []
        self.cut: int | None = None  # samples: playout ended here (hangup)

    def begin(self, now: float, rate: int) -> None:
        with self._lock:
            if self.origin is None:
                self.origin, self.rate = now, rate

    def position(self, now: float) -> int:
        assert self.origin is not None and self.rate is not None
        return int((now - self.origin) * self.rate)

    def seconds(self, samples: int) -> float:
        assert self.origin is not None and self.rate is not None
        return self.origin + samples / self.rate

    @property
    def segments(self) -> list[tuple[int, Int16Array]]:
        """(start sample, pcm) of every chunk still on the timeline."""
        with self._lock:
            self._decode_pending()
            return list(self._segments)

    def queue(self, now: float, pcm: Int16Array, audible: bool) -> int:
        """Schedule pcm to start when the previous chunk ends or now; returns the end sample."""
        with self._lock:
            start = max(self.play_end, self.position(now))
            self.play_end = start + len(pcm)
            if audible:
                self._decode_pending()  # they play first
                self._segments.append((start, pcm))
            return self.play_end

    def queue_encoded(self, now: float, payload: bytes, encoding: str, l16_byteorder: str, samples: int,
                      audible: bool) -> int:
        """queue() for a wire payload of `samples` samples, decoded only when the timeline is read."""
        with self._lock:
            start = max(self.play_end, self.position(now))
            self.play_end = start + samples
            if audible:
                self._undecoded.append((start, payload, encoding, l16_byteorder))
            return self.play_end

    def _decode_pending(self) -> None:
        """Move undecoded chunks onto the timeline; runs of one codec decode as one array. Lock held."""
        pending, self._undecoded = self._undecoded, []
        i = 0
        while i < len(pending):
            encoding, byteorder = pending[i][2], pending[i][3]
            j = i + 1
            while j < len(pending) and pending[j][2] == encoding and pending[j][3] == byteorder:
                j += 1
            pcm = g711.decode(b"".join(chunk[1] for chunk in pending[i:j]), encoding, l16_byteorder=byteorder)
            bps, offset = g711.bytes_per_sample(encoding), 0
            for start, payload, _, _ in pending[i:j]:
                n = len(payload) // bps
                self._segments.append((start, pcm[offset:offset + n]))
                offset += n
            i = j

    def truncate(self, now: float) -> None:
        """Drop everything not yet played (clear, socket loss, hangup)."""
        with self._lock:
            if self.origin is None:
                return
            pos = self.position(now)
            self._decode_pending()
            kept: list[tuple[int, Int16Array]] = []
            for start, pcm in self._segments:
                if start >= pos:
                    continue
                kept.append((start, pcm[: pos - start] if start + len(pcm) > pos else pcm))
            self._segments = kept
            self.play_end = min(self.play_end, pos)

    def end(self, now: float) -> None:
        self.truncate(now)
        with self._lock:
            if self.origin is not None and self.cut is None:
                self.cut = self.position(now)

    def render(self, now: float, start: int = 0, length: int | None = None) -> Int16Array:
        """Heard audio from sample `start`: played so far (or up to the cut), gaps as silence."""
        with self._lock:
            if self.origin is None or self.rate is None:
                return np.zeros(0, dtype=np.int16)
            limit = self.cut if self.cut is not None else self.position(now)
            stop = limit if length is None else min(limit, start + length)
            out = np.zeros(max(0, (start + length if length is not None else stop) - start), dtype=np.int16)
            self._decode_pending()
            for seg_start, pcm in self._segments:
                a, b = max(seg_start, start), min(seg_start + len(pcm), stop)
                if a < b:
                    out[a - start:b - start] = pcm[a - seg_start:b - seg_start]
            return out if length is not None else out[: max(0, stop - start)]
