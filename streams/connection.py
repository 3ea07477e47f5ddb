"""The writer side of a Telnyx media WebSocket, whichever transport carries it.

Sessions only need `send(text) -> bool`, `close(code, reason)` and a `label` (the Sender
protocol). Two transports provide it: the media plane (streams.mediaplane, what `python app.py`
serves) through PlaneSender, and flask-sock through Connection.

simple-websocket's send() takes no lock and calls socket.send(), which may write only part of a
frame under load and corrupt the stream. Connection.send frames with the socket's wsproto state
under a lock and writes with sendall().
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any, Protocol

from simple_websocket import ConnectionClosed
from wsproto.events import TextMessage
from wsproto.utilities import LocalProtocolError

from streams import mediaplane

logger = logging.getLogger(__name__)


class Sender(Protocol):
    label: str

    def send(self, text: str | bytes) -> bool:
        """One text message, or its UTF-8 bytes (the media clock builds them so); False once gone."""

    def close(self, code: int = 1000, reason: str = "") -> None: ...


class PlaneSender:
    """A media-plane connection seen as a Sender (its sends never block and are thread-safe)."""

    def __init__(self, conn: mediaplane.Connection) -> None:
        self._conn = conn
        self.label = "-"
        # The connection's own method: one call less per frame, hundreds of thousands a minute.
        self.send: Callable[[str | bytes], bool] = conn.send_text

    def close(self, code: int = 1000, reason: str = "") -> None:
        self._conn.close(code, reason)


class Connection:
    def __init__(self, ws: Any, call_label: str = "-") -> None:
        self._ws = ws
        self.label = call_label
        # Guards the wsproto framing state and the socket writes; held for one frame's write.
        self._lock = threading.Lock()
        self.open = True
        sock = getattr(ws, "sock", None)
        if sock is not None:
            # Werkzeug does not set TCP_NODELAY; without it small frames wait for ACKs.
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, text: str | bytes) -> bool:
        """Send one text message (bytes: its UTF-8); False once the socket is gone."""
        with self._lock:
            if not self.open or not self._ws.connected:
                self.open = False
                return False
            try:
                message = text if isinstance(text, str) else text.decode()
                self._ws.sock.sendall(self._ws.ws.send(TextMessage(data=message)))
            except (OSError, LocalProtocolError) as exc:  # the stream is unusable after this
                logger.info("[%s] socket write failed: %s", self.label, exc)
                self.open = False
                return False
        return True

    def close(self, code: int = 1000, reason: str = "") -> None:
        with self._lock:
            if not self.open:
                return
            self.open = False
            try:
                self._ws.close(reason=code, message=reason)
            except (OSError, ConnectionClosed, LocalProtocolError) as exc:  # closed by the peer
                logger.debug("[%s] close: %s", self.label, exc)
