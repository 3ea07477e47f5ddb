"""The writer side of a Telnyx media WebSocket, as sessions see it.

Sessions only need `send(text) -> bool`, `close(code, reason)` and a `label` (the Sender
protocol); PlaneSender gives a front door websocket that shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from frontdoor import CloseCode, Connection


class Sender(Protocol):
    label: str

    def send(self, text: str | bytes) -> bool:
        """One text message, or its UTF-8 bytes (the media clock builds them so); False once gone."""

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None: ...


class PlaneSender:
    """A front door websocket seen as a Sender (its sends never block and are thread-safe)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self.label = "-"
        # The connection's own method: one call less per frame, hundreds of thousands a minute.
        self.send: Callable[[str | bytes], bool] = conn.send_text

    def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        self._conn.close(code, reason)
