"""The /stream WebSocket that Telnyx connects to after streaming_start.

StreamHandler is the socket's application side, fed one message at a time whatever the
transport: the media plane's loop thread (what `python app.py` serves, see plane_acceptor), or a
flask-sock handler thread (handle_stream, for running the WSGI app under another server). The
media clock (on that same loop thread under `python app.py`) writes our frames through the same
Sender. Malformed frames are counted and
logged, never fatal.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from flask import Flask, request
from flask_sock import Sock
from simple_websocket import ConnectionClosed

from eventlog import EventLog
from mixer.errors import UnsupportedCodec
from streams import mediaplane, protocol
from streams.connection import Connection, PlaneSender, Sender
from streams.metrics import Metrics
from streams.registry import SessionRegistry
from streams.runtime import Runtime
from streams.session import CallSession

logger = logging.getLogger(__name__)

POLICY_VIOLATION = 1008
UNSUPPORTED_DATA = 1003
# Media frames are added to /metrics in batches: a shared counter's lock 50 times a second per
# call is measurable at hundreds of calls.
REPORT_FRAMES_EVERY = 50
# Malformed frames are logged individually up to this many per socket, then only counted.
LOGGED_ERRORS_PER_SOCKET = 20


def handle_stream(ws: Any, registry: SessionRegistry, log: EventLog, metrics: Metrics, *,
                  auth_token: str, idle_timeout_s: float) -> None:
    """flask-sock transport: pull frames from `ws` and feed them to a StreamHandler."""
    handler = StreamHandler(Connection(ws), registry, log, metrics, auth_token=auth_token,
                            header_token=request.headers.get(protocol.AUTH_TOKEN_HEADER),
                            remote=request.remote_addr)
    # Cleanup is in `finally`: flask-sock swallows ConnectionClosed outside this function.
    try:
        while True:
            message = ws.receive(timeout=idle_timeout_s)
            if message is None:
                # Telnyx sends media every 20 ms; this long a silence means a dead peer.
                handler.problem("idle_timeout", f"no frame for {idle_timeout_s:g} s")
                break
            if handler.on_message(message):
                break
    except ConnectionClosed:
        pass
    finally:
        handler.on_close()


class StreamHandler:
    """One Telnyx media socket, whatever carries it: frames in through on_message, ours out via conn."""

    def __init__(self, conn: Sender, registry: SessionRegistry, log: EventLog, metrics: Metrics, *,
                 auth_token: str, header_token: str | None, remote: str | None) -> None:
        self.conn = conn
        self.registry = registry
        self.log = log
        self.metrics = metrics
        self.auth_token = auth_token
        self.remote = remote
        self.authenticated = not auth_token or self._token_ok(header_token)
        self.session: CallSession | None = None
        self.stopped = False
        self.errors = 0
        self.unreported_frames = 0  # media frames not yet counted in /metrics

    def _token_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.auth_token.encode())

    def on_message(self, message: str | bytes) -> bool:
        """Handle one message; True when the socket should close (stop, or refused)."""
        try:
            frame = protocol.parse_frame(message)
        except protocol.ProtocolError as exc:
            self.problem("malformed_frame", str(exc))
            return False
        if not self.authenticated:
            if isinstance(frame, protocol.Connected) and self._token_ok(frame.auth_token):
                self.authenticated = True
                return False
            self._reject_auth()
            return True
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
                session.on_caller_audio(frame)
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
        if self.session is not None and self.session.call_control_id != start.call_control_id:
            self.problem("unexpected_start", "a second call on one socket")
            return
        session, created = self.registry.open(start.call_control_id)
        if session is None:
            self.problem("stream_not_active", "the call has ended")
            self.conn.close(POLICY_VIOLATION, "call is not active")
            return
        if created:
            # Streams we never saw a webhook for (e.g. started from another app) still mix.
            session.set_status("answered")
        self.conn.label = start.call_control_id
        try:
            attached = session.attach(start, self.conn)
        except UnsupportedCodec as exc:
            self.problem("unsupported_codec", str(exc))
            self.conn.close(UNSUPPORTED_DATA, "unsupported media format")
            return
        if not attached:
            self.problem("stream_not_active", f"call is {session.status}")
            self.conn.close(POLICY_VIOLATION, "call is not active")
            return
        self.session = session
        self.registry.index_stream(session, start.stream_id)

    def _reject_auth(self) -> None:
        self.metrics.inc("websocket_errors_total", reason="auth")
        self.log.record("stream.auth_failed", None, remote=self.remote)
        logger.warning("media socket from %s refused: wrong or missing stream auth token", self.remote)
        self.conn.close(POLICY_VIOLATION, "invalid stream auth token")

    def problem(self, reason: str, detail: str) -> None:
        self.errors += 1
        self.metrics.inc("websocket_errors_total", reason=reason)
        if self.errors <= LOGGED_ERRORS_PER_SOCKET:
            ccid = self.session.call_control_id if self.session else None
            logger.warning("[%s] media socket: %s: %s", ccid or "-", reason, detail)
            self.log.record("stream.frame_error", ccid, reason=reason, detail=detail[:300])


# Telnyx's own frames are small; a 30 s RTP chunk from us is ~1.3 MB, but we never receive those.
MAX_INBOUND_MESSAGE_BYTES = 1 << 20


def register(app: Flask, rt: Runtime) -> None:
    """Mount /stream on `app`; each socket gets the runtime's objects, not Flask globals."""
    app.config["SOCK_SERVER_OPTIONS"] = {"max_message_size": MAX_INBOUND_MESSAGE_BYTES}
    sock = Sock(app)

    @sock.route("/stream")
    def stream(ws: Any) -> None:
        handle_stream(ws, rt.registry, rt.log, rt.metrics, auth_token=rt.config.STREAM_AUTH_TOKEN,
                      idle_timeout_s=rt.config.WS_IDLE_TIMEOUT_S)


class _PlaneHandler:
    """A StreamHandler on the media plane: called on its loop thread, so nothing here blocks."""

    def __init__(self, rt: Runtime, headers: dict[str, str], remote: str) -> None:
        self._rt = rt
        self._headers = headers
        self._remote = remote
        self._handler: StreamHandler | None = None

    def on_message(self, conn: mediaplane.Connection, data: str | bytes) -> None:
        handler = self._handler
        if handler is None:
            rt = self._rt
            handler = self._handler = StreamHandler(
                PlaneSender(conn), rt.registry, rt.log, rt.metrics, auth_token=rt.config.STREAM_AUTH_TOKEN,
                header_token=self._headers.get(protocol.AUTH_TOKEN_HEADER), remote=self._remote)
        if handler.on_message(data):
            conn.close(1000, "stream stopped" if handler.stopped else "refused")

    def on_close(self, conn: mediaplane.Connection, code: int | None) -> None:
        if self._handler is not None:
            self._handler.on_close()


def plane_acceptor(rt: Runtime) -> mediaplane.AcceptFn:
    """The media plane's accept(): every upgrade on /stream gets its own handler."""

    def accept(path: str, query: str, headers: dict[str, str], remote_addr: str) -> _PlaneHandler:
        return _PlaneHandler(rt, headers, remote_addr)

    return accept
