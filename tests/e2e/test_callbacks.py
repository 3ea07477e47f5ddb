"""Callbacks through the real server: an injection's callback_url and CALLBACK_URL hear of its end
and of the call's, signed with the key GET /callbacks/public-key shows."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from nacl.signing import VerifyKey

from callback_sink import CallbackSink
from livecall import connected_call, inject, wait_until
from simulator import FakeTelnyx
from streams.callbacks import SIGNATURE_HEADER, TIMESTAMP_HEADER


@pytest.fixture
def sink() -> Iterator[CallbackSink]:
    server = CallbackSink()
    yield server
    server.close()


def test_an_injection_and_its_call_report_their_end(make_server_, telnyx: FakeTelnyx, sink: CallbackSink) -> None:
    own = CallbackSink([503])  # its first try fails: retried
    server = make_server_(CALLBACK_URL=sink.url, CALLBACK_ALLOW_PRIVATE=True)
    try:
        call = connected_call(telnyx, server)
        made = inject(server, call, {"dtmf": "1", "callback_url": own.url})
        assert made["callback_url"] == own.url
        wait_until(lambda: len(own.received) == 2, timeout=15, what="the injection's own callback, retried")
        body = own.bodies()[-1]
        assert body["event"] == "injection.finished" and body["injection"]["id"] == made["id"]
        call.hangup()
        wait_until(lambda: [b["event"] for b in sink.bodies()] == ["injection.finished", "call.ended"],
                   timeout=15, what="CALLBACK_URL's two callbacks")
        assert sink.bodies()[1]["call"]["status"] == "ended"
        key = VerifyKey(base64.b64decode(server.http.get("/callbacks/public-key").json()["public_key"]))
        for headers, raw in [*own.received, *sink.received]:
            key.verify(f"{headers[TIMESTAMP_HEADER]}|".encode() + raw, base64.b64decode(headers[SIGNATURE_HEADER]))
        sent = server.http.get("/stream-log", params={"event": "callback.sent"}).json()["items"]
        assert sorted((e["data"]["callback_event"], e["data"]["attempts"]) for e in sent) == [
            ("call.ended", 1), ("injection.finished", 1), ("injection.finished", 2)]
    finally:
        own.close()


def test_a_private_callback_url_is_refused(server, telnyx: FakeTelnyx) -> None:
    call = connected_call(telnyx, server)
    answer = server.http.post(f"/streams/{call.call_control_id}/inject",
                              json={"dtmf": "1", "callback_url": "http://127.0.0.1:9/hook"})
    assert answer.status_code == 422
    assert answer.json()["error"]["code"] == "callback_url_forbidden"
    assert answer.json()["error"]["field"] == "callback_url"
    assert server.http.get("/callbacks/public-key").json()["persistent"] is False
