"""One call: its status, its mixer and injections, its media socket.

Threads that touch a session: request threads (webhooks, REST), the socket's reader (inbound
frames) and the thread that ticks the process's media clock (outbound frames: begin_frame,
end_frame); under `python app.py` the last two are the front door's loop thread. `_lock` guards the
session's mutable fields; the Mixer has its own lock; the Connection serialises socket writes.
The clock never touches the database or Flask: it only puts events on the event log's queue.
A recorded call's frames, both ways, are handed to its Recording (streams/recording.py) the same
way: appended to a bounded buffer that a writer thread empties.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from eventlog import EventLog, utc_now
from frontdoor import CloseCode
from metrics import Metrics
from mixer.codecs import Codec, get_codec
from mixer.errors import CorruptPayload
from mixer.geometry import FrameGeometry
from mixer.mixer import DuckingConfig, Mixer
from streams import protocol
from streams.callbacks import Callbacks
from streams.clock import MediaClock
from streams.connection import Sender
from streams.framer import OutFrame
from streams.levels import CallerMeter, SentMeter
from streams.recording import Recording, Recordings
from streams.status import LIVE, TERMINAL, CallNotActive, CallStatus, InjectionStatus, TooManyInjections

logger = logging.getLogger(__name__)

CALLER_AUDIO_BACKLOG = 25  # fewest inbound frames kept for the ducking detector between ticks


@dataclass(frozen=True)
class SessionSettings:
    codec: str
    sample_rate: int
    l16_byte_order: str
    frame_ms: int
    lead_ms: int
    ducking: DuckingConfig
    recording: bool = False  # RECORDING: calls record unless switched off through the API


@dataclass
class Injection:
    """An operator's sound on a call. Mutated only under its session's lock."""

    id: str
    call_control_id: str
    source: dict[str, Any]
    gain_db: float
    loop: bool
    fade_in_ms: int
    fade_out_ms: int
    duck: bool
    label: str | None
    mode: str
    duration_ms: int | None
    created_at: str = field(default_factory=utc_now)
    status: InjectionStatus = InjectionStatus.CREATED
    started_at: str | None = None
    ended_at: str | None = None
    error: str | None = None
    played_ms: int = 0
    callback_url: str | None = None  # told when it ends (streams.callbacks)

    @property
    def active(self) -> bool:
        return self.status not in TERMINAL


class InjectionWatcher(Protocol):
    def injection_saved(self, session: CallSession, inj: Injection, samples: np.ndarray | None) -> None: ...

    def injection_updated(self, session: CallSession, inj: Injection) -> None: ...


class CallSession:
    def __init__(self, call_control_id: str, settings: SessionSettings, log: EventLog,
                 metrics: Metrics, clock: MediaClock, recordings: Recordings | None = None) -> None:
        self.call_control_id = call_control_id
        self.settings = settings
        self._log = log
        self._metrics = metrics
        # Guards every mutable field below (status, injections, marks, connection, codec).
        self._lock = threading.Lock()
        self.status = CallStatus.ANSWERING
        self.stream_id: str | None = None
        self.stream_ids: set[str] = set()  # every stream of the call; the registry's index keys
        self.info: dict[str, Any] = {"from": None, "to": None, "direction": None}
        self.created_at = utc_now()
        self.started_at: str | None = None
        self.ended_at: str | None = None
        self.end_reason: str | None = None
        self.injections: dict[str, Injection] = {}
        self._pending_marks: set[str] = set()
        self._not_started: list[Injection] = []  # mixed injections whose first frame is still due
        self._conn: Sender | None = None
        # Inbound audio not yet measured for ducking (socket thread appends, clock thread takes).
        # Bounded: nobody measures it while the clock is idle, and only the last hold_ms matter.
        backlog = max(CALLER_AUDIO_BACKLOG, settings.ducking.hold_ms // settings.frame_ms + 2)
        self._caller_audio: deque[tuple[Codec, bytes]] = deque(maxlen=backlog)
        self._dead_conn: Sender | None = None  # the socket whose last send failed (clock thread only)
        self._flush_due = False  # a stateful encoder has a sound's tail to let out (clock thread only)
        # The encoder of our mix and the decoder of the caller: one shared object for G.711 and
        # L16; for G.722 and OPUS two of the call's own, replaced by every `start` (attach).
        self._codec, self._decoder = self._codecs(settings.codec, settings.sample_rate)
        self.geometry = FrameGeometry(self._codec.sample_rate, settings.frame_ms)
        self.frame_samples = self.geometry.samples_per_frame  # read by the clock every tick
        self._clock = clock
        self.mixer = self._new_mixer()
        # Counted by the clock and the socket reader respectively; read for views only.
        self.frames_sent = 0
        self.frames_received = 0
        # The last frames heard and sent, measured when a view asks (streams.levels).
        self.caller_meter = CallerMeter()
        self.sent_meter = SentMeter()
        self._moved = False  # handed to another node (moved())
        # Told of each injection's changes, so another node can resume them (cluster/; set by
        # the registry). injection_saved is called on request threads and may wait for Redis;
        # injection_updated on the clock's and the socket's threads, and must not.
        self.watcher: InjectionWatcher | None = None
        self._recordings = recordings
        self.record = settings.recording and recordings is not None  # the switch (under _lock)
        # Set under _lock; read without it by the loop (one reference: the frames go to the
        # recording it finds, or to none).
        self.recording: Recording | None = None
        self.callbacks: Callbacks | None = None  # told when an injection or the call ends

    def _codecs(self, encoding: str, sample_rate: int) -> tuple[Codec, Codec]:
        s = self.settings
        encoder = get_codec(encoding, sample_rate, s.l16_byte_order, s.frame_ms)
        if not encoder.stateful:
            return encoder, encoder
        return encoder, get_codec(encoding, sample_rate, s.l16_byte_order, s.frame_ms)

    def _new_mixer(self) -> Mixer:
        return Mixer(self.geometry, ducking=self.settings.ducking, on_activity=self._clock.poke)

    @property
    def sample_rate(self) -> int:
        return self.geometry.sample_rate

    @property
    def live(self) -> bool:
        return self.status in LIVE

    # -- call lifecycle (webhook threads) -----------------------------------------------------

    def set_status(self, status: CallStatus) -> None:
        with self._lock:
            if not self.live:
                return
            self.status = status
        self.save()

    def end(self, status: CallStatus, reason: str) -> None:
        """Hang-up, stream failure, shutdown: leave the clock, stop every injection; keep history."""
        with self._lock:
            if not self.live:
                return
            self.status = status
            self.end_reason = reason
            self.ended_at = utc_now()
            conn, self._conn = self._conn, None
            for inj in self.injections.values():
                if inj.active:
                    self._finish(inj, InjectionStatus.STOPPED, error=None)
            self._pending_marks.clear()
            rec = self.recording
        self._clock.remove(self)
        if rec is not None:
            rec.close()  # the writer finishes the file and saves the call again
        self.mixer.stop_all()
        if conn is not None and status != CallStatus.ENDED:
            conn.close(CloseCode.NORMAL, reason)
        self._log.record(f"stream.{status}", self.call_control_id, reason=reason)
        self.save()
        if self.callbacks is not None:
            self.callbacks.call_ended(self.view())

    def moved(self) -> None:
        """The call now lives on another node (cluster/): this copy takes nothing more."""
        with self._lock:
            self._moved = True
            rec = self.recording
        self._clock.remove(self)
        if rec is not None:  # the node that takes the call over records the rest
            rec.close()

    def fenced(self) -> None:
        """Another node took the call while this one was cut off from Redis: stop sending at once."""
        self.moved()
        with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close(CloseCode.NORMAL, "the call is owned by another node")

    # -- media socket (the socket's handler thread) -------------------------------------------

    def attach(self, start: protocol.Start, conn: Sender) -> bool:
        """A `start` frame: (re)bind the socket, take codec and rate from media_format.

        False when the call has ended meanwhile (then nothing is bound).
        """
        fmt = start.media_format
        codec, decoder = self._codecs(fmt.encoding, fmt.sample_rate)  # fresh codec state per stream
        with self._lock:
            if not self.live:
                return False
            old = self._conn
            self._conn = conn
            self.stream_id = start.stream_id
            if self.status in LIVE:
                self.status = CallStatus.STREAMING
            # A second `start` of the call, whether or not the first one played anything.
            reconnect = self.started_at is not None or old is not None
            self.started_at = self.started_at or utc_now()
            self.info["from"] = self.info.get("from") or start.from_number
            self.info["to"] = self.info.get("to") or start.to_number
            rec = self.recording
            if rec is not None and not rec.closing and codec.sample_rate != rec.sample_rate:
                rec.close("the stream's sample rate changed; the rest is not recorded")  # one file, one rate
                self.record = False
            if codec.sample_rate != self.geometry.sample_rate:
                # Sources were decoded at the configured rate; Telnyx chose another one.
                self.geometry = FrameGeometry(codec.sample_rate, self.settings.frame_ms)
                self.frame_samples = self.geometry.samples_per_frame
                for inj in self.injections.values():
                    if inj.active and inj.mode == "mix":
                        self._finish(inj, InjectionStatus.FAILED, error="stream sample rate changed")
                self.mixer.stop_all()
                self.mixer = self._new_mixer()
            self._codec, self._decoder = codec, decoder
            if self.recording is not None:
                self.recording.new_stream()
            elif self.record:
                self._start_recording()
            # Under the lock, so an end() racing with this attach cannot leave us on the clock.
            self._clock.add(self)
        if old is not None and old is not conn:
            old.close(CloseCode.NORMAL, "replaced by a new connection")
        self._log.record("stream.reconnected" if reconnect else "stream.started",
                         self.call_control_id, stream_id=start.stream_id,
                         encoding=fmt.encoding, sample_rate=fmt.sample_rate)
        self.save()
        return True

    def detach(self, conn: Sender, *, stopped: bool) -> None:
        """The socket closed: after `stop` the stream is over; without it, wait for a reconnect."""
        with self._lock:
            if self._conn is not conn:
                return
            self._conn = None
            lost = list(self._pending_marks)
            self._pending_marks.clear()
            for key in lost:
                # The audio was all sent; the socket went away before Telnyx confirmed it.
                inj = self.injections.get(key)
                if inj is not None and inj.active:
                    self._finish(inj, InjectionStatus.FINISHED, error=None)
            if self.live:
                self.status = CallStatus.DISCONNECTED
        self._clock.remove(self)
        self._log.record("stream.stop_received" if stopped else "stream.disconnected",
                         self.call_control_id, stream_id=self.stream_id)
        self.save()

    def on_caller_audio(self, media: protocol.Media) -> None:
        """Keep the caller's audio for the clock, which measures every call's at once for ducking.

        G.722 and OPUS are decoded here, in arrival order, by the stream's own decoder; a payload
        that does not decode counts as a frame of silence, and raises CorruptPayload afterwards
        for the socket to report (the call goes on).
        """
        self.frames_received += 1
        if media.track != "inbound":
            return
        payload = media.payload
        decoder = self._decoder
        now = time.monotonic()
        if not decoder.stateful:
            width = decoder.bytes_per_sample
            if len(payload) >= width:
                # With its codec: a reconnect may change it before the clock measures this chunk.
                whole = payload[:len(payload) - len(payload) % width]
                self._caller_audio.append((decoder, whole))
                self.caller_meter.add(now, decoder, whole)
                rec = self.recording
                if rec is not None:
                    rec.caller(decoder, whole, media.chunk, now)
            return
        error: CorruptPayload | None = None
        try:
            pcm = decoder.decode(payload)
        except CorruptPayload as exc:
            pcm, error = np.zeros(self.frame_samples, dtype=np.int16), exc
        if len(pcm):
            # Decoded here, in arrival order (the decoder has state): the rest takes it as L16.
            pcm_codec = get_codec("L16", decoder.sample_rate, "little")
            whole = pcm.astype("<i2", copy=False).tobytes()
            self._caller_audio.append((pcm_codec, whole))
            self.caller_meter.add(now, pcm_codec, whole)
            rec = self.recording
            if rec is not None:
                rec.caller(pcm_codec, whole, media.chunk, now)
        if error is not None:
            raise error

    def on_mark(self, name: str) -> None:
        """Telnyx played everything before this mark (or a clear returned it)."""
        with self._lock:
            if name not in self._pending_marks:
                return
            self._pending_marks.discard(name)
            inj = self.injections.get(name)
            if inj is None or not inj.active:
                return
            self._finish(inj, InjectionStatus.FINISHED, error=None)
        if self.watcher is not None:
            self.watcher.injection_updated(self, inj)
        self.save()

    # -- injections (request threads) ---------------------------------------------------------

    def active_injections(self) -> int:
        with self._lock:
            return sum(1 for inj in self.injections.values() if inj.active)

    def add_injection(self, inj: Injection, samples: np.ndarray | None, *, max_active: int) -> None:
        """Register and start `inj`; `samples` (float32 at the stream rate) unless delegated.

        Raises CallNotActive or TooManyInjections, checked atomically with adding it.
        """
        with self._lock:
            if not self.live or self._moved:
                raise CallNotActive(self.call_control_id, self.status)
            if sum(1 for other in self.injections.values() if other.active) >= max_active:
                raise TooManyInjections(max_active)
            self.injections[inj.id] = inj
            if samples is not None:
                self._not_started.append(inj)
        self._log.record("injection.created", self.call_control_id, injection_id=inj.id,
                         source=inj.source, mode=inj.mode, label=inj.label)
        if samples is not None:
            self.mixer.add(inj.id, samples, gain_db=inj.gain_db, loop=inj.loop,
                           fade_in_ms=inj.fade_in_ms, fade_out_ms=inj.fade_out_ms, duck=inj.duck)
        if self.watcher is not None:  # playing already: the copy for another node is not on its way
            self.watcher.injection_saved(self, inj, samples)
        self.save()

    def resume_injection(self, inj: Injection, samples: np.ndarray, start_at: int) -> None:
        """An injection this call had on a node that died, resumed `start_at` samples in."""
        with self._lock:
            if inj.id in self.injections or not self.live:
                return
            self.injections[inj.id] = inj
        self.mixer.add(inj.id, samples, gain_db=inj.gain_db, loop=inj.loop, fade_in_ms=inj.fade_in_ms,
                       fade_out_ms=inj.fade_out_ms, duck=inj.duck, start_at=start_at)
        self._log.record("injection.resumed", self.call_control_id, injection_id=inj.id,
                         at_ms=start_at * 1000 // self.geometry.sample_rate)
        self.save()

    def set_gain(self, inj: Injection, gain_db: float) -> None:
        with self._lock:
            inj.gain_db = gain_db
        if inj.mode == "mix":
            self.mixer.set_gain(inj.id, gain_db)
        self._log.record("injection.gain_changed", self.call_control_id, injection_id=inj.id,
                         gain_db=gain_db)
        if self.watcher is not None:
            self.watcher.injection_saved(self, inj, None)

    def stop_injection(self, inj: Injection) -> None:
        with self._lock:
            if not inj.active:
                return
            inj.played_ms = self._played_ms(inj)
            self._finish(inj, InjectionStatus.STOPPED, error=None)
        if inj.mode == "mix":
            self.mixer.stop(inj.id)
        if self.watcher is not None:
            self.watcher.injection_saved(self, inj, None)
        self.save()

    def clear(self) -> list[Injection]:
        """Stop every injection and flush what Telnyx has queued; returned marks mean stopped.
        Returns the injections it stopped."""
        with self._lock:
            stopped = [inj for inj in self.injections.values() if inj.active]
            for inj in stopped:
                inj.played_ms = self._played_ms(inj)
                self._finish(inj, InjectionStatus.STOPPED, error=None)
            self._pending_marks.clear()
            conn = self._conn
        self.mixer.stop_all()
        if conn is not None:
            conn.send(protocol.clear_frame())
        self._log.record("stream.cleared", self.call_control_id, stopped=len(stopped))
        if self.watcher is not None:
            for inj in stopped:
                self.watcher.injection_saved(self, inj, None)
        self.save()
        return stopped

    def playback_result(self, inj: Injection, ok: bool, error: str | None) -> None:
        """Outcome of a delegated Telnyx playback_start (mode "playback")."""
        with self._lock:
            if not inj.active:
                return
            if ok:
                inj.status = InjectionStatus.PLAYING
                inj.started_at = utc_now()
            else:
                self._finish(inj, InjectionStatus.FAILED, error=error)
        if ok:
            self._log.record("injection.playing", self.call_control_id, injection_id=inj.id)
        self.save()

    def playback_ended(self, inj: Injection, status: InjectionStatus, *, error: str | None = None) -> None:
        with self._lock:
            if inj.active:
                self._finish(inj, status, error=error)
        self.save()

    def _finish(self, inj: Injection, status: InjectionStatus, *, error: str | None) -> None:
        """Move `inj` to a final status. Caller holds _lock."""
        if status == InjectionStatus.FINISHED and inj.duration_ms is not None:
            inj.played_ms = inj.duration_ms
        inj.status = status
        inj.error = error
        inj.ended_at = utc_now()
        self._metrics.inc("injections_total", status=status)
        self._log.record(f"injection.{status}", self.call_control_id, injection_id=inj.id,
                         played_ms=inj.played_ms, error=error)
        if self.callbacks is not None:  # only queued: this runs under the session's lock
            self.callbacks.injection_ended(self.injection_view(inj), inj.callback_url)

    def _played_ms(self, inj: Injection) -> int:
        if inj.mode != "mix":
            return inj.played_ms
        return int(self.mixer.played_samples(inj.id) * 1000 // self.geometry.sample_rate)

    # -- recording (request threads; attach on the loop) -------------------------------------------

    def set_recording(self, on: bool) -> None:
        """The per-call switch: off pauses the recording (the timeline goes on as silence), on
        starts or resumes it. Raises CallNotActive once the call has ended."""
        with self._lock:
            if not self.live or self._moved:
                raise CallNotActive(self.call_control_id, self.status)
            if self._recordings is None:
                return
            changed = on != self.record
            self.record = on
            rec = self.recording
            switched = rec is not None and changed and not rec.closing  # a finished one stays so
            if rec is None and on and self._conn is not None:
                self._start_recording()
            elif switched:
                assert rec is not None
                rec.enabled = on
        if switched:
            self._log.record("recording.resumed" if on else "recording.paused", self.call_control_id)
        self.save()

    def _start_recording(self) -> None:
        """Caller holds _lock. In memory only: the writer thread creates the file."""
        assert self._recordings is not None
        # The codec's rate: the one its decoded samples have (Telnyx's nominal rate may differ).
        self.recording = self._recordings.open(self.call_control_id, self._codec.sample_rate,
                                               on_done=self._recording_done)

    def _recording_done(self) -> None:
        """The writer finished the file: the history shows it complete (unless the call lives
        on another node now, whose view is the newer one)."""
        if not self._moved:
            self.save()

    def recording_view(self) -> dict[str, Any] | None:
        rec = self.recording
        if rec is not None:
            return rec.info()
        if self.record and self.live:  # on, before the media stream: it starts with the stream
            return {"status": "waiting", "format": "wav", "channels": ["caller", "sent"], "sample_rate": None,
                    "started_at": None, "ended_at": None, "duration_ms": 0, "gaps": 0, "gap_ms": 0,
                    "frames_dropped": 0, "frames_late": 0, "error": None}
        return None

    # -- the media clock's thread -----------------------------------------------------------------

    def take_caller_audio(self) -> tuple[Mixer, list[tuple[Codec, bytes]]] | None:
        """The inbound audio received since the last call, and the mixer it ducks."""
        pending = self._caller_audio
        if not pending:
            return None
        chunks = []
        while pending:
            chunks.append(pending.popleft())
        return self.mixer, chunks

    def begin_frame(self, out: np.ndarray) -> OutFrame | None:
        """Mix the next frame into float32 `out` (but for the returned gain); None when there is
        nothing to play or nobody to hear it. The clock scales, finishes and encodes it
        (streams.framer), then calls end_frame."""
        conn = self._conn
        if conn is None or conn is self._dead_conn:
            return None  # don't use up the injections' audio on a socket that takes nothing
        mixer = self.mixer
        if len(out) != mixer.geometry.samples_per_frame:
            return None  # the stream's sample rate changed since the clock looked
        mixed = mixer.mix_unscaled_into(out)
        codec = self._codec
        if mixed is None:
            if not (self._flush_due and codec.stateful):
                return None
            # G.722 and OPUS hold the last few ms of a sound in their look-ahead (OPUS 6.5 ms):
            # one frame of silence after the sound lets them out, instead of a cut mid-waveform.
            self._flush_due = False
            out[:] = 0.0
            return OutFrame(conn, mixer, codec, (), 1.0)
        self._flush_due = True
        return OutFrame(conn, mixer, codec, *mixed)

    def end_frame(self, frame: OutFrame, message: bytes, payload: bytes | np.ndarray | None = None) -> bool:
        """Send the frame's media message; False when the socket did not take it. `payload` is
        the encoded audio in it (recorded as sent, if the call records)."""
        conn = frame.conn
        if not conn.send(message):
            self._dead_conn = conn
            if frame.finished:
                # Their marks cannot reach Telnyx; detach() settles them once the socket is gone.
                self._after_frame(conn, frame.finished)
            return False
        self.frames_sent += 1
        rec = self.recording
        if rec is not None and payload is not None:
            rec.sent(frame.codec, payload if isinstance(payload, bytes) else payload.tobytes(), time.monotonic())
        if self._not_started or frame.finished:
            self._after_frame(conn, frame.finished)
        return True

    def _after_frame(self, conn: Sender, finished: tuple[str, ...]) -> None:
        marks = []
        started = []
        with self._lock:
            for waiting in self._not_started:
                if waiting.status == InjectionStatus.CREATED:
                    waiting.status = InjectionStatus.PLAYING
                    waiting.started_at = utc_now()
                    started.append(waiting)
                    self._log.record("injection.playing", self.call_control_id, injection_id=waiting.id)
            self._not_started.clear()
            for key in finished:
                inj = self.injections.get(key)
                if inj is not None and inj.active:
                    inj.played_ms = self._played_ms(inj)
                    self._pending_marks.add(key)
                    marks.append(key)
        for key in marks:
            # Named after the injection: Telnyx echoes it once the last frame has played.
            conn.send(protocol.mark_frame(key))
        if self.watcher is not None:
            for inj in started:
                self.watcher.injection_updated(self, inj)

    # -- views ------------------------------------------------------------------------------------

    def injection_view(self, inj: Injection) -> dict[str, Any]:
        played = self._played_ms(inj) if inj.active else inj.played_ms
        return {
            "id": inj.id,
            "call_control_id": inj.call_control_id,
            "stream_id": self.stream_id,
            "status": inj.status,
            "created_at": inj.created_at,
            "started_at": inj.started_at,
            "ended_at": inj.ended_at,
            "source": inj.source,
            "duration_ms": inj.duration_ms,
            "gain_db": inj.gain_db,
            "loop": inj.loop,
            "fade_in_ms": inj.fade_in_ms,
            "fade_out_ms": inj.fade_out_ms,
            "duck": inj.duck,
            "label": inj.label,
            "mode": inj.mode,
            "played_ms": played,
            "error": inj.error,
            "callback_url": inj.callback_url,
        }

    def levels(self) -> dict[str, float]:
        """RMS dBFS of the caller's last frames and of ours (streams.levels)."""
        now = time.monotonic()
        return {"caller_dbfs": self.caller_meter.dbfs(now), "sent_dbfs": self.sent_meter.dbfs(now)}

    def view(self) -> dict[str, Any]:
        with self._lock:
            injections = list(self.injections.values())
        return {
            "call_control_id": self.call_control_id,
            "stream_id": self.stream_id,
            "status": self.status,
            "from": self.info.get("from"),
            "to": self.info.get("to"),
            "direction": self.info.get("direction"),
            "codec": self._codec.name,
            "sample_rate": self.geometry.sample_rate,
            "created_at": self.created_at,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "end_reason": self.end_reason,
            "caller_speaking": self.mixer.caller_speaking if self.live else False,
            "frames": {"sent": self.frames_sent, "received": self.frames_received},
            "injections": [self.injection_view(inj) for inj in injections],
            "recording": self.recording_view(),
        }

    # -- moving to another node (cluster/) ---------------------------------------------------------

    def export(self) -> dict[str, Any]:
        """The call as another node needs it to carry on before its stream starts: info and
        injections, with the audio of those not yet played (float32, base64)."""
        with self._lock:
            injections = list(self.injections.values())
            state: dict[str, Any] = {"status": self.status, "info": dict(self.info), "created_at": self.created_at,
                                     "record": self.record}
        items = []
        for inj in injections:
            item = dataclasses.asdict(inj)
            samples = self.mixer.unplayed(inj.id) if inj.status == InjectionStatus.CREATED else None
            item["samples"] = base64.b64encode(samples.tobytes()).decode() if samples is not None else None
            items.append(item)
        state["injections"] = items
        return state

    def absorb(self, state: dict[str, Any]) -> None:
        """Take over what the call's previous node had (see export); what is here already stays."""
        with self._lock:
            for key, value in state.get("info", {}).items():
                if value and not self.info.get(key):
                    self.info[key] = value
            self.created_at = min(self.created_at, str(state.get("created_at") or self.created_at))
            record = state.get("record")
        if isinstance(record, bool) and record != self.record and self._recordings is not None:
            # Switched through the node that had the call before its stream arrived here.
            with contextlib.suppress(CallNotActive):
                self.set_recording(record)
        for item in state.get("injections", []):
            encoded = item.pop("samples", None)
            inj = Injection(**item)
            inj.status = InjectionStatus(inj.status)
            samples = np.frombuffer(base64.b64decode(encoded), dtype=np.float32) if encoded else None
            if samples is None and inj.active and inj.mode == "mix":
                # Playing there, and its audio could not be found to resume it here.
                inj.status, inj.error, inj.ended_at = InjectionStatus.FAILED, "lost when the call moved", utc_now()
            with self._lock:
                if inj.id in self.injections:
                    continue
                self.injections[inj.id] = inj
                if samples is not None:
                    self._not_started.append(inj)
            if samples is not None:
                self.mixer.add(inj.id, samples, gain_db=inj.gain_db, loop=inj.loop, fade_in_ms=inj.fade_in_ms,
                               fade_out_ms=inj.fade_out_ms, duck=inj.duck)
        self.save()

    def save(self) -> None:
        self._log.save_call(self.call_control_id, self.status, self.view(), stream_id=self.stream_id)
