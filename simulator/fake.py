"""FakeTelnyx: REST fake + signed webhooks + media-stream client, with calls you can place.

Call life cycle as Telnyx runs it for an inbound call:
place_call -> `call.initiated` (incoming, parked) -> app `answer` -> `call.answered`
(-> stream, if answer carried stream_url) -> app `streaming_start` -> socket connects ->
`streaming.started` + `connected`/`start`/`media`... -> hangup (either side) -> `stop`,
`streaming.stopped`, `call.hangup`. `playback_start`/`playback_stop` send `call.playback.started`
and `call.playback.ended` without playing anything (simulator.playback).

Commands are answered first; webhooks and socket work happen afterwards on other threads.

Choices where Telnyx's behaviour is undocumented: a second `answer` is accepted and does
nothing; `streaming_start` on a call that already streams replaces the stream (stop, then a new
stream_id); `streaming_stop` without a stream is a no-op but one naming a different stream_id
is refused (422 10015); `playback_start`/`streaming_*` before answer give 90034; the app closing
the socket produces `streaming.stopped`; a dropped socket produces no webhook.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

from simulator.audio import CallerAudio, Int16Array, to_pcm16
from simulator.engine import MediaEngine
from simulator.playback import DEFAULT_SECONDS_PER_PLAY, Playbacks
from simulator.rest import CommandRejected, RecordedCommand, RestFake
from simulator.stream import MediaStream, StreamState, is_loopback_url, probe_socket
from simulator.stream_params import CallIdentity, StreamParams
from simulator.webhooks import Delivery, WebhookEvent, WebhookSender, WebhookSigner, iso_now, make_event

logger = logging.getLogger(__name__)

CONNECTION_ID = "1684641123236054244"
ANSWER_REQUIRED = frozenset({"streaming_start", "streaming_stop", "playback_start", "playback_stop"})


class SimCall:
    """One simulated inbound call. Sync methods are thread-safe and run their work on the loop."""

    def __init__(self, fake: FakeTelnyx, *, from_: str, to: str, caller_audio: CallerAudio,
                 client_state: str | None, tags: tuple[str, ...]) -> None:
        self._fake = fake
        self.call_control_id = "v3:" + secrets.token_urlsafe(40)
        self.call_leg_id = str(uuid.uuid4())
        self.call_session_id = str(uuid.uuid4())
        self.from_, self.to = from_, to
        self.caller_audio = caller_audio
        self.client_state = client_state
        self.tags = tags
        self.start_time = iso_now()
        self.identity = CallIdentity(user_id=fake.user_id, call_control_id=self.call_control_id,
                                     call_session_id=self.call_session_id, from_=from_, to=to, tags=tags)
        self.media = StreamState()
        self._lock = threading.Lock()  # guards state, stream, stream_params, streaming_status, stream_started
        self.state = "parked"  # parked -> answered -> ended
        self.streaming_status = "none"  # connecting | streaming | failed | stopped | dropped | closed_by_app
        self.stream_started = False  # `start` went out on the current socket (which may have closed since)
        self.stream: MediaStream | None = None
        self.stream_params: StreamParams | None = None
        self.stream_id: str | None = None
        self.hangup_cause: str | None = None
        self.webhooks: list[WebhookEvent] = []
        # Runs on the engine loop: commands reach it through engine.call_soon.
        self.playbacks = Playbacks(self.call_control_id, emit=self._playback_event,
                                   schedule=lambda delay, fn: fake.engine.loop.call_later(delay, fn),
                                   seconds_per_play=fake.playback_seconds)

    # ---- observing -------------------------------------------------------------------------

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        cond = self.media.cond
        with cond:
            if not cond.wait_for(predicate, timeout):
                raise TimeoutError(f"{self.call_control_id}: {what} not reached within {timeout} s")

    def wait_state(self, state: str, timeout: float = 5.0) -> None:
        self._wait(lambda: self.state == state, timeout, f"state {state!r}")

    def wait_streaming(self, timeout: float = 5.0) -> str:
        """Block until `start` has been sent on the current socket; returns the stream_id.

        Waits on `stream_started`, not on the status: an app that closes right after `start`
        moves the status on to "closed_by_app" before a waiter may have looked.
        """
        self._wait(lambda: self.stream_started or self.streaming_status == "failed" or self.state == "ended",
                   timeout, "streaming")
        if not self.stream_started or self.stream_id is None:
            raise RuntimeError(f"{self.call_control_id}: streaming did not start ({self.streaming_status})")
        return self.stream_id

    def wait_status(self, status: str, timeout: float = 5.0) -> None:
        self._wait(lambda: self.streaming_status == status, timeout, f"streaming status {status!r}")

    def wait_mark(self, name: str, timeout: float = 5.0) -> None:
        self._wait(lambda: name in self.media.marks_echoed, timeout, f"mark {name!r}")

    def wait_received(self, count: int, timeout: float = 5.0) -> None:
        """Block until the app has sent at least `count` media messages."""
        self._wait(lambda: len(self.media.received) >= count, timeout, f"{count} media messages")

    def wait_errors(self, count: int, timeout: float = 5.0) -> None:
        self._wait(lambda: len(self.media.errors_sent) >= count, timeout, f"{count} error frames")

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
        self._wait(predicate, timeout, what)

    @property
    def received(self) -> list[tuple[float, bytes]]:
        return list(self.media.received)

    @property
    def marks_echoed(self) -> list[str]:
        return list(self.media.marks_echoed)

    @property
    def marks_cleared(self) -> list[str]:
        return list(self.media.marks_cleared)

    @property
    def mark_positions(self) -> list[tuple[str, int, int]]:
        """(name, playout sample when echoed, sample where the audio before it ended)."""
        return list(self.media.mark_positions)

    @property
    def errors_sent(self) -> list[dict[str, Any]]:
        return list(self.media.errors_sent)

    @property
    def frames_sent(self) -> list[dict[str, Any]]:
        """Every frame sent to the app except media, as dicts, in order."""
        return list(self.media.sent)

    @property
    def close_code(self) -> int | None:
        return self.media.close_code

    @property
    def sample_rate(self) -> int:
        return self.media.recorder.rate or (self.stream_params.playout_rate if self.stream_params else 8000)

    def heard_pcm(self) -> Int16Array:
        """What the caller heard, from the first `start`, played so far (gaps as silence)."""
        return self.media.recorder.render(time.monotonic())

    def caller_pcm(self) -> Int16Array:
        """What the caller said (as sent in inbound frames), at the media rate."""
        params = self.stream_params
        rate = params.media_audio_rate if params else 8000
        clip = self.caller_audio.render(rate)
        n = self.media.caller_pos
        if len(clip) == 0:
            return np.zeros(n, dtype=np.int16)
        if self.caller_audio.loop:
            clip = np.tile(clip, n // len(clip) + 1)
        out = np.zeros(n, dtype=np.float32)
        out[: min(n, len(clip))] = clip[:n]
        return to_pcm16(out)

    def save_wav(self, path: str | Path) -> Path:
        path = Path(path)
        sf.write(path, self.heard_pcm(), self.sample_rate, subtype="PCM_16")
        return path

    # ---- acting as Telnyx / the caller ------------------------------------------------------

    def send_dtmf(self, digits: str, timeout: float = 5.0) -> None:
        stream = self._live_stream()
        for digit in digits:
            self._fake.engine.submit(stream.send_dtmf(digit)).result(timeout)

    def send_raw(self, message: str | bytes, timeout: float = 5.0) -> None:
        """Send any frame (text or binary) to the app on the live socket, as if from Telnyx."""
        stream = self._live_stream()
        self._fake.engine.submit(stream.send_raw(message)).result(timeout)

    def idle(self) -> bool:
        """True when nothing the app sent is still queued for playout."""
        rec = self.media.recorder
        return rec.origin is None or rec.play_end <= rec.position(time.monotonic())

    @property
    def clears_received(self) -> int:
        return self.media.clears_received

    def drop_socket(self, timeout: float = 5.0) -> None:
        """Lose the connection without `stop` (network failure)."""
        stream = self._live_stream()

        def drop() -> None:
            stream.drop()
            self._set_status("dropped")

        self._fake.engine.call_soon(drop)
        self.wait_status("dropped", timeout)

    def reconnect(self, timeout: float = 5.0) -> str:
        """Open a new socket for the same call and stream_id: `connected` + `start` again."""
        with self._lock:
            params, stream_id, old = self.stream_params, self.stream_id, self.stream
            if params is None or stream_id is None or self.state == "ended":
                raise RuntimeError("nothing to reconnect")
            self.stream_started = False
        self._fake.engine.submit(self._fake._restart(self, old, params, stream_id, webhook=False)).result(timeout)
        return self.wait_streaming(timeout)

    def hangup(self, cause: str = "normal_clearing", source: str = "caller", timeout: float = 5.0) -> None:
        """The caller hangs up: `stop` frame, `streaming.stopped`, then `call.hangup`."""
        if self._fake._begin_hangup(self, cause):
            self._fake.engine.submit(self._fake._finish_hangup(self, cause, source, None)).result(timeout)

    def redeliver(self, event: WebhookEvent | str) -> None:
        """Deliver an already sent webhook again (same data.id, next attempt number)."""
        self._fake.redeliver(self._event(event))

    def _event(self, event: WebhookEvent | str) -> WebhookEvent:
        if isinstance(event, WebhookEvent):
            return event
        for ev in reversed(self.webhooks):
            if ev.event_type == event or ev.id == event:
                return ev
        raise KeyError(event)

    def _live_stream(self) -> MediaStream:
        with self._lock:
            stream = self.stream
        if stream is None or self.streaming_status != "streaming":
            raise RuntimeError(f"{self.call_control_id}: no live stream ({self.streaming_status})")
        return stream

    def _set_status(self, status: str) -> None:
        with self._lock:
            self.streaming_status = status
        self.media.notify()

    def _playback_event(self, event_type: str, fields: dict[str, Any]) -> None:
        self._fake._webhook(self, event_type, self._payload(**fields))

    def _payload(self, **extra: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {"call_control_id": self.call_control_id, "connection_id": CONNECTION_ID,
                                   "call_leg_id": self.call_leg_id, "call_session_id": self.call_session_id,
                                   "client_state": self.client_state}
        payload.update(extra)
        return payload


class FakeTelnyx:
    """Telnyx on loopback. Use as a context manager, or start()/stop()."""

    def __init__(self, api_key: str = "KEY", *, webhook_url: str | None = None, signing_seed: bytes | None = None,
                 port: int = 0, allow_non_loopback: bool = False, max_calls: int = 1000,
                 max_call_seconds: float = 3600.0, webhook_workers: int = 4, webhook_timeout_s: float = 2.0,
                 webhook_max_attempts: int = 3, webhook_retry_delay_s: float = 0.25,
                 l16_byteorder: str = "big", dedupe_window_s: float = 60.0,
                 playback_seconds: float = DEFAULT_SECONDS_PER_PLAY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.api_key = api_key
        self.playback_seconds = playback_seconds  # how long one play of an audio_url lasts (simulator.playback)
        self.allow_non_loopback = allow_non_loopback
        self.max_calls = max_calls
        self.max_call_seconds = max_call_seconds
        self.l16_byteorder = l16_byteorder
        self.user_id = str(uuid.uuid4())
        self.signer = WebhookSigner(signing_seed)
        self._webhook_url: str | None = None
        if webhook_url is not None:
            self.webhook_url = webhook_url
        self._lock = threading.Lock()  # guards calls
        self.calls: dict[str, SimCall] = {}
        self.rest = RestFake(api_key, self._execute, port=port, dedupe_window_s=dedupe_window_s, clock=clock)
        self.engine = MediaEngine(allow_non_loopback=allow_non_loopback)
        self._webhook_opts = {"workers": webhook_workers, "timeout_s": webhook_timeout_s,
                              "max_attempts": webhook_max_attempts, "retry_delay_s": webhook_retry_delay_s}
        self.sender: WebhookSender | None = None
        self._started = False

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> FakeTelnyx:
        if self._started:
            return self
        self.engine.start()
        self.sender = WebhookSender(self.signer, lambda: self._webhook_url, **self._webhook_opts)  # type: ignore[arg-type]
        self.rest.start()
        self._started = True
        return self

    def stop(self) -> None:
        if not self._started:
            return
        self._started = False
        self.rest.stop()
        self.engine.stop()
        if self.sender is not None:
            self.sender.close()

    def __enter__(self) -> FakeTelnyx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- configuration and observation -----------------------------------------------------

    @property
    def base_url(self) -> str:
        return self.rest.base_url

    @property
    def public_key(self) -> str:
        return self.signer.public_key

    @property
    def webhook_url(self) -> str | None:
        return self._webhook_url

    @webhook_url.setter
    def webhook_url(self, url: str | None) -> None:
        if url is not None and not self.allow_non_loopback and not is_loopback_url(url):
            raise ValueError(f"refusing non-loopback webhook URL {url!r} (pass allow_non_loopback=True)")
        self._webhook_url = url

    @property
    def commands(self) -> list[RecordedCommand]:
        return self.rest.commands

    def commands_for(self, action: str | None = None, call: SimCall | None = None) -> list[RecordedCommand]:
        return [c for c in self.rest.commands if (action is None or c.action == action)
                and (call is None or c.call_control_id == call.call_control_id)]

    @property
    def deliveries(self) -> list[Delivery]:
        return self.sender.deliveries if self.sender else []

    def fail_next(self, action: str, status: int = 500, times: int = 1, delay_s: float = 0.0) -> None:
        """See RestFake.fail_next: the next `times` `action` commands ("*" = any) answer `status`."""
        self.rest.fail_next(action, status, times, delay_s)

    def sign(self, body: bytes | str, timestamp: str | int) -> str:
        """The telnyx-signature-ed25519 value for `body` sent with `timestamp` (for hand-made webhooks)."""
        text = body.decode() if isinstance(body, bytes) else body
        return self.signer.headers(text, int(timestamp))["telnyx-signature-ed25519"]

    def probe_socket(self, url: str, *, auth_token: str | None = None, start: dict[str, Any] | None = None,
                     timeout: float = 5.0) -> int | None:
        """Open a bare stream socket to `url` as Telnyx would (connected + `start`, by default for
        an unknown call) and return the app's close code, or the HTTP status if it refused the
        upgrade; None if it stayed open for `timeout` s."""
        if not self.allow_non_loopback and not is_loopback_url(url):
            raise ValueError(f"refusing non-loopback stream URL {url!r}")
        start = start or {"event": "start", "sequence_number": "1", "stream_id": str(uuid.uuid4()),
                          "start": {"user_id": self.user_id, "call_control_id": "v3:probe-" + secrets.token_urlsafe(8),
                                    "call_session_id": str(uuid.uuid4()), "from": "+15550100001",
                                    "to": "+15550100002",
                                    "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}}
        return self.engine.submit(probe_socket(url, auth_token, start, timeout)).result(timeout * 2 + 5)

    def clear_faults(self) -> None:
        self.rest.clear_faults()

    def hold_webhooks(self) -> None:
        """Hold webhooks back (to reorder them on release)."""
        self._require_sender().hold()

    def release_webhooks(self, order: Callable[[list[WebhookEvent]], list[WebhookEvent]] | None = None) -> list[
            WebhookEvent]:
        """Deliver held webhooks in `order(events)`; default: reversed."""
        return self._require_sender().release(order)

    def redeliver(self, event: WebhookEvent) -> None:
        self._require_sender().send(WebhookEvent(event.call_control_id, event.event_type, event.data,
                                                 attempts=event.attempts))

    def wait_webhooks_idle(self, timeout: float = 10.0) -> bool:
        return self._require_sender().wait_idle(timeout)

    def _require_sender(self) -> WebhookSender:
        if self.sender is None:
            raise RuntimeError("FakeTelnyx not started")
        return self.sender

    # ---- placing calls ---------------------------------------------------------------------

    def place_call(self, from_: str = "+15550100001", to: str = "+15550100002",
                   caller_audio: CallerAudio | None = None, *, client_state: str | None = None,
                   tags: tuple[str, ...] = ()) -> SimCall:
        """An incoming call arrives: sends `call.initiated` and waits for the app's commands."""
        if not self._started:
            raise RuntimeError("FakeTelnyx not started")
        if self._webhook_url is None:
            raise RuntimeError("set webhook_url before placing calls")
        with self._lock:
            live = sum(1 for c in self.calls.values() if c.state != "ended")
            if live >= self.max_calls:
                raise RuntimeError(f"max_calls={self.max_calls} calls are already live")
            call = SimCall(self, from_=from_, to=to, caller_audio=caller_audio or CallerAudio.silence(),
                           client_state=client_state, tags=tags)
            self.calls[call.call_control_id] = call
        self._webhook(call, "call.initiated", call._payload(
            caller_id_name=from_, direction="incoming", state="parked", start_time=call.start_time,
            offered_codecs="PCMU,PCMA", **{"from": from_, "to": to}))
        self.engine.call_later(self.max_call_seconds, lambda: self._time_limit(call))
        return call

    def call(self, call_control_id: str) -> SimCall:
        with self._lock:
            return self.calls[call_control_id]

    def _time_limit(self, call: SimCall) -> None:
        if self._begin_hangup(call, "time_limit"):
            self.engine.loop.create_task(self._finish_hangup(call, "time_limit", "unknown", None))

    def _webhook(self, call: SimCall, event_type: str, payload: dict[str, Any]) -> WebhookEvent:
        event = make_event(call.call_control_id, event_type, payload)
        call.webhooks.append(event)
        self._require_sender().send(event)
        return event

    # ---- the actions (REST request threads) -------------------------------------------------

    def _execute(self, action: str, ccid: str, body: dict[str, Any]) -> bool:
        with self._lock:
            call = self.calls.get(ccid)
        if call is None:
            raise CommandRejected(422, "90015", "Invalid Call Control ID",
                                  "The call_control_id provided was not valid.", "/call_control_id")
        if call.state == "ended":
            raise CommandRejected(422, "90018", "Call has already ended",
                                  "This call is no longer active and can't receive commands.")
        if action in ANSWER_REQUIRED and call.state != "answered":
            raise CommandRejected(422, "90034", "Call not answered yet",
                                  "This call must be answered before it can receive this command.")
        if body.get("client_state") is not None:
            call.client_state = body["client_state"]
        if action == "answer":
            self._answer(call, body)
        elif action == "streaming_start":
            self._start_stream(call, body)
        elif action == "streaming_stop":
            self._stop_stream(call, body)
        elif action == "playback_start":
            self.engine.call_soon(lambda: call.playbacks.start(body))
        elif action == "playback_stop":
            self.engine.call_soon(lambda: call.playbacks.stop(body))
        elif action == "hangup" and self._begin_hangup(call, "normal_clearing"):
            self.engine.spawn(self._finish_hangup(call, "normal_clearing", "callee", body.get("client_state")))
        return True

    def _answer(self, call: SimCall, body: dict[str, Any]) -> None:
        with call._lock:
            if call.state == "answered":
                return
            call.state = "answered"
        call.media.notify()
        self._webhook(call, "call.answered", call._payload(
            start_time=call.start_time, state="answered", **{"from": call.from_, "to": call.to}))
        if body.get("stream_url"):
            self._start_stream(call, body)

    def _start_stream(self, call: SimCall, body: dict[str, Any]) -> None:
        if not body.get("stream_url"):
            raise CommandRejected(422, "10015", "Bad Request", "'stream_url' is required.", "/stream_url")
        params = StreamParams.from_command(body, l16_byteorder=self.l16_byteorder)
        stream_id = str(uuid.uuid4())
        with call._lock:
            old = call.stream
            call.stream_params, call.stream_id = params, stream_id
            call.streaming_status = "connecting"
            call.stream_started = False
        self.engine.spawn(self._restart(call, old, params, stream_id, webhook=True))

    def _stop_stream(self, call: SimCall, body: dict[str, Any]) -> None:
        wanted = body.get("stream_id")
        with call._lock:
            stream = call.stream
        if stream is None or call.streaming_status not in ("streaming", "connecting"):
            return
        if wanted is not None and wanted != stream.stream_id:
            raise CommandRejected(422, "10015", "Bad Request", f"Stream {wanted} is not active on this call.",
                                  "/stream_id")

        async def stop() -> None:
            await stream.stop()
            with call._lock:
                current = call.stream is stream
            if current:  # a streaming_start may have replaced it while it was closing
                call._set_status("stopped")
            self._webhook(call, "streaming.stopped", call._payload(stream_url=stream.params.url))

        self.engine.spawn(stop())

    # ---- loop-side work --------------------------------------------------------------------

    async def _restart(self, call: SimCall, old: MediaStream | None, params: StreamParams, stream_id: str,
                       *, webhook: bool) -> None:
        if old is not None and not old.closing:
            await old.stop()
            if webhook:
                self._webhook(call, "streaming.stopped", call._payload(stream_url=old.params.url))
        if call.state == "ended":
            return

        def started(s: MediaStream) -> None:
            if webhook:
                self._webhook(call, "streaming.started", call._payload(stream_url=s.params.url))

        def failed(s: MediaStream, reason: str) -> None:
            call._set_status("failed")
            self._webhook(call, "streaming.failed", call._payload(
                failure_reason=reason, stream_id=s.stream_id,
                stream_params={"stream_url": s.params.url, "track": s.params.track}, stream_type="websocket"))

        def peer_closed(s: MediaStream) -> None:
            call._set_status("closed_by_app")
            self._webhook(call, "streaming.stopped", call._payload(stream_url=s.params.url))

        def streaming(s: MediaStream) -> None:
            # Called as `start` goes out, so an app that closes at once is seen closing after it.
            with call._lock:
                call.stream_started = True
                call.streaming_status = "streaming"
            call.media.notify()

        stream = MediaStream(self.engine, call.identity, params, stream_id, call.caller_audio, call.media,
                             on_started=started, on_failed=failed, on_peer_closed=peer_closed,
                             on_streaming=streaming)
        with call._lock:
            call.stream = stream
        task = self.engine.loop.create_task(stream.run())
        await stream_started_or_done(stream, task)

    def _begin_hangup(self, call: SimCall, cause: str) -> bool:
        """Mark the call ended now (later commands get 90018); False if it already was."""
        with call._lock:
            if call.state == "ended":
                return False
            call.state = "ended"
            call.hangup_cause = cause
        call.media.notify()
        return True

    async def _finish_hangup(self, call: SimCall, cause: str, source: str, client_state: str | None) -> None:
        with call._lock:
            stream = call.stream
        if stream is not None and not stream.closing:
            was_streaming = stream.started.is_set()
            await stream.stop()
            call._set_status("stopped")
            if was_streaming:
                self._webhook(call, "streaming.stopped", call._payload(stream_url=stream.params.url))
        call.media.recorder.end(time.monotonic())
        call.playbacks.hangup()
        stats = call.media.stats
        payload = call._payload(
            hangup_cause=cause, hangup_source=source, sip_hangup_cause="200" if cause == "normal_clearing" else "",
            start_time=call.start_time, end_time=iso_now(), state="hangup",
            call_quality_stats={"inbound": {"packet_count": str(stats.frames_sent), "skip_packet_count":
                                            str(stats.frames_skipped)},
                                "outbound": {"packet_count": str(stats.media_received), "skip_packet_count": "0"}},
            **{"from": call.from_, "to": call.to})
        if client_state is not None:
            payload["client_state"] = client_state
        self._webhook(call, "call.hangup", payload)
        call.media.notify()


async def stream_started_or_done(stream: MediaStream, task: asyncio.Task[None]) -> None:
    """Wait until the stream sent `start`, or its connection attempt ended."""
    waiter = asyncio.ensure_future(stream.started.wait())
    await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
