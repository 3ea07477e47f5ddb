"""Webhooks: signed as Telnyx signs (verified by the official SDK), envelope, retries, duplicates, order."""

from __future__ import annotations

import pytest
import telnyx

from simulator import FakeTelnyx
from tests.simulator.conftest import StreamServer, WebhookReceiver, rtp_params, wait_until


def test_every_webhook_verifies_with_the_official_sdk(fake: FakeTelnyx, client: telnyx.Telnyx, receiver,
                                                       stream_server):
    call = fake.place_call()
    client.calls.actions.answer(call.call_control_id, command_id="a")
    client.calls.actions.start_streaming(call.call_control_id, **rtp_params(stream_server.url))
    call.wait_streaming()
    call.hangup()
    receiver.wait_for("call.hangup")
    verifier = telnyx.Telnyx(api_key="KEY123", public_key=fake.public_key)
    kinds = []
    for body, headers in receiver.requests:
        event = verifier.webhooks.unwrap(body, headers=headers)
        kinds.append(event.data.event_type)  # type: ignore[union-attr]
    assert kinds == ["call.initiated", "call.answered", "streaming.started", "streaming.stopped", "call.hangup"]
    verifier.close()


def test_signature_covers_timestamp_and_exact_body(fake, receiver):
    fake.place_call()
    receiver.wait_for("call.initiated")
    body, headers = receiver.requests[0]
    assert set(headers) >= {"Telnyx-Signature-Ed25519", "Telnyx-Timestamp"}
    assert headers["Telnyx-Timestamp"].isdigit()
    verifier = telnyx.Telnyx(api_key="KEY123", public_key=fake.public_key)
    with pytest.raises(ValueError, match="Signature verification failed"):
        verifier.webhooks.unwrap(body.replace("incoming", "outgoing"), headers=headers)
    tampered = dict(headers, **{"Telnyx-Timestamp": str(int(headers["Telnyx-Timestamp"]) + 1)})
    with pytest.raises(ValueError):
        verifier.webhooks.unwrap(body, headers=tampered)
    other_key = FakeTelnyx().public_key
    with pytest.raises(ValueError):
        telnyx.Telnyx(api_key="x", public_key=other_key).webhooks.unwrap(body, headers=headers)
    verifier.close()


def test_stale_timestamp_is_rejected_by_the_sdk(fake, receiver):
    fake.signer.clock_skew_s = -400
    fake.place_call()
    receiver.wait_for("call.initiated")
    body, headers = receiver.requests[0]
    with pytest.raises(ValueError, match="too old"):
        telnyx.Telnyx(api_key="k", public_key=fake.public_key).webhooks.unwrap(body, headers=headers)


def test_call_initiated_envelope_matches_the_documented_example(fake, receiver):
    call = fake.place_call(from_="+12025550133", to="+12025550131", client_state="aGF2ZSBhIG5pY2UgZGF5ID1d")
    event = receiver.wait_for("call.initiated")[0]
    assert list(event) == ["data", "meta"]
    assert event["meta"] == {"attempt": 1, "delivered_to": receiver.url}
    data = event["data"]
    assert list(data) == ["record_type", "event_type", "id", "occurred_at", "payload"]
    assert data["record_type"] == "event"
    payload = data["payload"]
    assert payload["call_control_id"] == call.call_control_id
    assert payload["direction"] == "incoming"
    assert payload["state"] == "parked"
    assert payload["from"] == "+12025550133" and payload["to"] == "+12025550131"
    assert payload["client_state"] == "aGF2ZSBhIG5pY2UgZGF5ID1d"
    for key in ("connection_id", "call_leg_id", "call_session_id"):
        assert isinstance(payload[key], str)


def test_hangup_carries_cause_and_source(fake, client, receiver):
    app_hung_up = fake.place_call()
    client.calls.actions.answer(app_hung_up.call_control_id)
    client.calls.actions.hangup(app_hung_up.call_control_id)
    caller_hung_up = fake.place_call()
    caller_hung_up.hangup()
    events = receiver.wait_for("call.hangup", 2)
    by_call = {e["data"]["payload"]["call_control_id"]: e["data"]["payload"] for e in events}
    assert by_call[app_hung_up.call_control_id]["hangup_source"] == "callee"
    assert by_call[caller_hung_up.call_control_id]["hangup_source"] == "caller"
    assert {p["hangup_cause"] for p in by_call.values()} == {"normal_clearing"}
    assert {p["state"] for p in by_call.values()} == {"hangup"}


def test_streaming_failed_when_the_stream_url_cannot_connect(fake, client, receiver):
    call = fake.place_call()
    client.calls.actions.answer(call.call_control_id)
    client.calls.actions.start_streaming(call.call_control_id, stream_url="ws://127.0.0.1:9/stream",
                                         stream_track="inbound_track")
    payload = receiver.wait_for("streaming.failed")[0]["data"]["payload"]
    assert payload["failure_reason"] == "connection_failed"
    assert payload["stream_params"] == {"stream_url": "ws://127.0.0.1:9/stream", "track": "inbound_track"}
    assert payload["stream_type"] == "websocket"
    assert payload["stream_id"] == call.stream_id
    assert call.streaming_status == "failed"


def test_non_loopback_targets_are_refused(receiver):
    with pytest.raises(ValueError, match="non-loopback"):
        FakeTelnyx(webhook_url="http://example.com/webhooks/voice")
    with FakeTelnyx("K", webhook_url=receiver.url) as fake:
        client = telnyx.Telnyx(api_key="K", base_url=fake.base_url, max_retries=0)
        call = fake.place_call()
        client.calls.actions.answer(call.call_control_id)
        client.calls.actions.start_streaming(call.call_control_id, stream_url="wss://example.com/stream")
        assert receiver.wait_for("streaming.failed")[0]["data"]["payload"]["failure_reason"] == "connection_failed"
        client.close()


def test_slow_and_failing_answers_are_retried_with_attempt_numbers(receiver: WebhookReceiver):
    receiver.statuses = [503, 200]
    with FakeTelnyx("K", webhook_url=receiver.url, webhook_timeout_s=0.3, webhook_retry_delay_s=0.01) as fake:
        fake.place_call()
        wait_until(lambda: len(receiver.requests) == 2, what="a retry after 503")
        receiver.delay_s = 0.6  # longer than the sender's timeout
        fake.place_call()
        wait_until(lambda: len(receiver.requests) >= 5, what="retries after timeouts")
        receiver.delay_s = 0
        fake.wait_webhooks_idle()
    events = receiver.events()
    assert [e["meta"]["attempt"] for e in events[:2]] == [1, 2]
    assert events[0]["data"] == events[1]["data"]
    timed_out = [e for e in events[2:] if e["data"]["id"] == events[2]["data"]["id"]]
    assert [e["meta"]["attempt"] for e in timed_out] == [1, 2, 3]


def test_client_errors_are_not_retried(receiver, fake):
    receiver.status = 404
    fake.place_call()
    fake.wait_webhooks_idle()
    assert len(receiver.requests) == 1
    assert fake.deliveries[0].status == 404


def test_redeliver_sends_a_duplicate_with_the_same_id(fake, receiver):
    call = fake.place_call()
    receiver.wait_for("call.initiated")
    call.redeliver("call.initiated")
    events = receiver.wait_for("call.initiated", 2)
    assert events[0]["data"] == events[1]["data"]
    assert [e["meta"]["attempt"] for e in events] == [1, 2]


def test_held_webhooks_are_released_out_of_order(fake, client, receiver, stream_server: StreamServer):
    fake.hold_webhooks()
    call = fake.place_call()
    client.calls.actions.answer(call.call_control_id)
    assert receiver.requests == []
    released = fake.release_webhooks()
    assert [e.event_type for e in released] == ["call.answered", "call.initiated"]
    receiver.wait_for("call.initiated")
    assert receiver.event_types() == ["call.answered", "call.initiated"]


def test_commands_are_answered_before_webhooks_arrive(fake, client, receiver):
    receiver.delay_s = 0.3
    call = fake.place_call()
    response = client.calls.actions.answer(call.call_control_id)
    assert response.data.result == "ok"  # did not wait for the slow webhook receiver
    receiver.wait_for("call.answered")
    receiver.delay_s = 0



def test_sign_makes_hand_built_webhooks_verifiable(fake):
    body = '{"data": {"event_type": "call.initiated", "id": "x", "payload": {}}}'
    ts = "1700000000"
    signature = fake.sign(body.encode(), ts)
    import base64

    from nacl.signing import VerifyKey
    VerifyKey(base64.b64decode(fake.public_key)).verify(f"{ts}|{body}".encode(), base64.b64decode(signature))
