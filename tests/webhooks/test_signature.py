"""Webhook signatures: Ed25519 over "timestamp|body", ±300 s, fail closed."""

import base64
import time

import pytest
from nacl.signing import SigningKey

from webhooks import signature

KEY = SigningKey(b"k" * 32)
PUBLIC = base64.b64encode(bytes(KEY.verify_key)).decode()


def sign(body: bytes, ts: str) -> str:
    return base64.b64encode(KEY.sign(ts.encode() + b"|" + body).signature).decode()


def test_valid_signature_passes():
    ts = str(int(time.time()))
    signature.verify(signature.load_public_key(PUBLIC), b'{"a":1}', sign(b'{"a":1}', ts), ts)


def test_der_wrapped_key_is_accepted():
    der = bytes.fromhex("302a300506032b6570032100") + bytes(KEY.verify_key)
    key = signature.load_public_key(base64.b64encode(der).decode())
    assert bytes(key) == bytes(KEY.verify_key)


@pytest.mark.parametrize("bad", ["not base64!", base64.b64encode(b"short").decode()])
def test_bad_public_key_is_refused(bad):
    with pytest.raises(ValueError, match="TELNYX_PUBLIC_KEY"):
        signature.load_public_key(bad)


@pytest.mark.parametrize(
    ("body", "sig", "ts_offset", "reason"),
    [
        (b'{"a":1}', None, 0, "missing telnyx-signature-ed25519"),
        (b'{"a":2}', "SIGNED", 0, "does not match"),
        (b'{"a":1}', "SIGNED", -301, "from now"),
        (b'{"a":1}', "SIGNED", 301, "from now"),
        (b'{"a":1}', "!!!", 0, "not valid base64"),
    ],
)
def test_rejections(body, sig, ts_offset, reason):
    now = time.time()
    ts = str(int(now) + ts_offset)
    given = sign(b'{"a":1}', ts) if sig == "SIGNED" else sig
    with pytest.raises(signature.SignatureError, match=reason):
        signature.verify(signature.load_public_key(PUBLIC), body, given, ts, now=now)


def test_tolerance_edges():
    now = 1_000_000.0
    key = signature.load_public_key(PUBLIC)
    for offset in (-299, 299):
        ts = str(int(now) + offset)
        signature.verify(key, b"x", sign(b"x", ts), ts, now=now)


@pytest.mark.parametrize("ts", ["", "abc", "١٢٣", "12.5"])
def test_timestamp_must_be_unix_seconds(ts):
    with pytest.raises(signature.SignatureError):
        signature.verify(signature.load_public_key(PUBLIC), b"x", sign(b"x", "1"), ts)
