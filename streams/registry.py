"""The live calls of this process, by call_control_id and by Telnyx stream_id."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Protocol

from eventlog import EventLog
from metrics import Metrics
from mixer.pacer import PacerStats
from streams.callbacks import Callbacks
from streams.clock import MediaClock
from streams.recording import Recordings
from streams.session import CallSession, InjectionWatcher, SessionSettings
from streams.status import CallStatus

logger = logging.getLogger(__name__)
RECENTLY_ENDED = 10_000


class Watcher(InjectionWatcher, Protocol):
    """Told when a call's stream arrives here, when a call ends, and of each call's injections
    (cluster.node in scaled mode)."""

    def stream_attached(self, session: CallSession, stream_id: str) -> None: ...

    def call_closed(self, call_control_id: str) -> None: ...


class SessionRegistry:
    def __init__(self, settings: SessionSettings, log: EventLog, metrics: Metrics,
                 recordings: Recordings | None = None) -> None:
        self.settings = settings
        self.recordings = recordings
        self.watcher: Watcher | None = None
        self.callbacks: Callbacks | None = None  # handed to every session it opens
        self._log = log
        self._metrics = metrics
        # Guards both maps; never held while calling into a session.
        self._lock = threading.Lock()
        self._by_call: dict[str, CallSession] = {}
        self._by_stream: dict[str, CallSession] = {}
        # Calls that ended in this process, so a late webhook cannot revive them.
        self._ended: OrderedDict[str, None] = OrderedDict()
        self.clock = MediaClock(frame_seconds=settings.frame_ms / 1000, lead_seconds=settings.lead_ms / 1000,
                                on_tick=self._report_clock)
        self._reported = (0, 0, 0)
        metrics.gauge("active_sessions", lambda: len(self._by_call))
        metrics.gauge("active_injections", self._count_active_injections)

    def get(self, key: str) -> CallSession | None:
        """A live session by call_control_id or stream_id."""
        with self._lock:
            return self._by_call.get(key) or self._by_stream.get(key)

    def open(self, call_control_id: str) -> tuple[CallSession | None, bool]:
        """The session of a call, created on first sight; returns (session, created).

        None for a call that ended in this process: a late event or a stray `start` must not
        revive it. (In memory only: the front door's loop thread calls this.)
        """
        with self._lock:
            session = self._by_call.get(call_control_id)
            if session is not None:
                return session, False
            if call_control_id in self._ended:
                return None, False
            session = CallSession(call_control_id, self.settings, self._log, self._metrics, self.clock,
                                  self.recordings)
            session.watcher = self.watcher
            session.callbacks = self.callbacks
            self._by_call[call_control_id] = session
        # The call is known from here (its first webhook or, without one, its first `start`); its
        # media stream is logged as stream.started when Telnyx connects.
        self._log.record("call.opened", call_control_id)
        return session, True

    def ended(self, call_control_id: str) -> bool:
        """Whether the call ended in this process or, before a restart, in the history."""
        with self._lock:
            if call_control_id in self._ended:
                return True
        return self._log.call(call_control_id) is not None

    def index_stream(self, session: CallSession, stream_id: str) -> None:
        """The call's media socket sent `start` here (the loop thread: the watcher must not block)."""
        with self._lock:
            self._by_stream[stream_id] = session
            session.stream_ids.add(stream_id)
        if self.watcher is not None:
            self.watcher.stream_attached(session, stream_id)

    def close(self, session: CallSession, status: CallStatus, reason: str) -> None:
        """End a session and forget it; its history stays in the event log."""
        session.end(status, reason)
        with self._lock:
            self._ended[session.call_control_id] = None
            while len(self._ended) > RECENTLY_ENDED:
                self._ended.popitem(last=False)
            self._by_call.pop(session.call_control_id, None)
            for stream_id in session.stream_ids:  # every stream the call had, reconnects included
                self._by_stream.pop(stream_id, None)
        if self.watcher is not None:
            self.watcher.call_closed(session.call_control_id)

    def forget(self, session: CallSession) -> None:
        """The call moved to another node: drop it here without ending it."""
        session.moved()
        with self._lock:
            self._by_call.pop(session.call_control_id, None)
            for stream_id in session.stream_ids:
                self._by_stream.pop(stream_id, None)

    def sessions(self) -> list[CallSession]:
        with self._lock:
            return list(self._by_call.values())

    def shutdown(self) -> None:
        """SIGTERM: every live call is marked interrupted, then the media clock stops."""
        for session in self.sessions():
            self.close(session, CallStatus.INTERRUPTED, "server_shutdown")
        self.clock.stop()

    def _report_clock(self, stats: PacerStats) -> None:
        """Runs on the clock's thread after each tick: move its counters into /metrics."""
        sent, late, skipped = self.clock.frames, stats.late, stats.skipped
        if (sent, late, skipped) == self._reported:
            return
        before = self._reported
        self._metrics.inc("frames_sent_total", sent - before[0])
        self._metrics.inc("clock_ticks_late_total", late - before[1])
        self._metrics.inc("clock_ticks_skipped_total", skipped - before[2])
        self._metrics.observe_lateness(stats.lateness)
        del stats.lateness[:]  # the histogram keeps the distribution; the array would grow all call
        self._reported = (sent, late, skipped)

    def _count_active_injections(self) -> float:
        return float(sum(s.active_injections() for s in self.sessions()))
