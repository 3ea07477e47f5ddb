"""The pacer: one frame per frame period, on absolute deadlines.

Frame k of a run is due to *play* at t0 + k * frame and is sent `lead` earlier, at
t0 + k * frame - lead. Deadlines are computed from t0, never by adding up sleeps, so the pacer
does not drift however the sleeps err. The first lead/frame frames of a run are due before t0
and go out at once: that is the margin Telnyx's playout buffer keeps against network jitter.

Stall: if a frame is a whole frame past its play time (we stalled longer than the lead, be it
the pacer's own or one its driver keeps: outside_lead_seconds), the missed slots are counted as
skipped and a new run starts now. The missed frames are not sent to catch up (the sources just
resume), so a stall never turns into a burst that would pile latency onto the call; only the
lead is rebuilt. Behind by less, the pacer catches up: the frames due go out back to back.

Idle: when produce() returns False (nothing plays, or no socket), the run is over: run_pacer
waits on `wake` without sending anything and restarts the clock when woken (an event loop
driving a Pacer itself does the same with restart()).
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
    """Counters of one pacer. Written by the thread that fires it only; other threads read them."""

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
    Runs on the calling thread. `late_after` defaults to a quarter frame.
    """
    pacer = Pacer(produce, frame_seconds=frame_seconds, lead_seconds=lead_seconds, stats=stats,
                  late_after=late_after)
    return drive_pacer(pacer, stop=stop, wake=wake, clock=clock, sleep=sleep, idle_poll_seconds=idle_poll_seconds)


def drive_pacer(pacer: Pacer, *, stop: threading.Event, wake: threading.Event,
                clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                idle_poll_seconds: float = IDLE_POLL_SECONDS) -> PacerStats:
    """run_pacer's loop, for a pacer built elsewhere."""
    pacer.restart(clock())
    while not stop.is_set():
        deadline = pacer.next_deadline
        now = clock()
        if now < deadline:
            sleep(deadline - now)
            if stop.is_set():
                break
            now = clock()
        if not pacer.fire(now):
            wake.wait(idle_poll_seconds)
            wake.clear()
            pacer.restart(clock())
    return pacer.stats


class Pacer:
    """The pacing rules, for a loop that owns the waiting: fire(now) once now >= next_deadline.

    run_pacer drives it from a thread of its own; an event loop can drive it between socket
    events instead (streams.clock), so the frames go out without a thread hand-off.
    """

    def __init__(self, produce: Callable[[], bool], *, frame_seconds: float = FRAME_MS / 1000,
                 lead_seconds: float = DEFAULT_LEAD_SECONDS, stats: PacerStats | None = None,
                 late_after: float | None = None, outside_lead_seconds: float = 0.0) -> None:
        """`outside_lead_seconds`: a lead the driver keeps itself, on top of `lead_seconds` (the
        media clock bursts it per call, as calls start at different times). Frames then play
        that much later than the pacer's own play times, so the stall rule waits that much
        longer too."""
        if frame_seconds <= 0 or lead_seconds < 0 or outside_lead_seconds < 0:
            raise ValueError("frame_seconds must be positive and the leads not negative")
        self._produce = produce
        self.frame_seconds = frame_seconds
        self.lead_seconds = lead_seconds
        self.outside_lead_seconds = outside_lead_seconds
        self.now = 0.0  # what fire() was called with, for produce() to read
        self.stats = stats if stats is not None else PacerStats()
        self.tolerance = frame_seconds / 4 if late_after is None else late_after
        self._t0 = 0.0
        self._k = 0

    def restart(self, now: float) -> None:
        """Begin a run at `now`: its first lead/frame frames are due at once."""
        self._t0, self._k = now, 0

    @property
    def next_deadline(self) -> float:
        return self._t0 + self._k * self.frame_seconds - self.lead_seconds

    @property
    def first_of_run(self) -> bool:
        """Read in produce(): this frame begins a run (after restart() or a resync)."""
        return self._k == 0

    @property
    def due_after(self) -> int:
        """Read in produce(): how many more frames were already due when fire() was called."""
        return max(0, int((self.now - self.next_deadline) // self.frame_seconds))

    def fire(self, now: float) -> bool:
        """Produce the frame due by `now`; False when produce() had nothing (the run is over).

        After False the caller waits for activity and calls restart(). produce() runs before
        the frame is counted, so next_deadline, first_of_run and due_after are still its own.
        """
        frame_seconds, stats = self.frame_seconds, self.stats
        self.now = now
        # When this frame plays, as far as the pacer knows: a driver's own lead comes on top.
        play_at = self._t0 + self._k * frame_seconds
        # Frames due before the run began (the lead) are on time when sent at its start.
        lateness = max(0.0, now - max(play_at - self.lead_seconds, self._t0))
        if now - play_at - self.outside_lead_seconds >= frame_seconds:
            # Stalled a whole frame past this frame's play time, the driver's lead included:
            # Telnyx has run out of our audio. Give up the missed slots and start a new run now,
            # lead included.
            missed = int((now - play_at) // frame_seconds)
            stats.skipped += missed
            stats.resyncs += 1
            logger.debug("pacer stalled %.3f s, skipped %d frame slots", now - play_at, missed)
            self._t0, self._k = now, 0
        if not self._produce():
            stats.idles += 1
            return False
        stats.lateness.append(lateness)
        stats.sent += 1
        if lateness > self.tolerance:
            stats.late += 1
        if lateness > stats.max_lateness:
            stats.max_lateness = lateness
        self._k += 1
        return True
