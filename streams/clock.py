"""One media clock for every call of the process.

A pacer thread per call costs a thread wake-up and a GIL hand-off per call every 20 ms; at a
hundred calls that, not the mixing, is where the CPU goes. Here one pacer (mixer.pacer.Pacer,
absolute deadlines, stall resync, idle wait) ticks on a shared 20 ms grid and, at each tick, asks
every streaming call for the frames it owes: one per tick, or its lead's worth at once when it
starts playing after being idle, so each call still runs OUTBOUND_LEAD_MS ahead of real time.
Ticks late by less than the lead and a frame are caught up back to back (past the lead alone,
Telnyx has had a gap of under a frame); after a longer stall every call sends its lead again.

Who runs the ticks: the front door's event loop when `python app.py` serves (drive_from: the
loop polls the clock between socket events, so inbound frames, the mixing and our sends share
one thread and never wait for the GIL behind each other); otherwise a thread of the clock's own,
started with the first call (the WSGI app alone, in tests).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from mixer.pacer import Pacer, PacerStats, drive_pacer
from streams.framer import Framed, Framer

logger = logging.getLogger(__name__)


class MediaClock:
    def __init__(self, *, frame_seconds: float, lead_seconds: float,
                 on_tick: Callable[[PacerStats], None] | None = None) -> None:
        self.frame_seconds = frame_seconds
        # Frames sent at once when a call starts playing: the lead plus the frame due now.
        self.burst = 1 + round(lead_seconds / frame_seconds)
        self.stats = PacerStats()
        self.frames = 0  # frames produced, all calls together; written by the ticking thread only
        self._on_tick = on_tick
        # The lead is the calls' (the burst), so the pacer's stall rule counts it: a tick late by
        # less than lead + frame is caught up by the ticks after it, back to back.
        self._pacer = Pacer(self._tick, frame_seconds=frame_seconds, lead_seconds=0.0, stats=self.stats,
                            outside_lead_seconds=lead_seconds)
        self._idle = True  # the pacer's run is over until poke() (ticking thread only)
        # Guards _calls, _thread and _waker; the tick works on a snapshot so calls come and go freely.
        self._lock = threading.Lock()
        self._calls: dict[Framed, bool] = {}  # call -> was idle at the last tick
        self._framer = Framer()
        self._woken = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._waker: Callable[[], None] | None = None

    # -- any thread -------------------------------------------------------------------------------

    def poke(self) -> None:
        """Something may have become audible: tick now if the clock was idle."""
        self._woken.set()
        waker = self._waker
        if waker is not None:
            waker()

    def add(self, call: Framed) -> None:
        with self._lock:
            self._calls.setdefault(call, True)
            if self._waker is None and self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="media-clock", daemon=True)
                self._thread.start()
        self.poke()

    def remove(self, call: Framed) -> None:
        with self._lock:
            self._calls.pop(call, None)

    def drive_from(self, waker: Callable[[], None]) -> None:
        """Let an event loop run the ticks: it calls next_deadline()/run_due(), and `waker` (any
        thread) makes it poll again soon. Call before the first call is added."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("the media clock already runs its own thread")
            self._waker = waker

    def stop(self) -> None:
        self._stop.set()
        self._woken.set()
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout=5)

    # -- the ticking thread -----------------------------------------------------------------------

    def next_deadline(self, now: float) -> float | None:
        """When the next tick is due (maybe already), or None while idle and not poked."""
        if self._idle:
            if not self._woken.is_set() or self._stop.is_set():
                return None
            self._woken.clear()
            self._idle = False
            self._pacer.restart(now)
        return self._pacer.next_deadline

    def run_due(self, now: float) -> bool:
        """Tick if a tick is due at `now` (call after next_deadline); False if none was."""
        if self._idle or now < self._pacer.next_deadline:
            return False
        if not self._pacer.fire(now):
            self._idle = True
        return True

    def _run(self) -> None:
        try:
            drive_pacer(self._pacer, stop=self._stop, wake=self._woken)
        except Exception:
            logger.exception("media clock crashed; no call gets frames any more")
            raise

    def _tick(self) -> bool:
        try:
            return self._tick_calls()
        except Exception:  # a bug here must not stop the clock, or spin it on one deadline
            logger.exception("media clock tick failed")
            return True

    def _tick_calls(self) -> bool:
        with self._lock:
            calls = list(self._calls.items())
        # A new run of the pacer: after a stall past the lead, Telnyx has played every call's
        # queue dry, so each playing call sends its lead again, as when it starts (after an idle
        # restart every call is idle anyway).
        pacer = self._pacer
        stalled = pacer.first_of_run
        everyone = [call for call, _ in calls]
        framer = self._framer
        framer.feed_levels(everyone)
        sent = framer.produce(everyone)
        self.frames += len(sent)
        playing = set(sent)
        # A call that starts playing sends its lead at once: burst - 1 more frames, less one for
        # each tick still due now (while catching up), which will send it one each.
        started = [call for call, was_idle in calls if (was_idle or stalled) and call in playing]
        for _ in range(self.burst - 1 - pacer.due_after):
            if not started:
                break
            started = framer.produce(started)
            self.frames += len(started)
        changed = [(call, call not in playing) for call, was_idle in calls if was_idle == (call in playing)]
        if changed:
            with self._lock:
                for call, idle in changed:
                    if call in self._calls:
                        self._calls[call] = idle
        if self._on_tick is not None:
            self._on_tick(self.stats)
        return bool(sent)
