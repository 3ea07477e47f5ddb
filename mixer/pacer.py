"""The pacer: one thread per call that sends one frame per frame period, on absolute deadlines.

Frame k of a run is due to *play* at t0 + k * frame and is sent `lead` earlier, at
t0 + k * frame - lead. Deadlines are computed from t0, never by adding up sleeps, so the pacer
does not drift however the sleeps err. The first lead/frame frames of a run are due before t0
and go out at once: that is the margin Telnyx's playout buffer keeps against network jitter.

Stall: if a frame is a whole frame past its play time (we stalled longer than the lead), the
missed slots are counted as skipped and a new run starts now. The missed frames are not sent
to catch up (the sources just resume), so a stall never turns into a burst that would pile
latency onto the call; only the lead is rebuilt.

Idle: when produce() returns False (nothing plays, or no socket), the pacer waits on `wake`
without sending anything, and restarts its clock when woken.
"""

from __future__ import annotations

import array
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mixer.geometry import FRAME_MS

logger = logging.getLogger(__name__)

DEFAULT_LEAD_SECONDS = 0.06
IDLE_POLL_SECONDS = 1.0  # an idle pacer rechecks `stop` this often even if nobody sets `wake`


@dataclass
class PacerStats:
    """Counters of one pacer. Written by the pacer thread only; other threads read them."""

    sent: int = 0            # frames produce() sent
    late: int = 0            # frames sent more than `late_after` past their deadline
    skipped: int = 0         # frame slots given up after a stall
    resyncs: int = 0         # clock restarts after a stall
    idles: int = 0           # times the pacer went idle
    max_lateness: float = 0.0
    # Seconds past the deadline, one per frame sent (append-only, compact doubles).
    lateness: array.array = field(default_factory=lambda: array.array("d"))


def run_pacer(produce: Callable[[], bool], *, frame_seconds: float = FRAME_MS / 1000,
              lead_seconds: float = DEFAULT_LEAD_SECONDS, stop: threading.Event, wake: threading.Event,
              clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
              stats: PacerStats | None = None, late_after: float | None = None,
              idle_poll_seconds: float = IDLE_POLL_SECONDS) -> PacerStats:
    """Call produce() once per frame until `stop` is set; return the stats.

    `produce` sends one frame and returns True, or returns False when there is nothing to send.
    Run it in a thread the caller names (the call id belongs in the name). `late_after` defaults to
    a quarter frame.
    """
    if frame_seconds <= 0 or lead_seconds < 0:
        raise ValueError("frame_seconds must be positive and lead_seconds not negative")
    stats = stats if stats is not None else PacerStats()
    tolerance = frame_seconds / 4 if late_after is None else late_after
    t0 = clock()
    k = 0
    while not stop.is_set():
        play_at = t0 + k * frame_seconds
        deadline = play_at - lead_seconds
        now = clock()
        if now < deadline:
            sleep(deadline - now)
            if stop.is_set():
                break
            now = clock()
        # Frames due before the run began (the lead) are on time when sent at its start.
        lateness = max(0.0, now - max(deadline, t0))
        if now - play_at >= frame_seconds:
            # Stalled a whole frame past this frame's play time: Telnyx has run out of our audio.
            # Give up the missed slots and start a new run now, lead included.
            missed = int((now - play_at) // frame_seconds)
            stats.skipped += missed
            stats.resyncs += 1
            logger.debug("pacer stalled %.3f s, skipped %d frame slots", now - play_at, missed)
            t0, k = now, 0
        if not produce():
            stats.idles += 1
            wake.wait(idle_poll_seconds)
            wake.clear()
            t0, k = clock(), 0
            continue
        stats.lateness.append(lateness)
        stats.sent += 1
        if lateness > tolerance:
            stats.late += 1
        if lateness > stats.max_lateness:
            stats.max_lateness = lateness
        k += 1
    return stats
