"""Media socket authentication: every `streaming_start` carries a token, every socket must show it.

With STREAM_AUTH_TOKEN set, that one token is sent and required. Without it, each call gets its
own token, `<call id, base64url>.<HMAC-SHA256 of it, base64url>` under STREAM_AUTH_SECRET (or
a secret made at start-up): the token names the one call its socket may carry, and is checked
at the handshake without any lookup.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass


class StreamAuthError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # "missing" or "invalid": the metric's label


@dataclass(frozen=True)
class Grant:
    """What a valid token allows: one call, or (a static token) any call."""

    call_control_id: str | None


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class StreamAuth:
    def __init__(self, *, static_token: str = "", secret: str = "") -> None:
        self._static = static_token.encode()
        self._key = secret.encode() if secret else secrets.token_bytes(32)

    def _mac(self, call_control_id: str) -> str:
        return _b64(hmac.new(self._key, b"stream:" + call_control_id.encode(), hashlib.sha256).digest())

    def token_for(self, call_control_id: str) -> str:
        """The stream_auth_token to send with this call's streaming_start."""
        if self._static:
            return self._static.decode()
        return f"{_b64(call_control_id.encode())}.{self._mac(call_control_id)}"

    def check(self, token: str | None) -> Grant:
        """The grant of a presented token; StreamAuthError when it is missing or wrong."""
        if not token:
            raise StreamAuthError("missing", "This socket needs the stream auth token of its call.")
        if self._static:
            if hmac.compare_digest(token.encode(), self._static):
                return Grant(None)
            raise StreamAuthError("invalid", "The stream auth token is not valid.")
        encoded, sep, mac = token.partition(".")
        try:
            call_control_id = _unb64(encoded).decode() if sep else ""
        except (binascii.Error, ValueError):
            call_control_id = ""
        if not call_control_id or not hmac.compare_digest(mac.encode(), self._mac(call_control_id).encode()):
            raise StreamAuthError("invalid", "The stream auth token is not valid.")
        return Grant(call_control_id)
