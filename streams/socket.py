"""The /stream WebSocket that Telnyx connects to after streaming_start.

`acceptor` is the front door's accept(): it checks the socket's auth token at the handshake
(refusing with 401/403 before any frame) and gives each socket a StreamHandler, fed one message
at a time on the front door's loop thread. The media clock (on that same thread) writes our
frames through the same Sender. Malformed frames are counted and logged, never fatal.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from eventlog import EventLog
from frontdoor import CloseCode, Connection, HttpError, Request
from metrics import Metrics
from mixer.errors import CorruptPayload, UnsupportedCodec
from runtime import Runtime
from streams import protocol
from streams.auth import Grant, StreamAuthError
from streams.connection import PlaneSender, Sender
from streams.registry import SessionRegistry
from streams.session import CallSession
from streams.status import CallStatus

logger = logging.getLogger(__name__)

# Media frames are added to /metrics in batches: a shared counter's lock 50 times a second per
# call is measurable at hundreds of calls.
REPORT_FRAMES_EVERY = 50
# Malformed frames are logged individually up to this many per socket, then only counted.
LOGGED_ERRORS_PER_SOCKET = 20


class StreamHandler:
    """One Telnyx media socket, whatever carries it: frames in through on_message, ours out via conn."""

    def __init__(self, conn: Sender, registry: SessionRegistry, log: EventLog, metrics: Metrics, *,
                 grant: Grant, remote: str | None) -> None:
        self.conn = conn
        self.registry = registry
        self.log = log
        self.metrics = metrics
        self.grant = grant  # checked at the handshake: the call this socket may carry, if one
        self.remote = remote
        self.session: CallSession | None = None
        self.stopped = False
        self.errors = 0
        self.unreported_frames = 0  # media frames not yet counted in /metrics

    def on_message(self, message: str | bytes) -> bool:
        """Handle one message; True when the socket should close (stop, or refused)."""
        try:
            frame = protocol.parse_frame(message)
        except protocol.ProtocolError as exc:
            self.problem("malformed_frame", str(exc))
            return False
        if self._dispatch(frame):
            self.stopped = True
            self.on_close()  # the stream is over now, whenever the socket itself closes
            return True
        return False

    def _report_frames(self) -> None:
        self.metrics.inc("frames_received_total", self.unreported_frames)
        self.unreported_frames = 0

    def on_close(self) -> None:
        if self.unreported_frames:
            self._report_frames()
        if self.session is not None:
            self.session.detach(self.conn, stopped=self.stopped)
            self.session = None

    def _dispatch(self, frame: protocol.Frame) -> bool:
        """Handle one frame; True when the stream is over (stop)."""
        session = self.session
        if isinstance(frame, protocol.Media):
            self.unreported_frames += 1
            if self.unreported_frames >= REPORT_FRAMES_EVERY:
                self._report_frames()
            if session is not None:
                try:
                    session.on_caller_audio(frame)
                except CorruptPayload as exc:  # taken as silence; the call goes on
                    self.problem("undecodable_media", str(exc))
            return False
        if isinstance(frame, protocol.Start):
            self._start(frame)
            return False
        if isinstance(frame, protocol.Mark):
            if session is not None:
                session.on_mark(frame.name)
            return False
        if isinstance(frame, protocol.Dtmf):
            self.log.record("dtmf.received", session.call_control_id if session else None,
                            digit=frame.digit, occurred_at=frame.occurred_at)
            return False
        if isinstance(frame, protocol.Error):
            self.metrics.inc("websocket_errors_total", reason="telnyx_error")
            self.log.record("stream.telnyx_error", session.call_control_id if session else None,
                            code=frame.code, title=frame.title, detail=frame.detail)
            return False
        return isinstance(frame, protocol.Stop)  # else `connected`: nothing to do

    def _start(self, start: protocol.Start) -> None:
        allowed = self.grant.call_control_id
        if allowed is not None and start.call_control_id != allowed:
            self.problem("wrong_call", f"the socket's token is for {allowed}, not {start.call_control_id}")
            self.conn.close(CloseCode.POLICY_VIOLATION, "token is for another call")
            return
        if self.session is not None and self.session.call_control_id != start.call_control_id:
            self.problem("unexpected_start", "a second call on one socket")
            return
        session, created = self.registry.open(start.call_control_id)
        if session is None:
            self.problem("stream_not_active", "the call has ended")
            self.conn.close(CloseCode.POLICY_VIOLATION, "call is not active")
            return
        if created:
            # Streams we never saw a webhook for (e.g. started from another app) still mix.
            session.set_status(CallStatus.ANSWERED)
        self.conn.label = start.call_control_id
        try:
            attached = session.attach(start, self.conn)
        except UnsupportedCodec as exc:
            self.problem("unsupported_codec", str(exc))
            self.conn.close(CloseCode.UNSUPPORTED_DATA, "unsupported media format")
            return
        if not attached:
            self.problem("stream_not_active", f"call is {session.status}")
            self.conn.close(CloseCode.POLICY_VIOLATION, "call is not active")
            return
        self.session = session
        self.registry.index_stream(session, start.stream_id)

    def problem(self, reason: str, detail: str) -> None:
        self.errors += 1
        self.metrics.inc("websocket_errors_total", reason=reason)
        if self.errors <= LOGGED_ERRORS_PER_SOCKET:
            ccid = self.session.call_control_id if self.session else None
            logger.warning("[%s] media socket: %s: %s", ccid or "-", reason, detail)
            self.log.record("stream.frame_error", ccid, reason=reason, detail=detail[:300])


# Telnyx's own frames are small; a 30 s RTP chunk from us is ~1.3 MB, but we never receive those.
MAX_INBOUND_MESSAGE_BYTES = 1 << 20


class _PlaneHandler:
    """A StreamHandler on the front door: called on its loop thread, so nothing here blocks."""

    def __init__(self, rt: Runtime, grant: Grant, remote: str) -> None:
        self._rt = rt
        self._grant = grant
        self._remote = remote
        self._handler: StreamHandler | None = None

    def on_message(self, conn: Connection, data: str | bytes) -> None:
        handler = self._handler
        if handler is None:
            rt = self._rt
            handler = self._handler = StreamHandler(PlaneSender(conn), rt.registry, rt.log, rt.metrics,
                                                    grant=self._grant, remote=self._remote)
        if handler.on_message(data):
            conn.close(CloseCode.NORMAL, "stream stopped")

    def on_close(self, conn: Connection, code: int | None) -> None:
        if self._handler is not None:
            self._handler.on_close()


def acceptor(rt: Runtime) -> Callable[[Request, str], _PlaneHandler]:
    """The front door's accept() for /stream: the token first, then a handler of its own."""

    def accept(request: Request, remote_addr: str) -> _PlaneHandler:
        try:
            grant = rt.stream_auth.check(request.header(protocol.AUTH_TOKEN_HEADER))
        except StreamAuthError as exc:
            rt.metrics.inc("stream_auth_refused_total", reason=exc.reason)
            rt.log.record("stream.auth_failed", None, remote=remote_addr, reason=exc.reason)
            logger.warning("media socket from %s refused: %s stream auth token", remote_addr, exc.reason)
            raise HttpError(401 if exc.reason == "missing" else 403, f"stream_auth_{exc.reason}", str(exc)) from None
        return _PlaneHandler(rt, grant, remote_addr)

    return accept
