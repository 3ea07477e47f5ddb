"""What each Call Control event does to a call.

Telnyx may deliver an event twice, late or out of order, so every step is idempotent: commands
carry a command_id derived from the call, a session is created by whichever event arrives
first, and an ended call is never revived.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Any

from runtime import Runtime
from streams.session import CallSession
from streams.status import CallStatus, InjectionStatus
from webhooks.events import WebhookEvent

logger = logging.getLogger(__name__)


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
        c = self.rt.config
        params: dict[str, Any] = {
            "stream_url": self.stream_url,
            "stream_track": c.STREAM_TRACK,
            "stream_bidirectional_mode": "rtp",
            "stream_bidirectional_codec": c.STREAM_CODEC,
            # The caller's audio in the same codec: left at "default", Telnyx sends the call's own
            # (PCMU from most trunks), and media_format would not match what we must send.
            "stream_codec": c.STREAM_CODEC,
            "stream_bidirectional_sampling_rate": c.STREAM_SAMPLE_RATE,
            "stream_bidirectional_target_legs": c.STREAM_TARGET_LEGS,
            # Always: no media socket is ever unauthenticated (streams.auth).
            "stream_auth_token": self.rt.stream_auth.token_for(event.call_control_id),
        }
        self.rt.commands.submit("streaming_start", event.call_control_id,
                                command_id=f"streaming_start-{event.call_control_id}", **params)

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
            ended = InjectionStatus.FINISHED if status in (None, "completed") else InjectionStatus.STOPPED
            session.playback_ended(inj, ended)
