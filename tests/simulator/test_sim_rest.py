"""The REST fake through the official SDK: auth, validation, call state errors, dedupe, faults."""

from __future__ import annotations

import httpx
import pytest
import telnyx

from simulator import FakeTelnyx
from tests.simulator.conftest import StreamServer, WebhookReceiver, rtp_params


def error_of(exc: telnyx.APIStatusError) -> dict:
    body = exc.body
    assert isinstance(body, dict), body
    return body["errors"][0]


def test_base_url_and_ok_answer(fake: FakeTelnyx, client: telnyx.Telnyx):
    assert fake.base_url.startswith("http://127.0.0.1:") and fake.base_url.endswith("/v2")
    call = fake.place_call()
    response = client.calls.actions.answer(call.call_control_id, command_id="c1")
    assert response.data.result == "ok"
    raw = httpx.post(f"{fake.base_url}/calls/{call.call_control_id}/actions/playback_start",
                     headers={"Authorization": "Bearer KEY123"},
                     json={"audio_url": "http://127.0.0.1/a.mp3", "overlay": True, "target_legs": "self"})
    assert raw.status_code == 200 and raw.json() == {"data": {"result": "ok"}}
    recorded = fake.commands[0]
    assert (recorded.action, recorded.call_control_id, recorded.status) == ("answer", call.call_control_id, 200)
    assert recorded.body == {"command_id": "c1"}
    assert recorded.headers["authorization"] == "Bearer KEY123"


def test_wrong_or_missing_key_is_401(fake):
    call = fake.place_call()
    bad = telnyx.Telnyx(api_key="WRONG", base_url=fake.base_url, max_retries=0)
    with pytest.raises(telnyx.AuthenticationError):
        bad.calls.actions.answer(call.call_control_id)
    bad.close()
    missing = httpx.post(f"{fake.base_url}/calls/{call.call_control_id}/actions/answer", json={})
    assert missing.status_code == 401
    assert missing.json()["errors"][0]["code"] == "10009"
    assert call.state == "parked"
    assert [c.status for c in fake.commands] == [401, 401]


@pytest.mark.parametrize(("params", "field"), [
    ({"stream_bidirectional_mode": "pcm"}, "stream_bidirectional_mode"),
    ({"stream_bidirectional_codec": "pcmu"}, "stream_bidirectional_codec"),  # case sensitive
    ({"stream_bidirectional_sampling_rate": 44100}, "stream_bidirectional_sampling_rate"),
    ({"stream_bidirectional_target_legs": "caller"}, "stream_bidirectional_target_legs"),
    ({"stream_track": "inbound"}, "stream_track"),
    ({"stream_codec": "MP3"}, "stream_codec"),
    ({"stream_auth_token": "x" * 4001}, "stream_auth_token"),
    ({"custom_parameters": {"customer_id": "c1"}}, "custom_parameters"),
    ({"custom_parameters": [{"name": "a", "value": 1}]}, "custom_parameters/0/value"),
    ({"enable_dialogflow": "yes"}, "enable_dialogflow"),
])
def test_streaming_start_rejects_invalid_fields(fake, client, params, field):
    call = fake.place_call()
    client.calls.actions.answer(call.call_control_id)
    body = {"stream_url": "ws://127.0.0.1:1/stream", **params}
    with pytest.raises(telnyx.UnprocessableEntityError) as info:
        client.calls.actions.start_streaming(call.call_control_id, extra_body=body)
    error = error_of(info.value)
    assert error["code"] == "10015"
    assert error["source"] == {"pointer": f"/{field}"}
    assert call.streaming_status == "none"


def test_max_length_token_and_every_documented_rate_are_accepted(fake, client, stream_server: StreamServer):
    call = fake.place_call()
    client.calls.actions.answer(call.call_control_id)
    for rate in (8000, 16000, 22050, 24000, 48000):
        client.calls.actions.start_streaming(call.call_control_id, stream_auth_token="t" * 4000,
                                             stream_bidirectional_sampling_rate=rate,  # type: ignore[arg-type]
                                             **rtp_params(stream_server.url, stream_bidirectional_codec="L16"))
    assert [c.status for c in fake.commands_for("streaming_start")] == [200] * 5


def test_unknown_field_is_422(fake, client):
    call = fake.place_call()
    with pytest.raises(telnyx.UnprocessableEntityError) as info:
        client.calls.actions.answer(call.call_control_id, extra_body={"stream_bidirectinal_mode": "rtp"})
    assert error_of(info.value)["source"] == {"pointer": "/stream_bidirectinal_mode"}
    assert call.state == "parked"


def test_unknown_call_is_90015_and_ended_call_is_90018(fake, client):
    with pytest.raises(telnyx.UnprocessableEntityError) as info:
        client.calls.actions.answer("v3:nope")
    assert error_of(info.value)["code"] == "90015"
    call = fake.place_call()
    client.calls.actions.answer(call.call_control_id)
    client.calls.actions.hangup(call.call_control_id)
    with pytest.raises(telnyx.UnprocessableEntityError) as info:
        client.calls.actions.start_streaming(call.call_control_id, stream_url="ws://127.0.0.1:1/s")
    assert error_of(info.value) == {"code": "90018", "title": "Call has already ended",
                                    "detail": "This call is no longer active and can't receive commands."}


def test_streaming_before_answer_is_90034(fake, client):
    call = fake.place_call()
    with pytest.raises(telnyx.UnprocessableEntityError) as info:
        client.calls.actions.start_streaming(call.call_control_id, stream_url="ws://127.0.0.1:1/s")
    assert error_of(info.value)["code"] == "90034"


def test_repeated_command_id_is_answered_but_not_executed(fake, client, receiver: WebhookReceiver):
    call = fake.place_call()
    for _ in range(3):
        assert client.calls.actions.answer(call.call_control_id, command_id="same").data.result == "ok"
    other = fake.place_call()
    client.calls.actions.answer(other.call_control_id, command_id="same")  # other call: not a duplicate
    fake.wait_webhooks_idle()
    assert receiver.event_types(call.call_control_id).count("call.answered") == 1
    assert [c.executed for c in fake.commands_for("answer")] == [True, False, False, True]


def test_dedupe_window_expires(receiver):
    now = [0.0]
    with FakeTelnyx("K", webhook_url=receiver.url, clock=lambda: now[0]) as fake:
        client = telnyx.Telnyx(api_key="K", base_url=fake.base_url, max_retries=0)
        call = fake.place_call()
        client.calls.actions.answer(call.call_control_id)
        client.calls.actions.hangup(call.call_control_id, command_id="h")
        call2 = fake.place_call()
        client.calls.actions.answer(call2.call_control_id, command_id="x")
        now[0] = 61.0
        client.calls.actions.answer(call2.call_control_id, command_id="x")
        assert [c.executed for c in fake.commands_for("answer", call2)] == [True, True]
        client.close()


def test_server_errors_are_retried_by_the_sdk_and_recorded(fake, receiver):
    call = fake.place_call()
    client = telnyx.Telnyx(api_key="KEY123", base_url=fake.base_url, max_retries=1)
    fake.fail_next("answer", status=503)
    assert client.calls.actions.answer(call.call_control_id, command_id="r1").data.result == "ok"
    assert [(c.status, c.executed, c.command_id) for c in fake.commands] == [(503, False, "r1"), (200, True, "r1")]
    assert fake.commands[1].headers["x-stainless-retry-count"] == "1"
    client.close()


def test_rate_limit_answers_429_with_telnyx_body(fake, client):
    call = fake.place_call()
    fake.fail_next("*", status=429, times=1)
    with pytest.raises(telnyx.RateLimitError) as info:
        client.calls.actions.answer(call.call_control_id)
    assert error_of(info.value) == {"code": "10011", "title": "Too many requests",
                                    "detail": "You have exceeded the maximum number of allowed requests."}
    assert info.value.response.headers["x-ratelimit-remaining"] == "0"
    assert client.calls.actions.answer(call.call_control_id).data.result == "ok"


def test_slow_answer_times_out_and_the_retry_is_deduped(fake, receiver):
    call = fake.place_call()
    client = telnyx.Telnyx(api_key="KEY123", base_url=fake.base_url, max_retries=1, timeout=0.2)
    fake.fail_next("answer", status=200, delay_s=0.5)
    assert client.calls.actions.answer(call.call_control_id, command_id="slow").data.result == "ok"
    commands = fake.commands_for("answer")
    assert len(commands) == 2
    assert sorted(c.executed for c in commands) == [False, True]
    fake.wait_webhooks_idle()
    assert receiver.event_types(call.call_control_id).count("call.answered") == 1
    client.close()


def test_streaming_stop_and_hangup(fake, client, receiver, stream_server):
    call = fake.place_call()
    client.calls.actions.answer(call.call_control_id)
    client.calls.actions.start_streaming(call.call_control_id, **rtp_params(stream_server.url))
    stream_id = call.wait_streaming()
    with pytest.raises(telnyx.UnprocessableEntityError):
        client.calls.actions.stop_streaming(call.call_control_id, stream_id="00000000-0000-0000-0000-000000000000")
    client.calls.actions.stop_streaming(call.call_control_id, stream_id=stream_id)
    receiver.wait_for("streaming.stopped")
    assert stream_server.wait_frames("stop")[0]["stream_id"] == stream_id
    client.calls.actions.hangup(call.call_control_id)
    receiver.wait_for("call.hangup")
    assert call.state == "ended"


def test_answer_with_stream_url_starts_streaming(fake, client, receiver, stream_server):
    call = fake.place_call()
    client.calls.actions.answer(call.call_control_id, **rtp_params(stream_server.url))
    call.wait_streaming()
    receiver.wait_for("streaming.started")
    assert receiver.event_types(call.call_control_id)[:3] == ["call.initiated", "call.answered", "streaming.started"]


def test_a_second_streaming_start_replaces_the_stream(fake, client, receiver, stream_server):
    call = fake.place_call()
    client.calls.actions.answer(call.call_control_id)
    client.calls.actions.start_streaming(call.call_control_id, **rtp_params(stream_server.url))
    first = call.wait_streaming()
    client.calls.actions.start_streaming(call.call_control_id, **rtp_params(stream_server.url))
    stream_server.wait_frames("start", 2)
    second = call.wait_streaming()
    assert first != second
    assert stream_server.frames("stop")[0]["stream_id"] == first
