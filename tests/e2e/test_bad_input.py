"""DESIGN §6: every door gets malformed, oversized, hostile and out-of-order input.

Each test checks the exact status and error code, that the event log kept what it should, and
that a bystander call with music playing heard no gap meanwhile.
"""

from __future__ import annotations

import base64
import json
import time

import httpx
import numpy as np
import pytest
from nacl.signing import SigningKey
from websockets.exceptions import ConnectionClosed

from livecall import connected_call, inject, wait_injection, wait_until, wav_bytes
from webhooks.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER


class Bystander:
    """A second call playing a looped tone; afterwards its caller must have heard no hole."""

    def __init__(self, telnyx, server):
        self.call = connected_call(telnyx, server)
        self.server = server
        inj = inject(server, self.call, {"tone": {"frequency_hz": 300, "duration_ms": 1000},
                                         "loop": True})
        self.inj_id = inj["id"]
        wait_until(lambda: len(self.call.heard_pcm()) > 1600, what="bystander audio")

    def assert_unharmed(self):
        view = self.server.http.get(
            f"/streams/{self.call.call_control_id}/injections/{self.inj_id}").json()
        assert view["status"] == "playing"
        heard = self.call.heard_pcm()
        loud = np.flatnonzero(heard != 0)
        playing = heard[loud[0]:]
        # A looped 300 Hz tone never has 10 ms of digital silence: a run that long is a gap.
        zero_runs = np.diff(np.flatnonzero(np.concatenate(([1], playing, [1])) != 0)) - 1
        assert zero_runs.max() < 80, f"bystander heard a {zero_runs.max() / 8:.0f} ms gap"


@pytest.fixture
def bystander(telnyx, server):
    b = Bystander(telnyx, server)
    yield b
    b.assert_unharmed()


def error_of(response: httpx.Response, status: int, code: str, field: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    if field is not None:
        assert error["field"] == field
    return error


def log_events(server, **params):
    return server.http.get("/stream-log", params={"limit": 1000, **params}).json()["items"]


# -- webhooks ----------------------------------------------------------------------------------


def sign(telnyx, body: bytes, ts: str) -> str:
    """Sign raw bytes as Telnyx would (also bytes that are not UTF-8, to test the door)."""
    key = SigningKey(telnyx.signer.seed)
    return base64.b64encode(key.sign(ts.encode() + b"|" + body).signature).decode()


def signed_post(server, telnyx, body: bytes, *, timestamp: int | None = None, signature: str | None = None):
    ts = str(timestamp if timestamp is not None else int(time.time()))
    sig = signature if signature is not None else sign(telnyx, body, ts)
    return server.http.post("/webhooks/voice", content=body, headers={
        SIGNATURE_HEADER: sig, TIMESTAMP_HEADER: ts, "content-type": "application/json"})


def call_initiated(ccid: str, event_id: str = "evt-1") -> bytes:
    return json.dumps({"data": {"record_type": "event", "event_type": "call.initiated", "id": event_id,
                                "occurred_at": "2026-01-01T00:00:00Z",
                                "payload": {"call_control_id": ccid, "direction": "incoming",
                                            "from": "+15550001", "to": "+15550002", "state": "parked"}},
                       "meta": {"attempt": 1}}).encode()


@pytest.mark.parametrize("case", ["missing", "wrong", "stale", "future", "tampered"])
def test_bad_webhook_signatures_are_refused_and_logged(telnyx, server, bystander, case):
    body = call_initiated("v3:forged")
    now = int(time.time())
    if case == "missing":
        response = server.http.post("/webhooks/voice", content=body)
    elif case == "wrong":
        response = signed_post(server, telnyx, body, signature=base64.b64encode(b"x" * 64).decode())
    elif case == "stale":
        response = signed_post(server, telnyx, body, timestamp=now - 301)
    elif case == "future":
        response = signed_post(server, telnyx, body, timestamp=now + 301)
    else:
        ts = str(now)
        response = server.http.post("/webhooks/voice", content=body.replace(b"forged", b"other"),
                                    headers={SIGNATURE_HEADER: sign(telnyx, body, ts), TIMESTAMP_HEADER: ts})
    error_of(response, 401, "invalid_signature")
    assert [e for e in log_events(server, event="webhook.rejected")]
    assert not any(c.call_control_id.startswith("v3:") for c in telnyx.commands if c.action == "answer"
                   and c.call_control_id in ("v3:forged", "v3:other"))
    assert server.http.get("/streams/v3:forged").status_code == 404


def test_webhooks_are_refused_without_a_public_key(telnyx, make_server_):
    server = make_server_(TELNYX_PUBLIC_KEY="")
    error_of(signed_post(server, telnyx, call_initiated("v3:x")), 401, "invalid_signature")


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [(b"{not json", 400, "invalid_json"), (b"[]", 422, "invalid_webhook"),
     (b'{"data": {"event_type": "call.initiated"}}', 422, "invalid_webhook"),
     (b"\xff\xfe", 400, "invalid_json")],
)
def test_malformed_webhooks(telnyx, server, bystander, body, status, code):
    error_of(signed_post(server, telnyx, body), status, code)
    assert log_events(server, event="webhook.rejected")


def test_unknown_event_types_are_acknowledged_and_logged(telnyx, server):
    body = json.dumps({"data": {"event_type": "call.recording.saved", "id": "evt-x",
                                "payload": {"call_control_id": "v3:abc"}}}).encode()
    response = signed_post(server, telnyx, body)
    assert response.status_code == 200 and response.json() == {"status": "ignored"}
    assert log_events(server, event="webhook.received")[0]["data"]["event_type"] == "call.recording.saved"


def test_duplicate_and_out_of_order_webhooks_act_once(telnyx, server, bystander):
    call = connected_call(telnyx, server)
    ccid = call.call_control_id
    call.redeliver("call.initiated")
    call.redeliver("call.answered")
    wait_until(lambda: len(log_events(server, event="webhook.duplicate")) == 2, what="duplicates logged")
    # Late events under other ids (as from a retry elsewhere) must not answer or stream again.
    assert signed_post(server, telnyx, call_initiated(ccid, "evt-late")).status_code == 200
    answered = json.dumps({"data": {"event_type": "call.answered", "id": "evt-late-2",
                                    "payload": {"call_control_id": ccid}}}).encode()
    assert signed_post(server, telnyx, answered).status_code == 200
    assert telnyx.wait_webhooks_idle()
    assert server.http.get(f"/streams/{ccid}").json()["status"] == "streaming"
    sent = sorted(c.action for c in telnyx.commands if c.call_control_id == ccid)
    assert sent == ["answer", "streaming_start"]


def test_events_after_hangup_do_not_revive_the_call(telnyx, server):
    call = connected_call(telnyx, server)
    call.hangup()
    wait_until(lambda: server.http.get(f"/streams/{call.call_control_id}").json()["status"] == "ended",
               what="ended")
    late = json.dumps({"data": {"event_type": "call.answered", "id": "evt-late",
                                "payload": {"call_control_id": call.call_control_id}}}).encode()
    assert signed_post(server, telnyx, late).status_code == 200
    assert server.http.get(f"/streams/{call.call_control_id}").json()["status"] == "ended"


# -- REST ------------------------------------------------------------------------------------------


def test_unknown_and_ended_streams(telnyx, server, bystander):
    error_of(server.http.post("/streams/nope/inject", json={"dtmf": "1"}), 404, "stream_not_found")
    error_of(server.http.get("/streams/nope"), 404, "stream_not_found")
    call = connected_call(telnyx, server)
    call.hangup()
    wait_until(lambda: server.http.get(f"/streams/{call.call_control_id}").json()["status"] == "ended",
               what="ended")
    error_of(server.http.post(f"/streams/{call.call_control_id}/inject", json={"dtmf": "1"}),
             409, "stream_not_active")
    error_of(server.http.post(f"/streams/{call.call_control_id}/clear"), 409, "stream_not_active")


@pytest.mark.parametrize(
    ("body", "code", "field"),
    [
        ({}, "missing_source", "source"),
        ({"gain_db": 3}, "missing_source", "source"),
        ({"dtmf": "1", "text": "hi"}, "multiple_sources", "text"),
        ({"dtmf": "1", "volume": 3}, "unknown_field", "volume"),
        ({"dtmf": "1", "gain_db": 13}, "out_of_range", "gain_db"),
        ({"dtmf": "1", "gain_db": -61}, "out_of_range", "gain_db"),
        ({"dtmf": "1", "gain_db": "loud"}, "invalid_field", "gain_db"),
        ('{"dtmf": "1", "gain_db": NaN}', "invalid_field", "gain_db"),
        ('{"dtmf": "1", "gain_db": Infinity}', "invalid_field", "gain_db"),
        ({"dtmf": "1", "fade_in_ms": 10001}, "out_of_range", "fade_in_ms"),
        ({"dtmf": "1", "fade_out_ms": 1.5}, "invalid_field", "fade_out_ms"),
        ({"dtmf": "1", "loop": "yes please"}, "invalid_field", "loop"),
        ({"dtmf": "1", "mode": "stream"}, "invalid_field", "mode"),
        ({"dtmf": "1", "mode": "playback"}, "invalid_field", "mode"),
        ({"dtmf": "1", "voice": "en"}, "invalid_field", "voice"),
        ({"dtmf": "12x"}, "invalid_field", "dtmf"),
        ({"dtmf": ""}, "invalid_field", "dtmf"),
        ({"tone": 440}, "invalid_field", "tone"),
        ({"tone": {"duration_ms": 100}}, "invalid_field", "tone.frequency_hz"),
        ({"tone": {"frequency_hz": 440, "pitch": 1}}, "unknown_field", "tone.pitch"),
        ({"tone": {"frequency_hz": 5000}}, "out_of_range", "tone.frequency_hz"),
        ({"tone": {"frequency_hz": 440, "level_dbfs": 3}}, "out_of_range", "tone.level_dbfs"),
        ({"text": "x" * 5001}, "out_of_range", "text"),
        ({"audio_url": "ftp://example.com/a.wav"}, "invalid_field", "audio_url"),
        ({"audio_url": "http://example.com:99999/a.wav"}, "invalid_field", "audio_url"),
        ({"audio_url": "http://[::1/a.wav"}, "invalid_field", "audio_url"),
        ({"audio_base64": "@@not base64@@"}, "invalid_field", "audio_base64"),
        ({"clip": "../../etc/passwd"}, "unknown_clip", "clip"),
        ({"clip": "missing"}, "unknown_clip", "clip"),
        ({"text": "hello", "voice": "no-such-voice"}, "unknown_voice", "voice"),
    ],
)
def test_invalid_injection_requests_name_the_field(telnyx, server, body, code, field):
    call = connected_call(telnyx, server)
    url = f"/streams/{call.call_control_id}/inject"
    if isinstance(body, str):  # JSON that Python accepts but the standard does not
        response = server.http.post(url, content=body, headers={"content-type": "application/json"})
    else:
        response = server.http.post(url, json=body)
    error_of(response, 422, code, field)
    assert server.http.get(f"/streams/{call.call_control_id}").json()["injections"] == []


def test_malformed_json_and_wrong_content_type(telnyx, server, bystander):
    ccid = bystander.call.call_control_id
    error_of(server.http.post(f"/streams/{ccid}/inject", content=b"{oops",
                              headers={"content-type": "application/json"}), 400, "invalid_json")
    error_of(server.http.post(f"/streams/{ccid}/inject", content=b"dtmf=1",
                              headers={"content-type": "text/plain"}), 415, "unsupported_media_type")
    error_of(server.http.post(f"/streams/{ccid}/inject", json=[1, 2]), 422, "invalid_field")


@pytest.mark.parametrize(
    "audio",
    [b"", b"RIFF\x00\x00\x00\x00WAVEjunk", b"\x00" * 1000, wav_bytes(np.zeros(0, dtype=np.int16))],
    ids=["empty", "broken-wav", "noise-bytes", "zero-samples"],
)
def test_undecodable_audio(telnyx, server, bystander, audio):
    ccid = bystander.call.call_control_id
    body = {"audio_base64": base64.b64encode(audio).decode()} if audio else {"audio_base64": "AAAA"}
    error = error_of(server.http.post(f"/streams/{ccid}/inject", json=body), 422, "undecodable_audio",
                     "audio_base64")
    assert len(error["message"]) > 20
    upload = server.http.post(f"/streams/{ccid}/inject", files={"file": ("x.wav", audio or b"\x00")})
    error_of(upload, 422, "undecodable_audio", "file")


def test_oversized_bodies_and_uploads(telnyx, make_server_):
    server = make_server_(MAX_UPLOAD_BYTES=100_000)
    b = Bystander(telnyx, server)
    ccid = b.call.call_control_id
    big = wav_bytes(np.zeros(60_000, dtype=np.int16))
    error_of(server.http.post(f"/streams/{ccid}/inject", json={"audio_base64": base64.b64encode(big).decode()}),
             413, "payload_too_large")
    error_of(server.http.post(f"/streams/{ccid}/inject", files={"file": ("big.wav", big)}),
             413, "payload_too_large")
    error_of(server.http.post("/webhooks/voice", content=b"x" * 200_000), 413, "payload_too_large")
    b.assert_unharmed()


def test_too_long_audio(telnyx, make_server_):
    server = make_server_(MAX_INJECTION_SECONDS=1)
    b = Bystander(telnyx, server)
    ccid = b.call.call_control_id
    two_seconds = wav_bytes(np.zeros(16_000, dtype=np.int16))
    error_of(server.http.post(f"/streams/{ccid}/inject", json={"audio_base64": base64.b64encode(two_seconds).decode()}),
             422, "audio_too_long", "audio_base64")
    error_of(server.http.post(f"/streams/{ccid}/inject", json={"tone": {"frequency_hz": 440, "duration_ms": 1500}}),
             422, "audio_too_long", "tone.duration_ms")
    b.assert_unharmed()


def test_too_many_active_injections(telnyx, make_server_):
    server = make_server_(MAX_ACTIVE_INJECTIONS=3)
    call = connected_call(telnyx, server)
    for _ in range(3):
        inject(server, call, {"tone": {"frequency_hz": 200, "duration_ms": 1000}, "loop": True, "gain_db": -20})
    error_of(server.http.post(f"/streams/{call.call_control_id}/inject", json={"dtmf": "1"}),
             429, "too_many_injections")


def test_audio_url_faults(telnyx, make_server_, audio_http):
    server = make_server_(AUDIO_URL_TIMEOUT_S=0.5, MAX_UPLOAD_BYTES=50_000)
    b = Bystander(telnyx, server)
    ccid = b.call.call_control_id

    def post(url):
        return server.http.post(f"/streams/{ccid}/inject", json={"audio_url": url})

    error_of(post("http://127.0.0.1:9/a.wav"), 422, "audio_url_forbidden", "audio_url")
    error_of(post("http://[::1]:9/a.wav"), 422, "audio_url_forbidden", "audio_url")
    error_of(post("http://10.0.0.1/a.wav"), 422, "audio_url_forbidden", "audio_url")
    error_of(post("http://no-such-host.invalid/a.wav"), 502, "audio_url_unreachable", "audio_url")

    allowed = make_server_(AUDIO_URL_TIMEOUT_S=0.5, MAX_UPLOAD_BYTES=50_000, AUDIO_URL_ALLOW_PRIVATE=True)
    call = connected_call(telnyx, allowed)

    def post_allowed(url):
        return allowed.http.post(f"/streams/{call.call_control_id}/inject", json={"audio_url": url})

    error_of(post_allowed(audio_http.url("/slow")), 502, "audio_url_timeout", "audio_url")
    error_of(post_allowed(audio_http.url("/huge")), 422, "audio_url_too_large", "audio_url")
    error_of(post_allowed(audio_http.url("/missing")), 502, "audio_url_failed", "audio_url")
    error_of(post_allowed(audio_http.serve("junk.wav", b"junk" * 10)), 422, "undecodable_audio", "audio_url")
    unreachable = post_allowed("http://127.0.0.1:9/a.wav")
    error_of(unreachable, 502, "audio_url_unreachable", "audio_url")
    b.assert_unharmed()


def test_api_token_guards_rest_but_not_health_or_webhooks(telnyx, make_server_):
    server = make_server_(API_TOKEN="s3cret")
    error_of(server.http.get("/streams"), 401, "unauthorized")
    error_of(server.http.get("/streams", headers={"Authorization": "Bearer wrong"}), 401, "unauthorized")
    assert server.http.get("/streams", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert server.http.get("/health").status_code == 200
    call = telnyx.place_call()
    call.wait_streaming(timeout=10)


def test_errors_have_one_shape_for_404_405(server):
    error_of(server.http.get("/no/such/route"), 404, "not_found")
    error_of(server.http.delete("/streams"), 405, "method_not_allowed")


def test_stream_log_query_validation(server):
    error_of(server.http.get("/stream-log", params={"limit": 0}), 422, "out_of_range", "limit")
    error_of(server.http.get("/stream-log", params={"limit": 1001}), 422, "out_of_range", "limit")
    error_of(server.http.get("/stream-log", params={"cursor": "abc"}), 422, "invalid_field", "cursor")
    error_of(server.http.get("/stream-log", params={"since": "yesterday"}), 422, "invalid_field", "since")
    error_of(server.http.get("/stream-log", params={"sort": "x"}), 422, "unknown_field", "sort")
    error_of(server.http.get("/streams", params={"status": "odd"}), 422, "invalid_field", "status")


# -- the media WebSocket -------------------------------------------------------------------------


def test_garbage_on_the_socket_is_counted_and_the_call_goes_on(telnyx, server, bystander):
    call = connected_call(telnyx, server)
    inj = inject(server, call, {"tone": {"frequency_hz": 500, "duration_ms": 1000}, "loop": True})
    for raw in ("not json", '{"event": "bogus"}', '{"event": "media", "media": {"payload": "@@@"}}',
                b"\x00\x01binary", "[]", '{"event": "dtmf", "dtmf": {"digit": "XX"}}'):
        call.send_raw(raw)
    call.send_dtmf("9")
    wait_until(lambda: log_events(server, event="dtmf"), what="dtmf after garbage")
    errors = log_events(server, event="stream.frame_error", call_control_id=call.call_control_id)
    assert len(errors) == 6
    metrics = server.http.get("/metrics").text
    assert 'mixer_websocket_errors_total{reason="malformed_frame"} 6.0\n' in metrics
    wait_injection(server, call, inj["id"], "playing")
    wait_until(lambda: len(call.heard_pcm()) > 4000, what="the call's audio")


@pytest.mark.parametrize(("token", "status", "reason"), [(None, 401, "missing"), ("wrong", 403, "invalid")])
@pytest.mark.parametrize("static", [True, False])
def test_socket_without_the_right_auth_token_is_refused_at_the_handshake(telnyx, make_server_, token, status,
                                                                         reason, static):
    server = make_server_(STREAM_AUTH_TOKEN="tok-123" if static else "")
    code = telnyx.probe_socket(server.url.replace("http", "ws") + "/stream", auth_token=token)
    assert code == status  # an HTTP answer to the upgrade: no frame ever flowed
    assert log_events(server, event="stream.auth_failed")[0]["data"]["reason"] == reason
    assert f'mixer_stream_auth_refused_total{{reason="{reason}"}} 1.0\n' in server.http.get("/metrics").text


def test_a_per_call_token_carries_only_its_own_call(telnyx, server):
    first = connected_call(telnyx, server)
    second = connected_call(telnyx, server)
    tokens = {c.call_control_id: c.body["stream_auth_token"] for c in telnyx.commands if c.action == "streaming_start"}
    assert tokens[first.call_control_id] != tokens[second.call_control_id]
    start = {"event": "start", "sequence_number": "1", "stream_id": "stolen-stream",
             "start": {"call_control_id": second.call_control_id,
                       "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}}
    code = telnyx.probe_socket(server.url.replace("http", "ws") + "/stream",
                               auth_token=tokens[first.call_control_id], start=start)
    assert code == 1008
    assert server.http.get("/streams/stolen-stream").status_code == 404
    assert [e["data"]["reason"] for e in log_events(server, event="stream.frame_error")] == ["wrong_call"]


def test_socket_with_the_right_auth_token_streams(telnyx, make_server_):
    server = make_server_(STREAM_AUTH_TOKEN="tok-123")
    call = connected_call(telnyx, server)
    start = next(c for c in telnyx.commands if c.action == "streaming_start")
    assert start.body["stream_auth_token"] == "tok-123"
    inject(server, call, {"dtmf": "1"})


def test_telnyx_api_failures_are_retried_then_recorded(telnyx, server):
    telnyx.fail_next("answer", status=500, times=5)
    call = telnyx.place_call()
    wait_until(lambda: log_events(server, event="command.failed"), what="failed command")
    failed = log_events(server, event="command.failed")[0]
    assert failed["call_control_id"] == call.call_control_id and "500" in failed["data"]["error"]
    answers = [c for c in telnyx.commands if c.action == "answer"]
    assert len(answers) == 2  # TELNYX_MAX_RETRIES=1: the first try and one retry, same command_id
    assert len({c.body["command_id"] for c in answers}) == 1


def test_a_telnyx_timeout_is_retried_with_the_same_command_id_and_acts_once(telnyx, make_server_):
    server = make_server_(TELNYX_TIMEOUT_S=0.3)
    telnyx.fail_next("answer", status=200, delay_s=0.6)  # executed, but answered too late
    call = telnyx.place_call()
    call.wait_streaming(timeout=10)

    def both_answers():  # each is recorded when its response goes out: the slow one last
        found = [c for c in telnyx.commands if c.action == "answer"]
        return found if len(found) == 2 else None

    answers = wait_until(both_answers, what="the retried answer")
    assert len({c.body["command_id"] for c in answers}) == 1
    assert sum(c.executed for c in answers) == 1
    # The simulator has sent `start`; the server takes it on its loop, a moment later on a busy machine.
    wait_until(lambda: server.http.get(f"/streams/{call.call_control_id}").json()["status"] == "streaming",
               what="the call streaming")


def test_a_start_frame_after_hangup_does_not_revive_the_call(telnyx, server, bystander):
    from websockets.sync.client import connect

    call = connected_call(telnyx, server)
    call.hangup()
    wait_until(lambda: server.http.get(f"/streams/{call.call_control_id}").json()["status"] == "ended",
               what="ended")
    start = {"event": "start", "sequence_number": "1", "stream_id": "late-stream",
             "start": {"call_control_id": call.call_control_id,
                       "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}}}
    token = next(c.body["stream_auth_token"] for c in telnyx.commands
                 if c.action == "streaming_start" and c.call_control_id == call.call_control_id)
    with connect(server.url.replace("http", "ws") + "/stream", open_timeout=5,
                 additional_headers={"x-telnyx-streaming-auth-token": token}) as ws:
        ws.send(json.dumps({"event": "connected", "version": "1.0.0"}))
        ws.send(json.dumps(start))
        try:
            while True:
                ws.recv(timeout=5)
        except ConnectionClosed as closed:
            assert closed.rcvd is not None and closed.rcvd.code == 1008
    assert server.http.get(f"/streams/{call.call_control_id}").json()["status"] == "ended"
    assert server.http.get("/streams/late-stream").status_code == 404
    assert call.call_control_id not in [s["call_control_id"] for s in server.http.get("/streams").json()["items"]]
