"""streams.callbacks: signed like Telnyx's webhooks with our own key, retried with backoff, logged;
a callback_url to a private address is refused, and nothing blocks the threads that report."""

from __future__ import annotations

import base64
import socket
from collections.abc import Iterator

import pytest
from nacl.signing import SigningKey, VerifyKey

from callback_sink import CallbackSink
from eventlog import EventLog
from livecall import wait_until
from streams.callbacks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Callbacks,
    CallbackUrlError,
    check_url,
    signing_key,
)

INJECTION = {"id": "inj_1", "call_control_id": "v3:a", "status": "finished", "played_ms": 500}


@pytest.fixture
def sink() -> Iterator[CallbackSink]:
    server = CallbackSink()
    yield server
    server.close()


def make(log: EventLog, url: str = "", **options) -> Callbacks:
    return Callbacks(url=url, key=SigningKey.generate(), log=log, allow_private=True, backoff_s=(0.01, 0.02), **options)


def verify(callbacks: Callbacks, headers: dict[str, str], body: bytes) -> None:
    key = VerifyKey(base64.b64decode(callbacks.public_key))
    signature = base64.b64decode(headers[SIGNATURE_HEADER])
    key.verify(f"{headers[TIMESTAMP_HEADER]}|".encode() + body, signature)  # raises if forged


def test_an_ended_injection_goes_to_both_urls_signed(log: EventLog, sink: CallbackSink) -> None:
    callbacks = make(log, url=sink.url)
    try:
        callbacks.injection_ended(INJECTION, f"{sink.url}&own=1")
        callbacks.call_ended({"call_control_id": "v3:a", "status": "ended"})
        wait_until(lambda: len(sink.received) == 3, what="three callbacks")
        for headers, body in sink.received:
            verify(callbacks, headers, body)
            assert headers["content-type"] == "application/json"
        events = sorted(b["event"] for b in sink.bodies())
        assert events == ["call.ended", "injection.finished", "injection.finished"]
        assert next(b for b in sink.bodies() if b["event"] == "injection.finished")["injection"] == INJECTION
        wait_until(lambda: log.flush() and len(log.events(event="callback.sent")[0]) == 3, what="the log")
        sent = log.events(event="callback.sent")[0]
        assert all("secret" not in e["data"]["url"] for e in sent)  # the query is not logged
    finally:
        callbacks.close()


def test_a_failing_endpoint_is_retried_then_given_up(log: EventLog) -> None:
    flaky, dead = CallbackSink([500, 503]), CallbackSink([500, 500, 500, 500])
    callbacks = make(log)
    try:
        callbacks.injection_ended(INJECTION, flaky.url)
        callbacks.injection_ended({**INJECTION, "id": "inj_2"}, dead.url)
        wait_until(lambda: len(flaky.received) == 3 and len(dead.received) == 3, what="the retries")
        bodies = {body for _, body in flaky.received}
        assert len(bodies) == 1  # the same event each time
        wait_until(lambda: log.flush() and len(log.events(event="callback")[0]) == 2, what="both outcomes logged")
        outcomes = sorted((e["event"], e["data"]["attempts"]) for e in log.events(event="callback")[0])
        assert outcomes == [("callback.failed", 3), ("callback.sent", 3)]  # two retries each
        failed = log.events(event="callback.failed")[0]
        assert len(failed) == 1 and failed[0]["data"]["error"] == "answered HTTP 500"
        assert failed[0]["data"]["attempts"] == 3 and failed[0]["call_control_id"] == "v3:a"
    finally:
        callbacks.close()
        flaky.close()
        dead.close()


def test_reporting_never_waits_for_a_slow_endpoint(log: EventLog) -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(100)  # accepts, never answers
    callbacks = make(log, timeout_s=30)
    try:
        for i in range(200):  # would take 200 x 30 s if anything waited
            callbacks.injection_ended({**INJECTION, "id": f"inj_{i}"}, f"http://127.0.0.1:{silent.getsockname()[1]}/")
    finally:
        callbacks.close(timeout_s=0.1)
        silent.close()


def test_a_callback_url_must_be_http_and_public() -> None:
    for url in ("ftp://example.com/x", "not a url", "http://"):
        with pytest.raises(CallbackUrlError, match="http or https"):
            check_url(url, allow_private=False)
    for url in ("http://127.0.0.1:9/x", "http://10.1.2.3/x", "http://[::1]/x", "http://localhost/x"):
        with pytest.raises(CallbackUrlError, match="non-public"):
            check_url(url, allow_private=False)
    check_url("http://127.0.0.1:9/x", allow_private=True)


def test_the_signing_key_is_configured_derived_or_made() -> None:
    seed = bytes(range(32))
    key, kept = signing_key(base64.b64encode(seed).decode())
    assert kept and bytes(key) == seed
    one, kept_one = signing_key("", "cluster-secret-1234567")
    two, _ = signing_key("", "cluster-secret-1234567")
    assert kept_one and bytes(one) == bytes(two)  # every node of a cluster signs alike
    made, kept_made = signing_key("")
    assert not kept_made and bytes(made) != bytes(signing_key("")[0])
    with pytest.raises(ValueError, match="32 bytes"):
        signing_key(base64.b64encode(b"short").decode())
