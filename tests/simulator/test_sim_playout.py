"""What the caller hears: queueing, marks, clear, chunk bounds, modes, target legs, error frames."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
import soundfile as sf
import telnyx

from simulator import FakeTelnyx, SimCall, g711
from simulator import stream as stream_module
from simulator.recorder import Recorder
from tests.simulator.conftest import StreamServer, WebhookReceiver, rtp_params, wait_until


def streaming_call(fake: FakeTelnyx, client: telnyx.Telnyx, url: str, **params) -> SimCall:
    call = fake.place_call()
    client.calls.actions.answer(call.call_control_id)
    client.calls.actions.start_streaming(call.call_control_id, **(rtp_params(url, **params) if params.get(
        "stream_bidirectional_mode", "rtp") == "rtp" else {"stream_url": url, **params}))
    call.wait_streaming()
    return call


def tone_pcm(ms: int, freq: float = 440.0, rate: int = 8000, level: float = 0.3) -> np.ndarray:
    t = np.arange(rate * ms // 1000) / rate
    # Offset keeps every sample away from zero, so "silence" and "audio" never look alike.
    return np.rint((0.05 + level * np.sin(2 * np.pi * freq * t)) * 32767).astype(np.int16)


def media(pcm: np.ndarray, encoding: str = "PCMU") -> dict:
    return {"event": "media", "media": {"payload": base64.b64encode(g711.encode(pcm, encoding)).decode()}}


def mark(name: str) -> dict:
    return {"event": "mark", "mark": {"name": name}}


def test_mark_with_nothing_queued_comes_back_at_once(fake, client, stream_server: StreamServer):
    call = streaming_call(fake, client, stream_server.url)
    stream_server.send(mark("idle"))
    call.wait_mark("idle")
    name, echoed_at, due = call.mark_positions[0]
    assert name == "idle" and due <= echoed_at


def test_mark_comes_back_after_the_audio_before_it_has_played(fake, client, stream_server):
    call = streaming_call(fake, client, stream_server.url)
    stream_server.send(media(tone_pcm(300)))
    stream_server.send(mark("after-300ms"))
    call.wait_mark("after-300ms")
    (_name, echoed_at, due), = call.mark_positions
    assert due >= 2400  # 300 ms at 8 kHz were queued before the mark
    assert echoed_at >= due  # echoed only once that audio had played
    assert call.marks_cleared == []


def test_heard_audio_is_what_was_sent_back_to_back_sample_exact(fake, client, stream_server):
    call = streaming_call(fake, client, stream_server.url)
    chunks = [tone_pcm(400, f) for f in (300.0, 500.0, 700.0)]
    for chunk in chunks:
        stream_server.send(media(chunk))
    stream_server.send(mark("done"))
    call.wait_mark("done")
    start = call.media.recorder.segments[0][0]
    expected = np.concatenate([g711.decode(g711.encode(c, "PCMU"), "PCMU") for c in chunks])
    heard = call.heard_pcm()
    assert np.array_equal(heard[start:start + len(expected)], expected)
    assert not heard[:start].any()  # before our first chunk the caller heard silence
    assert [len(p) for _, p in call.received] == [3200, 3200, 3200]


def test_clear_drops_queued_audio_returns_queued_marks_and_keeps_accepting(fake, client, stream_server):
    call = streaming_call(fake, client, stream_server.url)
    stream_server.send(media(tone_pcm(5000)))
    stream_server.send(mark("long"))
    stream_server.send({"event": "clear"})
    call.wait_mark("long")
    assert call.marks_cleared == ["long"]
    heard_after_clear = len(call.heard_pcm())
    assert call.media.recorder.play_end < 5 * 8000  # the rest of the 5 s chunk was dropped
    stream_server.send(media(tone_pcm(100, 1000.0)))
    stream_server.send(mark("post-clear"))
    call.wait_mark("post-clear")
    assert call.marks_cleared == ["long"]
    heard = call.heard_pcm()
    assert heard[heard_after_clear:].any()  # audio sent after a clear is played
    assert stream_server.frames("error") == []


def test_chunks_outside_20ms_to_30s_are_rejected(fake, client, stream_server):
    call = streaming_call(fake, client, stream_server.url)
    stream_server.send(media(tone_pcm(10)))
    stream_server.send(media(np.zeros(30 * 8000 + 160, dtype=np.int16)))
    call.wait_errors(2)
    too_short, too_long = call.errors_sent
    assert too_short["payload"]["code"] == too_long["payload"]["code"] == 100004
    assert too_short["payload"]["title"] == "invalid_media"
    assert "20 ms to 30 s" in too_short["payload"]["detail"] and "(got 10 ms)" in too_short["payload"]["detail"]
    assert call.media.recorder.play_end == 0  # nothing was queued
    stream_server.send(media(tone_pcm(20)))
    stream_server.send(media(np.zeros(30 * 8000, dtype=np.int16)))
    stream_server.send(mark("ok"))
    wait_until(lambda: call.media.recorder.play_end >= 30 * 8000 + 160, what="both bounds accepted")
    assert len(call.errors_sent) == 2


def test_l16_odd_byte_count_is_invalid_media(fake, client, stream_server):
    call = streaming_call(fake, client, stream_server.url, stream_bidirectional_codec="L16",
                          stream_bidirectional_sampling_rate=16000)
    stream_server.send({"event": "media", "media": {"payload": base64.b64encode(bytes(641)).decode()}})
    call.wait_errors(1)
    assert call.errors_sent[0]["payload"]["code"] == 100004


@pytest.mark.parametrize(("message", "code"), [
    (b"\x00\x01binary", 100003),
    ("[1, 2]", 100003),
    ('{"event": "start"}', 100003),
    ('{"event": "media", "media": {}}', 100003),
    ('{"event": "mark", "mark": {"name": 7}}', 100003),
    ('{"event": "media", "media": {"payload": "***not base64***"}}', 100004),
    ('{"event":"media","media":{"payload":"***not base64***"}}', 100004),  # the compact spelling
    ('{"event":"media","media":{"payload":"\\u00ff"}}', 100004),
])
def test_frames_other_than_ours_get_error_frames(fake, client, stream_server, message, code):
    call = streaming_call(fake, client, stream_server.url)
    stream_server.send(message)
    call.wait_errors(1)
    assert call.errors_sent[0]["payload"]["code"] == code
    stream_server.send(mark("still-open"))
    call.wait_mark("still-open")  # the socket stays usable after an error


def test_compact_and_spaced_media_frames_play_alike(fake, client, stream_server):
    # Compact frames take a shortcut past json.loads; what is heard must not depend on it.
    call = streaming_call(fake, client, stream_server.url)
    frame = media(tone_pcm(40))
    compact = json.dumps(frame, separators=(",", ":"))
    assert stream_module._EXACT_APP_MEDIA.fullmatch(compact) is not None
    stream_server.send(compact)
    stream_server.send(json.dumps(frame))
    stream_server.send(mark("both"))
    call.wait_mark("both")
    heard = call.heard_pcm()
    start = int(np.flatnonzero(heard)[0])
    first, second = heard[start:start + 320], heard[start + 320:start + 640]
    assert np.array_equal(first, second) and np.abs(first).max() > 3000
    assert not call.errors_sent


def test_mp3_mode_is_the_default_and_ignores_raw_audio(fake, client, stream_server):
    call = streaming_call(fake, client, stream_server.url, stream_bidirectional_mode="mp3",
                          stream_bidirectional_target_legs="self")
    stream_server.send(media(tone_pcm(200)))
    stream_server.send(mark("raw"))
    call.wait_mark("raw")
    assert call.media.stats.media_ignored == 1
    assert not call.heard_pcm().any()


def test_mp3_mode_plays_mp3_files_once_per_second(fake, client, stream_server):
    call = streaming_call(fake, client, stream_server.url, stream_bidirectional_mode="mp3",
                          stream_bidirectional_target_legs="self")
    buf = io.BytesIO()
    sf.write(buf, tone_pcm(300).astype(np.float32) / 32768, 8000, format="MP3")
    frame = {"event": "media", "media": {"payload": base64.b64encode(buf.getvalue()).decode()}}
    stream_server.send(frame)
    stream_server.send(frame)
    stream_server.send(mark("mp3"))
    call.wait_errors(1)
    assert call.errors_sent[0]["payload"] == {"code": 100005, "title": "rate_limit_reached",
                                              "detail": "Too many requests"}
    call.wait_mark("mp3")
    assert np.abs(call.heard_pcm()).max() > 3000


def test_default_target_leg_opposite_leaves_the_lone_caller_in_silence(fake, client, stream_server):
    call = streaming_call(fake, client, stream_server.url, stream_bidirectional_target_legs="opposite")
    stream_server.send(media(tone_pcm(100)))
    stream_server.send(mark("played-elsewhere"))
    call.wait_mark("played-elsewhere")
    assert call.media.recorder.play_end > 0
    assert not call.heard_pcm().any()


def test_drop_and_reconnect_keep_the_call(fake, client, stream_server, receiver: WebhookReceiver):
    call = streaming_call(fake, client, stream_server.url)
    stream_id = call.stream_id
    call.drop_socket()
    assert call.streaming_status == "dropped"
    assert stream_server.frames("stop") == []
    assert call.reconnect() == stream_id
    starts = stream_server.wait_frames("start", 2)
    assert [s["stream_id"] for s in starts] == [stream_id, stream_id]
    assert [f["event"] for f in stream_server.frames()].count("connected") == 2
    stream_server.send(mark("after-reconnect"))
    call.wait_mark("after-reconnect")
    assert "streaming.stopped" not in receiver.event_types(call.call_control_id)


def test_app_closing_the_socket_is_recorded(fake, client, receiver):
    server = StreamServer(reject_token="right")
    try:
        call = streaming_call(fake, client, server.url, stream_auth_token="wrong")
        call.wait_status("closed_by_app")
        assert call.close_code == 1008
        receiver.wait_for("streaming.stopped")
    finally:
        server.close()


def test_waiting_for_start_after_the_app_has_closed_still_sees_it(fake, client, receiver):
    # The app closes right after `start`; a waiter that looks only then must still see that
    # `start` went out, not wait for a "streaming" status that has come and gone.
    server = StreamServer(reject_token="right")
    try:
        call = fake.place_call()
        client.calls.actions.answer(call.call_control_id)
        client.calls.actions.start_streaming(call.call_control_id,
                                             **rtp_params(server.url, stream_auth_token="wrong"))
        call.wait_status("closed_by_app")
        assert call.wait_streaming(timeout=1.0) == call.stream_id
        assert call.streaming_status == "closed_by_app"
    finally:
        server.close()


def test_heard_audio_saves_as_wav(fake, client, stream_server, tmp_path):
    call = streaming_call(fake, client, stream_server.url)
    stream_server.send(media(tone_pcm(100)))
    stream_server.send(mark("m"))
    call.wait_mark("m")
    call.hangup()
    data, rate = sf.read(call.save_wav(tmp_path / "heard.wav"), dtype="int16")
    assert rate == 8000
    assert np.array_equal(data, call.heard_pcm())


def test_send_raw_idle_and_clear_count(fake, client, stream_server):
    call = streaming_call(fake, client, stream_server.url)
    call.send_raw('{"event": "bogus"}')
    call.send_raw(b"\x00binary")
    wait_until(lambda: len(stream_server.messages) >= 4 and b"\x00binary" in stream_server.messages,
               what="raw frames")
    assert '{"event": "bogus"}' in stream_server.messages
    assert call.idle()
    stream_server.send(media(tone_pcm(5000)))
    wait_until(lambda: not call.idle(), what="audio queued")
    stream_server.send({"event": "clear"})
    wait_until(lambda: call.clears_received == 1, what="clear")
    assert call.idle()


def test_probe_socket_reports_how_the_app_closes(fake):
    rejecting = StreamServer(reject_token="right")
    try:
        assert fake.probe_socket(rejecting.url, auth_token="wrong") == 1008
        assert fake.probe_socket(rejecting.url, auth_token="right", timeout=0.2) is None
        connected = rejecting.frames("connected")
        assert connected[0] == {"event": "connected", "version": "1.0.0", "x-telnyx-streaming-auth-token": "wrong"}
        assert rejecting.headers[0]["x-telnyx-streaming-auth-token"] == "wrong"
        start = rejecting.frames("start")[-1]
        assert start["start"]["media_format"] == {"encoding": "PCMU", "sample_rate": 8000, "channels": 1}
    finally:
        rejecting.close()


def test_recorder_keeps_wire_payloads_in_playout_order_whatever_the_codec():
    rec = Recorder()
    rec.begin(100.0, 8000)
    a, b, c = tone_pcm(20), tone_pcm(40, freq=700), tone_pcm(60, freq=300)
    ulaw, alaw = g711.encode(a, "PCMU"), g711.encode(c, "PCMA")
    rec.queue_encoded(100.0, ulaw, "PCMU", "big", len(a), True)
    rec.queue_encoded(100.0, g711.encode(b, "L16", l16_byteorder="little"), "L16", "little", len(b), True)
    rec.queue(100.0, b, True)
    rec.queue_encoded(100.0, alaw, "PCMA", "big", len(c), True)
    rec.queue_encoded(100.0, ulaw, "PCMU", "big", len(a), False)  # takes its time, is not heard
    assert [start for start, _ in rec.segments] == [0, 160, 480, 800]
    heard = rec.render(101.0, 0, 1440)
    expected = np.concatenate([g711.decode(ulaw, "PCMU"), b, b, g711.decode(alaw, "PCMA"), np.zeros(160, np.int16)])
    assert np.array_equal(heard, expected)
    rec.truncate(100.0 + 500.5 / 8000)  # 20 samples into the second copy of b
    assert [(start, len(pcm)) for start, pcm in rec.segments] == [(0, 160), (160, 320), (480, 20)]
    assert rec.play_end == 500
