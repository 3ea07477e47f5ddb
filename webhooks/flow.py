"""What each Call Control event does to a call.

Telnyx may deliver an event twice, late or out of order, so every step is idempotent: commands
carry a command_id derived from the call, a session is created by whichever event arrives
first, and an ended call is never revived.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from typing import Any

from eventlog import utc_now
from runtime import Runtime
from streams.session import CallSession
from streams.status import LIVE, CallStatus, InjectionStatus
from webhooks.events import WebhookEvent

logger = logging.getLogger(__name__)
CALL_ENDED = "90018"  # Telnyx's code for a command on a call that has ended


def stream_params(rt: Runtime, call_control_id: str, stream_url: str) -> dict[str, Any]:
    c = rt.config
    return {
        "stream_url": stream_url,
        "stream_track": c.STREAM_TRACK,
        "stream_bidirectional_mode": "rtp",
        "stream_bidirectional_codec": c.STREAM_CODEC,
        # The caller's audio in the same codec: left at "default", Telnyx sends the call's own
        # (PCMU from most trunks), and media_format would not match what we must send.
        "stream_codec": c.STREAM_CODEC,
        "stream_bidirectional_sampling_rate": c.STREAM_SAMPLE_RATE,
        "stream_bidirectional_target_legs": c.STREAM_TARGET_LEGS,
        # Always: no media socket is ever unauthenticated (streams.auth).
        "stream_auth_token": rt.stream_auth.token_for(call_control_id),
    }


def restream(rt: Runtime, call_control_id: str, attempt: str, stream_url: str | None,
             on_lost: Callable[[str], None]) -> None:
    """A call whose process died, drains or restarted: Telnyx streams it again, to `stream_url`
    (where it streamed before) or STREAM_WEBSOCKET_URL. One bidirectional stream per call, so
    the old one is stopped first; `attempt` makes the command ids new (Telnyx ignores repeated
    ones). `on_lost(reason)` when it cannot be: the call ended meanwhile (90018) or Telnyx refused."""
    url = stream_url or rt.config.STREAM_WEBSOCKET_URL
    if not url:
        rt.log.record("stream.not_restarted", call_control_id, reason="no stream URL known")
        on_lost("no stream URL known")
        return

    def done(ok: bool, error: str | None) -> None:
        if ok or error is None:
            return
        if CALL_ENDED in error:
            rt.log.record("stream.ended", call_control_id, reason="the call ended while it was not streamed")
            on_lost("the call ended")
        else:
            rt.log.record("stream.not_restarted", call_control_id, reason=error)
            on_lost(error)

    rt.commands.submit("streaming_stop", call_control_id, command_id=f"streaming_stop-{call_control_id}-{attempt}")
    rt.commands.submit("streaming_start", call_control_id, command_id=f"streaming_start-{call_control_id}-{attempt}",
                       on_done=done, **stream_params(rt, call_control_id, url))


# call.playback.ended statuses that mean the sound was stopped, not that it failed: the call hung
# up, or a playback_stop (ours, for DELETE or clear, or another application's) cancelled it.
STOPPED_PLAYBACK = frozenset({"call_hangup", "cancelled"})

class CallFlow:
    """What each Call Control event does to the call."""

    def __init__(self, rt: Runtime, stream_url: str) -> None:
        self.rt = rt
        self.stream_url = stream_url

    def handle(self, event: WebhookEvent) -> bool:
        handler = {
            "call.initiated": self.initiated,
            "call.answered": self.answered,
            "streaming.started": self.streaming_started,
            "streaming.stopped": self.streaming_stopped,
            "streaming.failed": self.streaming_failed,
            "call.hangup": self.hangup,
            "call.playback.started": self.playback,
            "call.playback.ended": self.playback,
        }.get(event.event_type)
        if handler is None or not event.call_control_id:
            logger.info("[%s] webhook %s ignored", event.call_control_id or "-", event.event_type)
            return False
        handler(event)
        return True

    def _session(self, event: WebhookEvent) -> CallSession | None:
        """The live session, created on first sight, or None when the call already ended."""
        session = self.rt.registry.get(event.call_control_id)
        if session is None:
            if self.rt.registry.ended(event.call_control_id):
                return None  # a late or repeated event must not revive an ended call
            session, _ = self.rt.registry.open(event.call_control_id)
            if session is None:
                return None
        p = event.payload
        for key in ("from", "to", "direction"):
            if isinstance(p.get(key), str) and not session.info.get(key):
                session.info[key] = p[key]
        return session

    def initiated(self, event: WebhookEvent) -> None:
        session = self._session(event)
        if session is None:
            return
        session.save()
        if event.payload.get("direction") == "incoming" and session.status == CallStatus.ANSWERING:
            self.rt.commands.submit("answer", event.call_control_id,
                                    command_id=f"answer-{event.call_control_id}")

    def answered(self, event: WebhookEvent) -> None:
        session = self._session(event)
        if session is None:
            return
        if session.status not in (CallStatus.ANSWERING, CallStatus.ANSWERED):
            return  # already streaming (or reconnecting): a second streaming_start would replace it
        session.set_status(CallStatus.ANSWERED)
        if self.rt.cluster is not None:  # where a survivor asks Telnyx to stream it if this node dies
            self.rt.cluster.remember_stream_url(event.call_control_id, self.stream_url)
        self.rt.commands.submit("streaming_start", event.call_control_id,
                                command_id=f"streaming_start-{event.call_control_id}",
                                **stream_params(self.rt, event.call_control_id, self.stream_url))

    def streaming_started(self, event: WebhookEvent) -> None:
        self.rt.log.record("stream.telnyx_started", event.call_control_id,
                           stream_url=event.payload.get("stream_url"))

    def streaming_stopped(self, event: WebhookEvent) -> None:
        self.rt.log.record("stream.telnyx_stopped", event.call_control_id)

    def streaming_failed(self, event: WebhookEvent) -> None:
        reason = str(event.payload.get("failure_reason") or "unknown")
        session = self.rt.registry.get(event.call_control_id)
        self.rt.log.record("stream.telnyx_failed", event.call_control_id, failure_reason=reason,
                           stream_params=event.payload.get("stream_params"))
        logger.error("[%s] Telnyx could not stream to us: %s", event.call_control_id, reason)
        if session is not None:
            self.rt.registry.close(session, CallStatus.FAILED, f"streaming.failed: {reason}")
            return
        logged = self.rt.log.call(event.call_control_id)
        if logged is not None and logged.get("status") in (*LIVE, CallStatus.INTERRUPTED):
            # A call asked of Telnyx again after a restart or a node's death, that never came back.
            logged.update(status=CallStatus.FAILED, end_reason=f"streaming.failed: {reason}",
                          ended_at=logged.get("ended_at") or utc_now())
            self.rt.log.save_call(event.call_control_id, CallStatus.FAILED, logged)

    def hangup(self, event: WebhookEvent) -> None:
        session = self.rt.registry.get(event.call_control_id)
        cause = str(event.payload.get("hangup_cause") or "unknown")
        if session is None:
            session = self._session(event)
            if session is None:
                return
        self.rt.registry.close(session, CallStatus.ENDED, f"hangup: {cause}")

    def playback(self, event: WebhookEvent) -> None:
        """call.playback.* of an injection in mode "playback" (its id is our client_state)."""
        session = self.rt.registry.get(event.call_control_id)
        state = event.payload.get("client_state")
        if session is None or not isinstance(state, str):
            return
        try:
            inj_id = base64.b64decode(state, validate=True).decode()
        except (binascii.Error, ValueError):
            return
        inj = session.injections.get(inj_id)
        if inj is None:
            return
        if event.event_type == "call.playback.ended":
            status = event.payload.get("status")
            if status in (None, "completed"):
                session.playback_ended(inj, InjectionStatus.FINISHED)
            elif status in STOPPED_PLAYBACK:  # as a mixed injection is when the call ends or it is stopped
                session.playback_ended(inj, InjectionStatus.STOPPED)
            else:  # "failed", or one Telnyx may add: the operator must see it did not play
                detail = event.payload.get("status_detail") or event.payload.get("failure_reason")
                reason = f"Telnyx playback ended with status {status!r}" + (f": {detail}" if detail else "")
                session.playback_ended(inj, InjectionStatus.FAILED, error=reason)
