"""The exact JSON of every frame the simulator sends, against the documented Telnyx examples."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest
import telnyx

from simulator import CallerAudio, FakeTelnyx, g711
from tests.simulator.conftest import StreamServer, WebhookReceiver, rtp_params

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")


def start_call(fake: FakeTelnyx, client: telnyx.Telnyx, url: str, caller: CallerAudio | None = None, **params):
    call = fake.place_call(from_="+13122010094", to="+13122123456", caller_audio=caller, tags=("TAG1", "TAG2"))
    client.calls.actions.answer(call.call_control_id, command_id="answer-1")
    client.calls.actions.start_streaming(call.call_control_id, command_id="stream-1", **rtp_params(url, **params))
    call.wait_streaming()
    return call


def test_connected_then_start_with_documented_keys_and_types(fake, client, stream_server: StreamServer):
    call = start_call(fake, client, stream_server.url, client_state="aGF2ZSBhIG5pY2UgZGF5ID1d",
                      custom_parameters=[{"name": "customer_id", "value": "customer_123"}])
    stream_server.wait_frames("media")
    first, second = (json.loads(m) for m in stream_server.messages[:2])
    assert first == {"event": "connected", "version": "1.0.0"}
    assert list(second) == ["event", "sequence_number", "stream_id", "start"]
    assert second["event"] == "start"
    assert second["sequence_number"] == "1"
    assert second["stream_id"] == call.stream_id
    start = second["start"]
    assert list(start) == ["user_id", "call_control_id", "call_session_id", "from", "to", "tags", "client_state",
                           "custom_parameters", "media_format"]
    assert start["call_control_id"] == call.call_control_id
    assert start["call_session_id"] == call.call_session_id
    assert (start["from"], start["to"]) == ("+13122010094", "+13122123456")
    assert start["tags"] == ["TAG1", "TAG2"]
    assert start["client_state"] == "aGF2ZSBhIG5pY2UgZGF5ID1d"
    assert start["custom_parameters"] == {"customer_id": "customer_123"}
    assert start["media_format"] == {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}
    assert "stream_id" not in start


def test_start_omits_optional_fields_not_given(fake, client, stream_server):
    call = fake.place_call()
    client.calls.actions.answer(call.call_control_id)
    client.calls.actions.start_streaming(call.call_control_id, stream_url=stream_server.url)
    call.wait_streaming()
    start = stream_server.wait_frames("start")[0]["start"]
    assert set(start) == {"user_id", "call_control_id", "call_session_id", "from", "to", "media_format"}


def test_media_frames_match_the_documented_shape(fake, client, stream_server):
    call = start_call(fake, client, stream_server.url, caller=CallerAudio.tone(1000, -6))
    stream_server.wait_frames("media", 3)
    raw = stream_server.raw("media")[:3]
    frames = [json.loads(m) for m in raw]
    for i, frame in enumerate(frames):
        assert list(frame) == ["event", "sequence_number", "media", "stream_id"]
        assert list(frame["media"]) == ["track", "chunk", "timestamp", "payload"]
        assert frame["stream_id"] == call.stream_id
        assert frame["sequence_number"] == str(i + 2)  # start was "1"
        assert frame["media"]["track"] == "inbound"
        assert frame["media"]["chunk"] == str(i + 1)
        assert frame["media"]["timestamp"] == str(20 * i)
        payload = base64.b64decode(frame["media"]["payload"], validate=True)
        assert len(payload) == 160  # 20 ms of PCMU, raw bytes, no RTP header
    sent = np.concatenate([g711.decode(base64.b64decode(f["media"]["payload"]), "PCMU") for f in frames])
    expected = g711.decode(g711.encode(call.caller_pcm()[:480], "PCMU"), "PCMU")
    assert np.array_equal(sent, expected)


@pytest.mark.parametrize("clip_ms", [60, 50])  # whole frames, and a seam inside a frame
def test_a_looping_caller_clip_repeats_exactly_on_every_pass(fake, client, stream_server, clip_ms):
    rng = np.random.default_rng(clip_ms)
    clip = rng.uniform(-0.5, 0.5, 8 * clip_ms).astype(np.float32)
    caller = CallerAudio.from_pcm(clip, 8000, loop=True)
    call = start_call(fake, client, stream_server.url, caller=caller)
    stream_server.wait_frames("media", 12)
    frames = [json.loads(m) for m in stream_server.raw("media")[:12]]
    sent = np.concatenate([g711.decode(base64.b64decode(f["media"]["payload"]), "PCMU") for f in frames])
    expected = g711.decode(g711.encode(call.caller_pcm()[:len(sent)], "PCMU"), "PCMU")
    assert np.array_equal(sent, expected)
    period = 8 * clip_ms
    assert np.array_equal(sent[period:2 * period], sent[:period])


def test_a_one_shot_caller_clip_is_followed_by_silence(fake, client, stream_server):
    clip = np.random.default_rng(7).uniform(-0.5, 0.5, 8 * 50).astype(np.float32)  # 2.5 frames
    call = start_call(fake, client, stream_server.url, caller=CallerAudio.from_pcm(clip, 8000))
    stream_server.wait_frames("media", 6)
    frames = [json.loads(m) for m in stream_server.raw("media")[:6]]
    sent = b"".join(base64.b64decode(f["media"]["payload"]) for f in frames)
    assert sent == g711.encode(call.caller_pcm()[:960], "PCMU")
    assert sent[400:] == bytes([g711.ULAW_SILENCE]) * 560


def test_l16_stream_reports_rate_and_sends_big_endian_samples(fake, client, stream_server):
    start_call(fake, client, stream_server.url, caller=CallerAudio.tone(500, -6),
               stream_bidirectional_codec="L16", stream_bidirectional_sampling_rate=16000)
    start = stream_server.wait_frames("start")[0]["start"]
    assert start["media_format"] == {"encoding": "L16", "sample_rate": 16000, "channels": 1}
    payload = base64.b64decode(stream_server.wait_frames("media")[0]["media"]["payload"])
    assert len(payload) == 640
    samples = np.frombuffer(payload, dtype=">i2")
    assert 0.4 < np.abs(samples).max() / 32768 < 0.6  # -6 dBFS peak, so the byte order is right


def test_pcma_stream_is_eight_khz(fake, client, stream_server):
    start_call(fake, client, stream_server.url, stream_bidirectional_codec="PCMA")
    start = stream_server.wait_frames("start")[0]["start"]
    assert start["media_format"] == {"encoding": "PCMA", "sample_rate": 8000, "channels": 1}
    payload = base64.b64decode(stream_server.wait_frames("media")[0]["media"]["payload"])
    assert payload == bytes([g711.ALAW_SILENCE]) * 160


def test_auth_token_in_connected_frame_and_upgrade_header(fake, client, stream_server):
    start_call(fake, client, stream_server.url, stream_auth_token="s3cret")
    connected = stream_server.wait_frames("connected")[0]
    assert connected == {"event": "connected", "version": "1.0.0", "x-telnyx-streaming-auth-token": "s3cret"}
    assert stream_server.headers[0]["x-telnyx-streaming-auth-token"] == "s3cret"


def test_no_auth_header_without_token(fake, client, stream_server):
    start_call(fake, client, stream_server.url)
    stream_server.wait_frames("start")
    assert "x-telnyx-streaming-auth-token" not in stream_server.headers[0]


def test_dtmf_mark_stop_and_error_frames(fake, client, stream_server, receiver: WebhookReceiver):
    call = start_call(fake, client, stream_server.url)
    call.send_dtmf("1")
    dtmf = stream_server.wait_frames("dtmf")[0]
    assert list(dtmf) == ["event", "stream_id", "occurred_at", "sequence_number", "dtmf"]
    assert dtmf["dtmf"] == {"digit": "1"}
    assert ISO_Z.match(dtmf["occurred_at"])
    assert isinstance(dtmf["sequence_number"], str)

    stream_server.send({"event": "mark", "mark": {"name": "some_mark_name"}})
    mark = stream_server.wait_frames("mark")[0]
    assert list(mark) == ["event", "stream_id", "sequence_number", "mark"]
    assert mark["mark"] == {"name": "some_mark_name"}
    assert mark["stream_id"] == call.stream_id

    stream_server.send("not json")
    error = stream_server.wait_frames("error")[0]
    assert error == {"event": "error", "payload": {"code": 100003, "title": "malformed_frame",
                                                   "detail": "Frame is not valid JSON."},
                     "stream_id": call.stream_id}

    call.hangup()
    stop = stream_server.wait_frames("stop")[0]
    assert list(stop) == ["event", "sequence_number", "stop", "stream_id"]
    assert stop["stop"] == {"user_id": fake.user_id, "call_control_id": call.call_control_id}
    seqs = [int(f["sequence_number"]) for f in stream_server.frames() if "sequence_number" in f]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_outbound_track_echoes_what_the_caller_hears(fake, client, stream_server):
    call = start_call(fake, client, stream_server.url, stream_track="both_tracks")
    frames = stream_server.wait_frames("media", 4)
    tracks = {f["media"]["track"] for f in frames}
    assert tracks == {"inbound", "outbound"}
    assert call.stream_id
