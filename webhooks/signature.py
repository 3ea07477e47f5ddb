"""Telnyx webhook signatures: Ed25519 over f"{telnyx-timestamp}|{raw body}".

Verified with PyNaCl directly rather than the SDK's unwrap(): which exception unwrap() raises
depends on whether telnyx.lib was imported, and its input must be str; here it is explicit.
"""

from __future__ import annotations

import base64
import binascii
import time

from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
# DER prefix of an Ed25519 SubjectPublicKeyInfo; some consoles show the key in that form.
_SPKI_PREFIX = bytes.fromhex("302a300506032b6570032100")


class SignatureError(ValueError):
    """The webhook is not provably from Telnyx; the message says why (logged, not returned)."""


def load_public_key(key_b64: str) -> VerifyKey:
    """Raw 32-byte key (base64), or the same key wrapped as DER SubjectPublicKeyInfo."""
    try:
        raw = base64.b64decode(key_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("TELNYX_PUBLIC_KEY is not valid base64") from None
    if len(raw) == 44 and raw.startswith(_SPKI_PREFIX):
        raw = raw[len(_SPKI_PREFIX):]
    if len(raw) != 32:
        raise ValueError(f"TELNYX_PUBLIC_KEY must decode to 32 bytes (got {len(raw)})")
    return VerifyKey(raw)


def verify(
    key: VerifyKey,
    body: bytes,
    signature_b64: str | None,
    timestamp: str | None,
    *,
    tolerance_s: int = 300,
    now: float | None = None,
) -> None:
    """Raise SignatureError unless `body` was signed by `key` within ±tolerance_s."""
    if not signature_b64:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    if not timestamp:
        raise SignatureError(f"missing {TIMESTAMP_HEADER} header")
    try:
        if not timestamp.isascii():
            raise ValueError
        sent_at = int(timestamp)
    except ValueError:
        raise SignatureError(f"{TIMESTAMP_HEADER} is not a Unix time") from None
    skew = (time.time() if now is None else now) - sent_at
    if abs(skew) > tolerance_s:
        raise SignatureError(f"timestamp is {skew:+.0f} s from now (limit ±{tolerance_s} s)")
    try:
        signature = base64.b64decode(signature_b64, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("signature is not valid base64") from None
    try:
        key.verify(timestamp.encode("ascii") + b"|" + body, signature)
    except (BadSignatureError, ValueError):
        raise SignatureError("signature does not match the body") from None
