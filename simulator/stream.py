"""Telnyx's side of one media-stream WebSocket: the frames it sends and how it plays the app's.

Telnyx connects to the app's `stream_url` and sends `connected`, `start`, `media` (the caller,
every 20 ms), `dtmf`, `mark` echoes, `error` and `stop` as JSON text frames. It accepts the
app's `media`, `mark` and `clear` frames and plays the media to the caller on a playout clock
(simulator.recorder).

A stream has no task of its own once it runs: its socket (simulator.wsclient) parses frames as
they arrive and calls the stream's handler inline, and a send is one `transport.write`; the
engine's ticker (simulator.engine) asks it for its caller frames. Media from the app is timed
by the kernel's receive stamp (simulator.stamped), so the arrival times the recordings keep do
not depend on how busy the loop is. Per-message work is a JSON parse, a base64 decode, a G.711
table lookup and a few appends; nothing is logged per frame.

The simulator follows Telnyx's public documentation (the media-streaming guide and its AsyncAPI
description, the Call Control OpenAPI spec) and its official SDK. Where those are silent, it
chooses:
- error frames are `{"event":"error","payload":{code,title,detail},"stream_id"}` without a
  sequence_number, and the socket stays open after one;
- an RTP chunk outside 20 ms … 30 s of audio is rejected (not played) with 100004
  `invalid_media`, as is an L16 payload with an odd byte count;
- in mp3 mode, a payload that is not an MP3 is ignored silently (counted); a second MP3 within
  one second of the previous one gets 100005 `rate_limit_reached`;
- media `timestamp` is the media position in milliseconds since the stream started;
  `chunk` counts media frames from "1"; `sequence_number` counts every frame but `connected`;
- after `stop` the socket is closed with 1000; a reconnect keeps the stream_id;
- `stream_bidirectional_target_legs: "opposite"` consumes the audio on the playout clock (marks
  come back) but the lone caller hears none of it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import json
import logging
import re
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import numpy as np
import soundfile as sf

from simulator import g711, wideband
from simulator.audio import CallerAudio, FloatArray, Int16Array, resample, to_pcm16
from simulator.recorder import Recorder
from simulator.stream_params import CallIdentity, StreamParams
from simulator.webhooks import iso_now
from simulator.wsclient import ConnectionClosed, HandshakeError, InvalidStatus, WebSocketClient, open_socket

if TYPE_CHECKING:
    from simulator.engine import MediaEngine

logger = logging.getLogger(__name__)

FRAME_MS = 20
FRAME_S = FRAME_MS / 1000
MIN_CHUNK_MS = 20
MAX_CHUNK_S = 30.0
# A 30 s L16 chunk at 48 kHz is 2.88 MB of audio, 3.84 MB as base64: allow it with margin.
MAX_MESSAGE_BYTES = 8 * 1024 * 1024
CLOSE_TIMEOUT_S = 2.0
MP3_MIN_INTERVAL_S = 1.0
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})

ERROR_TITLES = {100002: "unknown_error", 100003: "malformed_frame", 100004: "invalid_media",
                100005: "rate_limit_reached"}


def is_loopback_url(url: str) -> bool:
    try:
        host = urlsplit(url).hostname
    except ValueError:
        return False
    return host is not None and (host in LOOPBACK_HOSTS or host.startswith("127."))


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"))


# The media frame most apps send, in its shortest spelling. A full match is that JSON object and
# nothing else (no whitespace, escapes or repeated keys, no character JSON would reject), so it
# means what json.loads would read; anything else is parsed as JSON.
_EXACT_APP_MEDIA = re.compile(r'\{"event":"media","media":\{"payload":"([^"\\\x00-\x1f]*)"\}\}')


async def probe_socket(url: str, auth_token: str | None, start_frame: dict[str, Any], timeout: float) -> int | None:
    """Connect as Telnyx would, send `connected` + `start`, and report how the app closes.

    Returns the close code the app sent (1006 if the connection just dropped), or None if the
    app kept the socket open for `timeout` seconds.
    """
    headers = {"x-telnyx-streaming-auth-token": auth_token} if auth_token is not None else {}
    connected: dict[str, Any] = {"event": "connected", "version": "1.0.0"}
    if auth_token is not None:
        connected["x-telnyx-streaming-auth-token"] = auth_token
    try:
        ws = await open_socket(url, headers, max_size=MAX_MESSAGE_BYTES, open_timeout=timeout, close_timeout=1)
    except InvalidStatus as exc:
        return exc.status
    try:
        with contextlib.suppress(ConnectionClosed):
            ws.send_text(_dumps(connected))
            ws.send_text(_dumps(start_frame))
        # Poll for the close frame itself: the TCP close that ends the connection can lag well behind it.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ws.close_rcvd is not None:
                return ws.close_rcvd[0]
            if ws.closed:
                return ws.close_code
            await asyncio.sleep(0.01)
        return None
    finally:
        await ws.close()


@dataclass
class StreamStats:
    frames_sent: int = 0
    frames_skipped: int = 0  # backpressure: the app was not reading
    media_received: int = 0
    media_ignored: int = 0  # e.g. raw audio in mp3 mode
    bytes_received: int = 0


@dataclass
class StreamState:
    """Per call: survives reconnects. Written on the loop thread, read by tests via copies."""

    recorder: Recorder = field(default_factory=Recorder)
    caller_pos: int = 0  # samples of caller audio sent so far (at media rate)
    received: list[tuple[float, bytes]] = field(default_factory=list)
    marks_echoed: list[str] = field(default_factory=list)
    marks_cleared: list[str] = field(default_factory=list)  # echoed because of a clear
    clears_received: int = 0
    # (name, playout position in samples when echoed, end of the audio queued before it)
    mark_positions: list[tuple[str, int, int]] = field(default_factory=list)
    errors_sent: list[dict[str, Any]] = field(default_factory=list)
    sent: list[dict[str, Any]] = field(default_factory=list)  # every frame but media, as sent
    stats: StreamStats = field(default_factory=StreamStats)
    close_code: int | None = None
    close_reason: str | None = None
    upgrade_headers: dict[str, str] = field(default_factory=dict)
    cond: threading.Condition = field(default_factory=threading.Condition)  # notified on every change

    def notify(self) -> None:
        with self.cond:
            self.cond.notify_all()


# Encoded caller audio is shared by every call using the same CallerAudio instance, with the
# base64 of the frames sent so far (by byte offset): every call, and every pass of a loop,
# sends the same ones. The base64 dicts are filled from every engine's loop thread without a
# lock: a dict item assignment is atomic, and two threads can only store the same text.
_ENCODED: weakref.WeakKeyDictionary[CallerAudio, dict[tuple[str, int, str], tuple[bytes, dict[int, str]]]] = (
    weakref.WeakKeyDictionary())
_ENCODED_LOCK = threading.Lock()
_MAX_CACHED_FRAMES = 4096  # per clip and format: ~1 MB of base64 for G.711, ~3.5 MB for 16 kHz L16


_FRAMED: weakref.WeakKeyDictionary[CallerAudio, dict[tuple[str, int], tuple[list[bytes], dict[int, str]]]] = (
    weakref.WeakKeyDictionary())


def encoded_caller_frames(audio: CallerAudio, encoding: str, rate: int) -> tuple[list[bytes], dict[int, str]]:
    """G.722 / OPUS caller audio: the clip encoded as one stream, one payload per 20 ms frame,
    with the base64 of each frame index sent so far (shared like encoded_caller_audio)."""
    with _ENCODED_LOCK:
        per = _FRAMED.setdefault(audio, {})
        key = (encoding, rate)
        if key not in per:
            pcm = to_pcm16(audio.render(rate))
            per[key] = (wideband.encode_frames(pcm, encoding, rate, rate * FRAME_MS // 1000), {})
        return per[key]


def encoded_caller_audio(audio: CallerAudio, encoding: str, rate: int,
                         byteorder: str) -> tuple[bytes, dict[int, str]]:
    with _ENCODED_LOCK:
        per = _ENCODED.setdefault(audio, {})
        key = (encoding, rate, byteorder)
        if key not in per:
            per[key] = (g711.encode(to_pcm16(audio.render(rate)), encoding, l16_byteorder=byteorder), {})
        return per[key]


class MediaStream:
    """One WebSocket connection from Telnyx to the app, for one call.

    Everything here runs on the engine loop; the `on_*` callbacks run there too and must not
    block (the fake only queues webhooks from them).
    """

    def __init__(self, engine: MediaEngine, call: CallIdentity, params: StreamParams, stream_id: str,
                 caller_audio: CallerAudio, state: StreamState, *,
                 on_started: Callable[[MediaStream], None],
                 on_failed: Callable[[MediaStream, str], None],
                 on_peer_closed: Callable[[MediaStream], None],
                 on_streaming: Callable[[MediaStream], None] | None = None) -> None:
        self.engine = engine
        self.call = call
        self.params = params
        self.stream_id = stream_id
        self.state = state
        self._on_started = on_started
        self._on_streaming = on_streaming
        self._on_failed = on_failed
        self._on_peer_closed = on_peer_closed
        self.ws: WebSocketClient | None = None
        self.seq = 0
        self.chunk = 0
        self.closing = False  # we are ending this connection (stop, drop, hangup)
        self.phase = 0  # which of the engine's PHASES sub-ticks sends this stream's caller frames
        self.started = asyncio.Event()
        self._pending_marks: deque[tuple[int, str]] = deque()  # (due sample, name), due non-decreasing
        self._last_mp3 = -1e9
        enc, rate = params.media_encoding, params.media_audio_rate
        self._frame_samples = rate * FRAME_MS // 1000
        # G.722 and OPUS: one payload per frame, from a stream encoded once (simulator.wideband).
        self._framed = enc in wideband.CODECS
        self._caller_frames: list[bytes] = []
        self._caller_b64: dict[int, str]
        if self._framed:
            self._frame_bytes = 0
            silence = wideband.encode_frames(np.zeros(self._frame_samples, np.int16), enc, rate, self._frame_samples)
            self._silence_b64 = base64.b64encode(silence[0]).decode()
            self._caller = b""
            self._caller_b64 = {}
            if caller_audio.kind != "silence":
                self._caller_frames, self._caller_b64 = encoded_caller_frames(caller_audio, enc, rate)
        else:
            self._frame_bytes = self._frame_samples * g711.bytes_per_sample(enc)
            self._silence_b64 = base64.b64encode(g711.silence_payload(enc, self._frame_samples)).decode()
            self._caller, self._caller_b64 = encoded_caller_audio(caller_audio, enc, rate, params.l16_byteorder) \
                if caller_audio.kind != "silence" and enc in g711.SUPPORTED_CODECS else (b"", {})
        self._caller_loop = caller_audio.loop
        # AMR-WB: the simulator has no encoder, so it sends no media rather than bytes that are not AMR-WB.
        speaks = self._framed or enc in g711.SUPPORTED_CODECS
        if not speaks:
            logger.warning("stream %s: the simulator cannot encode %s; it sends no media frames", stream_id, enc)
        self._send_inbound = speaks and params.track in ("inbound_track", "both_tracks")
        self._send_outbound = speaks and params.track in ("outbound_track", "both_tracks")
        self._media_prefix = '{"event":"media","sequence_number":"'
        # What the app's media frames need, looked up once (params are frozen).
        self._mp3_mode = params.mode == "mp3"
        self._playout_encoding, self._playout_rate = params.playout_encoding, params.playout_rate
        self._playout_bps = g711.bytes_per_sample(params.playout_encoding) \
            if params.playout_encoding in g711.SUPPORTED_CODECS else 0  # 0: no G.711/L16 to play
        # G.722 / OPUS from the app: decoded on arrival, in order, by this stream's own decoder.
        self._playout_decoder = wideband.new_decoder(params.playout_encoding, params.playout_rate) \
            if params.playout_encoding in wideband.CODECS and not self._mp3_mode else None
        self._heard_encoder: wideband.Encoder | None = None  # the outbound track, when asked for
        self._caller_hears = params.caller_hears

    # ---- connection -------------------------------------------------------------------------

    async def run(self) -> None:
        headers = {}
        if self.params.auth_token is not None:
            headers["x-telnyx-streaming-auth-token"] = self.params.auth_token
        self.state.upgrade_headers = dict(headers)
        if not (self.params.url.startswith("ws://") or self.params.url.startswith("wss://")):
            self._on_failed(self, "connection_failed")
            return
        if not self.engine.allow_non_loopback and not is_loopback_url(self.params.url):
            logger.warning("refusing non-loopback stream_url %s (pass allow_non_loopback=True)", self.params.url)
            self._on_failed(self, "connection_failed")
            return
        try:
            self.ws = await open_socket(self.params.url, headers, max_size=MAX_MESSAGE_BYTES,
                                        open_timeout=self.engine.connect_timeout_s, close_timeout=CLOSE_TIMEOUT_S)
        except (OSError, HandshakeError, ValueError, TimeoutError) as exc:
            logger.info("stream %s: cannot connect to %s: %s", self.stream_id, self.params.url, exc)
            self._on_failed(self, "connection_failed")
            return
        if self.closing:  # hung up or replaced while connecting
            await self.ws.close(1000)
            return
        self._on_started(self)
        connected: dict[str, Any] = {"event": "connected", "version": "1.0.0"}
        if self.params.auth_token is not None:
            connected["x-telnyx-streaming-auth-token"] = self.params.auth_token
        now = time.monotonic()
        self.state.recorder.begin(now, self.params.playout_rate)
        try:
            self._send_json(connected)
            self._send_json(self._start_frame())
        except ConnectionClosed:
            await self.ws.wait_closed()  # the server is closing: its close code comes with the end
            self._peer_closed()
            return
        self.started.set()
        if self._on_streaming is not None:
            self._on_streaming(self)  # before anything the app sent, its close included, is handled
        self.state.notify()
        self.engine.join(self)
        self.ws.attach(self._handle, self._socket_closed)

    def _start_frame(self) -> dict[str, Any]:
        self.seq += 1
        start: dict[str, Any] = {"user_id": self.call.user_id, "call_control_id": self.call.call_control_id,
                                 "call_session_id": self.call.call_session_id, "from": self.call.from_,
                                 "to": self.call.to}
        if self.call.tags:
            start["tags"] = list(self.call.tags)
        if self.params.client_state is not None:
            start["client_state"] = self.params.client_state
        if self.params.custom_parameters is not None:
            start["custom_parameters"] = dict(self.params.custom_parameters)
        start["media_format"] = {"encoding": self.params.media_encoding, "sample_rate": self.params.media_rate,
                                 "channels": 1}
        return {"event": "start", "sequence_number": str(self.seq), "stream_id": self.stream_id, "start": start}

    def _socket_closed(self) -> None:
        if not self.closing:
            self._peer_closed()

    def _peer_closed(self) -> None:
        self.engine.leave(self)
        if self.ws is not None:
            self.state.close_code = self.ws.close_code
            self.state.close_reason = self.ws.close_reason
        self.state.recorder.truncate(time.monotonic())
        self._pending_marks.clear()
        self.state.notify()
        if not self.closing:
            self.closing = True
            self._on_peer_closed(self)

    async def stop(self, *, send_stop: bool = True) -> None:
        """Telnyx ends the stream: `stop` frame, then a normal close."""
        self.closing = True
        self.engine.leave(self)
        self.state.recorder.truncate(time.monotonic())
        self._pending_marks.clear()
        if self.ws is None:
            return
        if send_stop and self.started.is_set():
            self.seq += 1
            stop = {"event": "stop", "sequence_number": str(self.seq),
                    "stop": {"user_id": self.call.user_id, "call_control_id": self.call.call_control_id},
                    "stream_id": self.stream_id}
            with contextlib.suppress(ConnectionClosed):
                self._send_json(stop)
        await self.ws.close(1000)
        self.state.notify()

    def drop(self) -> None:
        """Lose the TCP connection: no stop frame, no close handshake."""
        self.closing = True
        self.engine.leave(self)
        self.state.recorder.truncate(time.monotonic())
        self._pending_marks.clear()
        if self.ws is not None:
            self.ws.abort()
        self.state.notify()

    # ---- frames Telnyx sends ---------------------------------------------------------------

    def _send_json(self, frame: dict[str, Any]) -> None:
        assert self.ws is not None
        self.state.sent.append(frame)
        self.ws.send_text(_dumps(frame))

    async def send_raw(self, message: str | bytes) -> None:
        """Anything at all, as Telnyx's side of the socket (for robustness tests of the app)."""
        if self.ws is None or self.closing:
            raise RuntimeError("stream is not connected")
        self.ws.send(message)

    async def send_dtmf(self, digit: str) -> None:
        if self.ws is None or self.closing:
            raise RuntimeError("stream is not connected")
        self.seq += 1
        self._send_json({"event": "dtmf", "stream_id": self.stream_id, "occurred_at": iso_now(),
                         "sequence_number": str(self.seq), "dtmf": {"digit": digit}})

    def _echo_mark(self, name: str, due: int, cleared: bool = False) -> None:
        self.seq += 1
        self.state.mark_positions.append((name, self.state.recorder.position(time.monotonic()), due))
        self.state.marks_echoed.append(name)
        if cleared:
            self.state.marks_cleared.append(name)
        with contextlib.suppress(ConnectionClosed):
            self._send_json({"event": "mark", "stream_id": self.stream_id, "sequence_number": str(self.seq),
                             "mark": {"name": name}})
        self.state.notify()

    def _error(self, code: int, detail: str) -> None:
        frame = {"event": "error", "payload": {"code": code, "title": ERROR_TITLES[code], "detail": detail},
                 "stream_id": self.stream_id}
        self.state.errors_sent.append(frame)
        with contextlib.suppress(ConnectionClosed):
            self._send_json(frame)
        self.state.notify()

    def tick(self, now: float) -> list[str]:
        """Frames due at this 20 ms tick: due mark echoes are returned separately by due_marks."""
        out: list[str] = []
        chunk_ms = self.chunk * FRAME_MS
        if self._send_inbound:
            self.seq += 1
            self.chunk += 1
            out.append(self._media_text("inbound", self._caller_frame(), chunk_ms))
        if self._send_outbound:
            self.seq += 1
            if not self._send_inbound:
                self.chunk += 1
            out.append(self._media_text("outbound", self._heard_frame(now), chunk_ms))
        return out

    def _media_text(self, track: str, payload_b64: str, timestamp_ms: int) -> str:
        return (f'{self._media_prefix}{self.seq}","media":{{"track":"{track}","chunk":"{self.chunk}",'
                f'"timestamp":"{timestamp_ms}","payload":"{payload_b64}"}},"stream_id":"{self.stream_id}"}}')

    def _caller_frame(self) -> str:
        if self._framed:
            return self._caller_framed()
        data, size = self._caller, self._frame_bytes
        bps = size // self._frame_samples
        pos = self.state.caller_pos * bps
        self.state.caller_pos += self._frame_samples
        if not data or (not self._caller_loop and pos >= len(data)):
            return self._silence_b64
        if self._caller_loop:
            pos %= len(data)
        cached = self._caller_b64.get(pos)
        if cached is not None:
            return cached
        piece = data[pos:pos + size]
        missing = size - len(piece)
        if missing:
            piece += data[:missing] if self._caller_loop and len(data) >= missing else \
                g711.silence_payload(self.params.media_encoding, missing // bps)
        text = base64.b64encode(piece).decode()
        if len(self._caller_b64) < _MAX_CACHED_FRAMES:
            self._caller_b64[pos] = text
        return text

    def _caller_framed(self) -> str:
        frames = self._caller_frames
        index = self.state.caller_pos // self._frame_samples
        self.state.caller_pos += self._frame_samples
        if not frames or (not self._caller_loop and index >= len(frames)):
            return self._silence_b64
        index %= len(frames)
        cached = self._caller_b64.get(index)
        if cached is None:
            cached = base64.b64encode(frames[index]).decode()
            if len(self._caller_b64) < _MAX_CACHED_FRAMES:
                self._caller_b64[index] = cached
        return cached

    def _heard_frame(self, now: float) -> str:
        rec = self.state.recorder
        rate = self.params.playout_rate
        n = rate * FRAME_MS // 1000
        pcm = rec.render(now, max(0, rec.position(now) - n), n)
        media_rate = self.params.media_audio_rate
        if rate != media_rate:
            pcm = to_pcm16(resample((pcm / 32768).astype(np.float32), rate, media_rate))
        if self._framed:
            if self._heard_encoder is None:
                self._heard_encoder = wideband.new_encoder(self.params.media_encoding, media_rate)
            return base64.b64encode(self._heard_encoder.encode(pcm)).decode()
        return base64.b64encode(g711.encode(pcm, self.params.media_encoding,
                                            l16_byteorder=self.params.l16_byteorder)).decode()

    def due_marks(self, now: float) -> list[tuple[int, str]]:
        if not self._pending_marks:
            return []
        pos = self.state.recorder.position(now)
        due: list[tuple[int, str]] = []
        while self._pending_marks and self._pending_marks[0][0] <= pos:
            due.append(self._pending_marks.popleft())
        return due

    # ---- frames the app sends --------------------------------------------------------------

    def _handle(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._error(100003, "Binary frames are not accepted; send JSON text frames.")
            return
        exact = _EXACT_APP_MEDIA.fullmatch(message)
        if exact is not None:
            self._media(exact.group(1))
            return
        try:
            frame = json.loads(message)
        except ValueError:
            self._error(100003, "Frame is not valid JSON.")
            return
        event = frame.get("event") if isinstance(frame, dict) else None
        if event == "media":
            media = frame.get("media")
            payload = media.get("payload") if isinstance(media, dict) else None
            if not isinstance(payload, str):
                self._error(100003, "A media frame needs media.payload as a string.")
                return
            self._media(payload)
        elif event == "mark":
            mark = frame.get("mark")
            name = mark.get("name") if isinstance(mark, dict) else None
            if not isinstance(name, str):
                self._error(100003, "A mark frame needs mark.name as a string.")
                return
            self._mark(name)
        elif event == "clear":
            self._clear()
        else:
            self._error(100003, f"Unknown or missing event {event!r}.")

    def _media(self, payload_b64: str) -> None:
        assert self.ws is not None
        now = self.ws.received_at  # when it reached us, however busy this loop was since
        try:
            # The verdicts of base64.b64decode(validate=True), without its regex on every frame.
            payload = binascii.a2b_base64(payload_b64, strict_mode=True)
        except ValueError:  # binascii.Error, or a str that is not ASCII
            self._error(100004, "Media provided was not base64 encoded.")
            return
        st = self.state
        st.received.append((now, payload))
        stats = st.stats
        stats.media_received += 1
        stats.bytes_received += len(payload)
        if self._mp3_mode:
            self._mp3(payload, now)
            return
        if self._playout_decoder is not None:
            self._wideband(payload, now)
            return
        enc, rate, bps = self._playout_encoding, self._playout_rate, self._playout_bps
        if not bps:
            stats.media_ignored += 1
            return
        if len(payload) % bps:
            self._error(100004, f"L16 media must have an even number of bytes (got {len(payload)}).")
            return
        samples = len(payload) // bps
        if samples * 1000 < MIN_CHUNK_MS * rate or samples > MAX_CHUNK_S * rate:
            self._error(100004, f"Media chunks must hold {MIN_CHUNK_MS} ms to {MAX_CHUNK_S:g} s of audio "
                                f"(got {samples * 1000 / rate:g} ms).")
            return
        st.recorder.queue_encoded(now, payload, enc, self.params.l16_byteorder, samples, self._caller_hears)

    def _wideband(self, payload: bytes, now: float) -> None:
        """G.722 or OPUS: one payload is one chunk; checked for length, decoded now (stateful)."""
        assert self._playout_decoder is not None
        rate = self._playout_rate
        try:
            samples = wideband.payload_samples(self._playout_encoding, payload, rate)
            if samples * 1000 < MIN_CHUNK_MS * rate or samples > MAX_CHUNK_S * rate:
                self._error(100004, f"Media chunks must hold {MIN_CHUNK_MS} ms to {MAX_CHUNK_S:g} s of audio "
                                    f"(got {samples * 1000 / rate:g} ms).")
                return
            pcm = self._playout_decoder.decode(payload)
        except wideband.DecodeError as exc:
            self._error(100004, f"{self._playout_encoding} media does not decode: {exc}")
            return
        self.state.recorder.queue(now, pcm, self._caller_hears)

    def _mp3(self, payload: bytes, now: float) -> None:
        pcm = _decode_mp3(payload, self.params.playout_rate)
        if pcm is None:
            # Telnyx plays only MP3 files in this mode; raw RTP audio goes nowhere.
            self.state.stats.media_ignored += 1
            return
        if now - self._last_mp3 < MP3_MIN_INTERVAL_S:
            self._error(100005, "Too many requests")
            return
        self._last_mp3 = now
        self.state.recorder.queue(now, pcm, self.params.caller_hears)

    def _mark(self, name: str) -> None:
        rec = self.state.recorder
        now = time.monotonic()
        if rec.play_end <= rec.position(now) and not self._pending_marks:
            self._echo_mark(name, rec.play_end)
        else:
            self._pending_marks.append((rec.play_end, name))

    def _clear(self) -> None:
        self.state.clears_received += 1
        self.state.recorder.truncate(time.monotonic())
        while self._pending_marks:
            due, name = self._pending_marks.popleft()
            self._echo_mark(name, due, cleared=True)


def _looks_like_mp3(data: bytes) -> bool:
    if data[:3] == b"ID3":
        return True
    if len(data) < 4 or data[0] != 0xFF or (data[1] & 0xE0) != 0xE0:
        return False
    version, layer = (data[1] >> 3) & 3, (data[1] >> 1) & 3
    bitrate, rate = data[2] >> 4, (data[2] >> 2) & 3
    return version != 1 and layer != 0 and bitrate not in (0, 15) and rate != 3


def _decode_mp3(data: bytes, rate: int) -> Int16Array | None:
    if not _looks_like_mp3(data):
        return None
    try:
        samples, file_rate = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return None
    mono: FloatArray = np.asarray(samples.mean(axis=1), dtype=np.float32)
    return to_pcm16(resample(mono, int(file_rate), rate))
