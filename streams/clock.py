"""One media clock for every call of the process.

A pacer thread per call costs a thread wake-up and a GIL hand-off per call every 20 ms; at a
hundred calls that, not the mixing, is where the CPU goes. Here one pacer (mixer.pacer.run_pacer,
absolute deadlines, stall resync, idle wait) ticks on a shared 20 ms grid and, at each tick, asks
every streaming call for the frames it owes: one per tick, or its lead's worth at once when it
starts playing after being idle, so each call still runs OUTBOUND_LEAD_MS ahead of real time.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

from mixer.pacer import PacerStats, run_pacer

logger = logging.getLogger(__name__)


class Paced(Protocol):
    call_control_id: str

    def produce(self) -> bool:
        """Send one frame; False when the call has nothing to play."""
        ...


class MediaClock:
    def __init__(self, *, frame_seconds: float, lead_seconds: float,
                 on_tick: Callable[[PacerStats], None] | None = None) -> None:
        self.frame_seconds = frame_seconds
        # Frames sent at once when a call starts playing: the lead plus the frame due now.
        self.burst = 1 + round(lead_seconds / frame_seconds)
        self.stats = PacerStats()
        self.frames = 0  # frames produced, all calls together; written by the clock thread only
        self._on_tick = on_tick
        # Guards _calls; the tick works on a snapshot so calls come and go without waiting.
        self._lock = threading.Lock()
        self._calls: dict[Paced, bool] = {}  # call -> was idle at the last tick
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="media-clock", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def add(self, call: Paced) -> None:
        with self._lock:
            self._calls.setdefault(call, True)
        self.wake.set()

    def remove(self, call: Paced) -> None:
        with self._lock:
            self._calls.pop(call, None)

    def _run(self) -> None:
        try:
            run_pacer(self._tick, frame_seconds=self.frame_seconds, lead_seconds=0.0,
                      stop=self._stop, wake=self.wake, stats=self.stats)
        except Exception:
            logger.exception("media clock crashed; no call gets frames any more")
            raise

    def _tick(self) -> bool:
        with self._lock:
            calls = list(self._calls.items())
        busy = False
        idle_now: list[Paced] = []
        active_now: list[Paced] = []
        for call, was_idle in calls:
            try:
                sent = call.produce()
                if sent:
                    self.frames += 1
                if sent and was_idle:
                    for _ in range(self.burst - 1):
                        if not call.produce():
                            break
                        self.frames += 1
            except Exception:  # one broken call must not silence the others
                logger.exception("[%s] frame production failed", call.call_control_id)
                sent = False
            busy = busy or sent
            if sent == was_idle:
                (active_now if sent else idle_now).append(call)
        if idle_now or active_now:
            with self._lock:
                for call in idle_now:
                    if call in self._calls:
                        self._calls[call] = True
                for call in active_now:
                    if call in self._calls:
                        self._calls[call] = False
        if self._on_tick is not None:
            self._on_tick(self.stats)
        return busy
