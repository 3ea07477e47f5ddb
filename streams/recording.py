"""Recordings: each call's audio, written while the call runs, as a 16-bit stereo WAV at the
call's own sample rate. Left channel: the caller, as Telnyx sent it (its inbound frames,
decoded). Right channel: exactly what we sent (the bytes of our media frames, decoded), so each
channel is bit-exact with the other side's audio after decoding.

How the channels line up: one timeline per recording, in samples from the moment the recording
began, measured on time.monotonic() (the media clock's time) in whole 20 ms slots.
- Sent: a frame goes where Telnyx plays it: right after the frame we sent before it, or at the
  slot of the moment it was sent if that is later (the clock was idle or stalled: Telnyx's queue
  had run dry, and the caller heard silence there).
- Caller: a frame goes where its `chunk` number puts it, counted from the first frame of its
  stream, which goes in the slot it arrived in. A chunk that never arrives is silence; frames
  out of order are put back in order. A frame without a chunk number follows the one before it,
  or starts at the slot it arrived in if that is later. If the chunk numbers ever disagree with
  the clock by more than REORDER_WINDOW_S (a reset, or the far end's clock drifting), the
  stream is anchored again at the slot of that frame.

Threads. The front door's loop (socket reader and media clock) calls caller()/sent(): a tuple
appended to a bounded deque, under a lock held for that append only; no decoding, no I/O. A
frame that finds the deque full is dropped and counted, and the recording has a hole there
(silence, a `recording.gap` event with its span and the frames lost, and metrics) instead of a
slower call. One `recording-writer` thread (Recordings) drains every recording every
WRITE_INTERVAL_S, decodes, places the frames, and appends to the file the part of the timeline
older than REORDER_WINDOW_S; a frame arriving later than that is dropped as late. Request
threads read the file (a download sees a valid WAV of what is written so far) and flip the
per-call switch (paused: nothing is appended, and the timeline goes on as silence).

Files are named by a hash of the call_control_id: no id, however strange, reaches a path.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eventlog import EventLog, utc_now
from metrics import Metrics
from mixer.codecs import Codec
from mixer.geometry import FRAME_MS

logger = logging.getLogger(__name__)

CALLER, SENT = 0, 1
CHANNELS = ("caller", "sent")
WRITE_INTERVAL_S = 0.1
REORDER_WINDOW_S = 2.0  # how late a frame may arrive and still take its place
SWEEP_INTERVAL_S = 3600.0
HEADER_BYTES = 44
BYTES_PER_FRAME = 2 * len(CHANNELS)  # one int16 sample per channel
MAX_DATA_BYTES = 0xFFFFFFFF - 36  # a RIFF chunk size is 32 bits
MAX_SAMPLES = MAX_DATA_BYTES // BYTES_PER_FRAME  # 37 hours at 8 kHz, 6 at 48 kHz
SUFFIX = ".wav"

_Frame = tuple[int, float, Codec, bytes, int | None]  # channel, monotonic time, codec, payload, chunk


@dataclass(frozen=True)
class _Gap:
    """Frames dropped because the buffer was full, from `since` until the next frame kept."""

    since: float
    until: float
    frames: int


class _NewStream:
    """A new media stream of the call (a reconnect): its chunk numbers start again."""


def wav_header(sample_rate: int, data_bytes: int, channels: int = len(CHANNELS)) -> bytes:
    """The 44-byte header of a 16-bit PCM WAV holding `data_bytes` of samples."""
    return struct.pack("<4sI4s4sIHHIIHH4sI", b"RIFF", 36 + data_bytes, b"WAVE", b"fmt ", 16, 1, channels,
                       sample_rate, sample_rate * channels * 2, channels * 2, 16, b"data", data_bytes)


def file_name(call_control_id: str) -> str:
    """The recording's file name: a hash, so the id never becomes part of a path."""
    return hashlib.sha256(call_control_id.encode("utf-8", "surrogatepass")).hexdigest()[:32] + SUFFIX


def read_wav(path: Path) -> bytes | None:
    """The file as a valid WAV of what is written so far (its header's sizes are set on close
    only; a live file's are fixed here), or None if there is none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    if len(data) < HEADER_BYTES:
        return None  # never seen: the header is renamed into place whole
    rate = struct.unpack_from("<I", data, 24)[0]
    body = len(data) - HEADER_BYTES
    body -= body % BYTES_PER_FRAME  # a write in progress: whole sample frames only
    return wav_header(rate, body) + data[HEADER_BYTES:HEADER_BYTES + body]


class Recording:
    """One call's recording. caller()/sent()/new_stream() run on the media loop; drain() and
    the file on the writer thread; info() and the switch on any thread."""

    def __init__(self, call_control_id: str, path: Path, sample_rate: int, *, capacity: int,
                 origin: float, node: str | None = None, on_done: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.call_control_id = call_control_id
        self.path = path
        self.sample_rate = sample_rate
        self.capacity = capacity
        self.origin = origin
        self._clock = clock
        self.node = node
        self.on_done = on_done
        self.slot = sample_rate * FRAME_MS // 1000
        self.started_at = utc_now()
        self.ended_at: str | None = None
        self.enabled = True  # the per-call switch: a plain bool, read by the loop without a lock
        self.closing = False  # the call ended: the writer finishes the file (close(), any thread)
        self.closed_at = origin  # when (monotonic)
        # Guards _buffer's bound and the loss count below; held for one append.
        self._put_lock = threading.Lock()
        self._buffer: deque[_Frame | _Gap | _NewStream] = deque()
        self._lost = 0
        self._lost_since = 0.0
        # The writer thread's alone from here on (views read the counters: single ints).
        self.status = "recording"
        self.error: str | None = None
        self.written = 0  # samples per channel in the file
        self.gaps = 0
        self.gap_ms = 0
        self.frames_dropped = 0
        self.frames_late = 0
        self._file: Any = None
        self._stage = np.zeros((len(CHANNELS), 0), dtype=np.int16)  # samples from `written` on
        self._staged = 0  # staged samples in use (the furthest end placed)
        self._sent_next = 0
        self._caller_next = 0
        self._chunk0: int | None = None
        self._chunk_base = 0

    # -- the media loop ---------------------------------------------------------------------------

    def caller(self, codec: Codec, payload: bytes, chunk: int | None, now: float) -> None:
        if self.enabled:
            self._put((CALLER, now, codec, payload, chunk), now)

    def sent(self, codec: Codec, payload: bytes, now: float) -> None:
        if self.enabled:
            self._put((SENT, now, codec, payload, None), now)

    def new_stream(self) -> None:
        with self._put_lock:
            self._buffer.append(_NewStream())

    def _put(self, item: _Frame, now: float) -> None:
        with self._put_lock:
            buffer = self._buffer
            if len(buffer) >= self.capacity:
                if not self._lost:
                    self._lost_since = now
                self._lost += 1
                return
            if self._lost:
                buffer.append(_Gap(self._lost_since, now, self._lost))
                self._lost = 0
            buffer.append(item)

    # -- any thread ---------------------------------------------------------------------------------

    def close(self, error: str | None = None) -> None:
        """The call ended (or moved, or changed rate): nothing more is recorded; the writer
        finishes the file, silence up to now included."""
        self.enabled = False
        if error is not None:
            self.error = error
        self.closed_at = self._clock()
        self.closing = True

    @property
    def paused(self) -> bool:
        return not self.enabled and not self.closing and self.status == "recording"

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "status": "paused" if self.paused else self.status,
            "format": "wav",
            "channels": list(CHANNELS),
            "sample_rate": self.sample_rate,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "duration_ms": self.written * 1000 // self.sample_rate,
            "gaps": self.gaps,
            "gap_ms": self.gap_ms,
            "frames_dropped": self.frames_dropped,
            "frames_late": self.frames_late,
            "error": self.error,
        }
        if self.node is not None:
            info["node"] = self.node
        return info

    # -- the writer thread --------------------------------------------------------------------------

    def position(self, at: float) -> int:
        """The slot (first sample) of monotonic time `at` on this recording's timeline."""
        return max(0, int((at - self.origin) * self.sample_rate) // self.slot * self.slot)

    def drain(self, now: float) -> list[_Gap]:
        """Place every buffered frame on the timeline; returns the holes found (a loss still
        open ends `now`: the buffer has room again)."""
        gaps = []
        buffer = self._buffer
        while buffer:
            item = buffer.popleft()
            if isinstance(item, _Gap):
                gaps.append(item)
                self._sent_next = max(self._sent_next, self.position(item.until))
            elif isinstance(item, _NewStream):
                self._chunk0 = None
            else:
                self._place_frame(*item)
        with self._put_lock:
            if self._lost:  # no frame kept since (the call ended, or the loop is between frames)
                gaps.append(_Gap(self._lost_since, max(now, self._lost_since), self._lost))
                self._lost = 0
        return gaps

    def _place_frame(self, channel: int, at: float, codec: Codec, payload: bytes, chunk: int | None) -> None:
        pcm = codec.decode(payload)
        n = len(pcm)
        if n == 0:
            return
        now_pos = self.position(at)
        if channel == SENT:
            pos = max(self._sent_next, now_pos)
            self._sent_next = pos + n
        elif chunk is None:
            pos = max(self._caller_next, now_pos)
            self._caller_next = pos + n
        else:
            window = int(REORDER_WINDOW_S * self.sample_rate)
            pos = self._chunk_base + (chunk - self._chunk0) * n if self._chunk0 is not None else -1
            if self._chunk0 is None or abs(pos - now_pos) > window:
                self._chunk0, self._chunk_base = chunk, max(now_pos, self._caller_next)
                pos = self._chunk_base
            self._caller_next = max(self._caller_next, pos + n)
        self._place(channel, pos, pcm)

    def _place(self, channel: int, pos: int, pcm: np.ndarray) -> None:
        offset = pos - self.written
        if offset < 0:  # later than the window: its place is in the file already
            self.frames_late += 1
            if -offset >= len(pcm):
                return
            pcm, offset = pcm[-offset:], 0
        end = offset + len(pcm)
        self._reserve(end)
        self._stage[channel, offset:end] = pcm
        self._staged = max(self._staged, end)

    def _reserve(self, samples: int) -> None:
        if samples > self._stage.shape[1]:
            grown = np.zeros((len(CHANNELS), max(samples, 2 * self._stage.shape[1])), dtype=np.int16)
            grown[:, :self._staged] = self._stage[:, :self._staged]
            self._stage = grown

    def open_file(self) -> None:
        """Create the file: the header first, renamed into place, so a reader never sees half of it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_suffix(".part")
        partial.write_bytes(wav_header(self.sample_rate, 0))
        os.replace(partial, self.path)
        self._file = self.path.open("r+b")
        self._file.seek(HEADER_BYTES)

    def write_until(self, end: int, before_write: Callable[[], None] | None = None) -> None:
        """Append the timeline up to sample `end` (silence where nothing was placed)."""
        count = min(end, MAX_SAMPLES) - self.written
        if count <= 0:
            return
        if self._file is None:
            self.open_file()
        self._reserve(count)
        block = np.ascontiguousarray(self._stage[:, :count].T)  # interleaved: caller, sent
        if before_write is not None:
            before_write()
        self._file.write(block.tobytes())
        self._file.flush()
        rest = max(self._staged - count, 0)
        self._stage[:, :rest] = self._stage[:, count:count + rest]
        self._stage[:, rest:max(self._staged, count)] = 0
        self._staged = rest
        self.written += count

    @property
    def staged_end(self) -> int:
        return self.written + self._staged

    def finish(self) -> None:
        """Set the header's sizes and close the file (writer thread, once)."""
        if self._file is None and self.status == "recording":
            self.open_file()  # a call too short to write anything still has its (empty) file
        if self._file is not None:
            data = self.written * BYTES_PER_FRAME
            self._file.seek(0)
            self._file.write(wav_header(self.sample_rate, data))
            self._file.close()
            self._file = None
        self.ended_at = utc_now()
        if self.status == "recording":
            self.status = "complete"

    def fail(self, error: str) -> None:
        self.enabled = False
        self.status = "failed"
        self.error = error
        self._buffer.clear()
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


class Recordings:
    """Every recording of this process, their writer thread and the retention sweep."""

    def __init__(self, directory: Path, *, buffer_s: float, retention_days: float, log: EventLog,
                 metrics: Metrics, node: str | None = None,
                 clock: Callable[[], float] = time.monotonic, wall: Callable[[], float] = time.time) -> None:
        self.directory = directory
        self.buffer_frames = max(1, round(buffer_s * 1000 / FRAME_MS))  # per channel
        self.retention_days = retention_days
        self.node = node
        self._log = log
        self._metrics = metrics
        self._clock = clock
        self._wall = wall
        # Test seam: called on the writer thread before each write to a file (a slow disk).
        self.before_write: Callable[[], None] | None = None
        # Guards _active; the writer works on a snapshot.
        self._lock = threading.Lock()
        self._active: dict[str, Recording] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._next_sweep = 0.0

    def path(self, call_control_id: str) -> Path:
        return self.directory / file_name(call_control_id)

    def open(self, call_control_id: str, sample_rate: int, *, on_done: Callable[[], None] | None = None
             ) -> Recording:
        """A new recording starting now; nothing touches the disk here (the loop may call it)."""
        # Two channels' worth of frames: each channel may use its share of the buffer.
        rec = Recording(call_control_id, self.path(call_control_id), sample_rate,
                        capacity=2 * self.buffer_frames, origin=self._clock(), node=self.node, on_done=on_done,
                        clock=self._clock)
        with self._lock:
            previous = self._active.get(call_control_id)
            self._active[call_control_id] = rec
        if previous is not None:  # e.g. the rate changed: the older one ends where it is
            previous.close()
        self._log.record("recording.started", call_control_id, sample_rate=sample_rate)
        return rec

    def active(self, call_control_id: str) -> Recording | None:
        with self._lock:
            return self._active.get(call_control_id)

    def read(self, call_control_id: str) -> bytes | None:
        return read_wav(self.path(call_control_id))

    # -- the writer thread --------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="recording-writer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Finish every recording (the calls have ended by now) and stop the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            if self._thread.is_alive():  # stuck on the disk: two writers on one file would be worse
                logger.error("the recording writer did not stop within 30 s; recordings are left unfinished")
                return
            self._thread = None
        self.run_once()  # whatever the thread left, on this thread: it is gone

    def _run(self) -> None:
        while not self._stop.wait(WRITE_INTERVAL_S):
            try:
                self.run_once()
                wall = self._wall()
                if wall >= self._next_sweep:
                    self._next_sweep = wall + SWEEP_INTERVAL_S
                    self.sweep(wall)
            except Exception:  # a bug must not end every recording of the process
                logger.exception("recording writer round failed")

    def run_once(self) -> None:
        """Drain and write every recording; finish those whose call has ended."""
        now = self._clock()
        with self._lock:
            recordings = list(self._active.values())
        for rec in recordings:
            closing = rec.closing  # read first: frames put before it was set are in the buffer
            try:
                closing = self._write(rec, now, closing)
            except OSError as exc:
                logger.error("[%s] recording failed: %s", rec.call_control_id, exc)
                rec.fail(f"{type(exc).__name__}: {exc}")
                self._log.record("recording.failed", rec.call_control_id, error=rec.error)
                closing = True
            if closing:
                with self._lock:
                    if self._active.get(rec.call_control_id) is rec:
                        del self._active[rec.call_control_id]
                if rec.on_done is not None:
                    rec.on_done()

    def _write(self, rec: Recording, now: float, closing: bool) -> bool:
        """One round for `rec`; True once it is finished."""
        if rec.status != "recording":
            return True
        for gap in rec.drain(now):
            ms = max(round((gap.until - gap.since) * 1000), FRAME_MS)
            rec.gaps += 1
            rec.gap_ms += ms
            rec.frames_dropped += gap.frames
            self._metrics.inc("recording_gaps_total")
            self._metrics.inc("recording_frames_dropped_total", gap.frames)
            at_ms = rec.position(gap.since) * 1000 // rec.sample_rate
            logger.warning("[%s] recording: %d frames dropped (%d ms), the disk is not keeping up",
                           rec.call_control_id, gap.frames, ms)
            self._log.record("recording.gap", rec.call_control_id, at_ms=at_ms, duration_ms=ms, frames=gap.frames)
        late = rec.frames_late
        # To the call's end (a hole or a silent caller at the end is silence too), or what is
        # older than the reorder window.
        end = max(rec.staged_end, rec.position(rec.closed_at)) if closing else rec.position(now - REORDER_WINDOW_S)
        rec.write_until(end, self.before_write)
        if rec.frames_late > late:
            self._metrics.inc("recording_frames_late_total", rec.frames_late - late)
        if rec.written >= MAX_SAMPLES and not closing:
            rec.enabled = False
            rec.error = "the WAV size limit (4 GiB) was reached: the rest of the call is not recorded"
            logger.warning("[%s] recording: %s", rec.call_control_id, rec.error)
            closing = True
        if closing:
            rec.finish()
            self._log.record("recording.completed", rec.call_control_id, **{
                k: v for k, v in rec.info().items() if k in ("duration_ms", "gaps", "gap_ms", "frames_dropped",
                                                             "frames_late")})
        return closing

    def sweep(self, now: float) -> int:
        """Delete recordings older than the retention (by their last write, `now` in epoch
        seconds); the ones being written are kept. Returns how many were deleted."""
        if self.retention_days <= 0 or not self.directory.is_dir():
            return 0
        cutoff = now - self.retention_days * 86400
        with self._lock:
            busy = {rec.path.name for rec in self._active.values()}
        deleted = 0
        for path in self.directory.glob("*" + SUFFIX):
            if path.name in busy:
                continue
            try:
                if path.stat().st_mtime < cutoff:
                    path.unlink()
                    deleted += 1
            except FileNotFoundError:
                continue  # another node sharing the directory got it first
        if deleted:
            logger.info("deleted %d recording(s) older than %g days", deleted, self.retention_days)
            self._log.record("recording.deleted", None, count=deleted, retention_days=self.retention_days)
        return deleted
