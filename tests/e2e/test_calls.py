"""Whole calls on loopback: fake Telnyx (REST, signed webhooks, media socket) against the real app."""

from __future__ import annotations

import base64

import numpy as np
import soundfile as sf

from audio_checks import assert_arrived_exactly, dominant_hz, max_jump, non_silent, sine_peak_dbfs
from livecall import API_KEY, connected_call, inject, start_server, wait_injection, wait_until, wav_bytes


def test_full_call_flow_from_initiated_to_hangup(telnyx, server):
    call = connected_call(telnyx, server)
    actions = [c.action for c in telnyx.commands]
    assert actions[:2] == ["answer", "streaming_start"]
    start = next(c for c in telnyx.commands if c.action == "streaming_start")
    assert start.body["stream_bidirectional_mode"] == "rtp"
    assert start.body["stream_bidirectional_codec"] == "PCMU"
    assert start.body["stream_bidirectional_target_legs"] == "self"
    assert start.body["stream_bidirectional_sampling_rate"] == 8000
    assert start.body["stream_url"] == server.url.replace("http://", "ws://") + "/stream"
    assert all(c.body.get("command_id") for c in telnyx.commands)
    assert all(c.headers.get("authorization") == f"Bearer {API_KEY}" for c in telnyx.commands)

    listed = server.http.get("/streams").json()["items"]
    assert [s["call_control_id"] for s in listed] == [call.call_control_id]
    by_stream = server.http.get(f"/streams/{call.stream_id}").json()
    assert by_stream["call_control_id"] == call.call_control_id

    call.hangup()
    wait_until(lambda: server.http.get(f"/streams/{call.call_control_id}").json()["status"] == "ended",
               what="ended")
    assert server.http.get("/streams").json()["items"] == []
    events = [e["event"] for e in server.http.get(
        "/stream-log", params={"call_control_id": call.call_control_id, "limit": 1000}).json()["items"]]
    for expected in ("webhook.received", "command.ok", "stream.started", "stream.ended"):
        assert expected in events, events


def test_tone_arrives_at_its_level_and_frequency(telnyx, server):
    call = connected_call(telnyx, server)
    inj = inject(server, call, {"tone": {"frequency_hz": 1000, "duration_ms": 600, "level_dbfs": -6}})
    assert inj["status"] == "created" and inj["duration_ms"] == 600
    wait_injection(server, call, inj["id"], "finished")
    heard = non_silent(call.heard_pcm())
    assert abs(len(heard) - 4800) <= 160
    middle = heard[800:-800]
    assert abs(sine_peak_dbfs(middle) - -6.0) <= 0.2
    assert abs(dominant_hz(middle, 8000) - 1000) <= 2


def test_wav_at_0_db_arrives_bit_exact_after_the_mulaw_round_trip(telnyx, server):
    call = connected_call(telnyx, server)
    rng = np.random.default_rng(7)
    source = (rng.standard_normal(8000) * 3000).clip(-20000, 20000).astype(np.int16)
    source[0] = 1500  # a known first sample to align on
    body = {"audio_base64": base64.b64encode(wav_bytes(source)).decode()}
    inj = inject(server, call, body)
    wait_injection(server, call, inj["id"], "finished")
    assert_arrived_exactly(call, source)


def test_many_calls_at_once_each_get_their_own_audio_bit_exact(telnyx, server):
    """The media clock finishes every call's frame in one block: no call's audio may leak into,
    shift or cut another's, whatever order the calls start and end in."""
    calls = [connected_call(telnyx, server) for _ in range(24)]
    sources, injections = [], []
    for i, call in enumerate(calls):
        rng = np.random.default_rng(100 + i)
        source = (rng.standard_normal(2400 + 160 * i + 7 * i) * 3000).clip(-20000, 20000).astype(np.int16)
        source[0] = 1500 + i  # a known first sample to align on
        sources.append(source)
        injections.append(inject(server, call, {"audio_base64": base64.b64encode(wav_bytes(source)).decode()}))
    for call, source, inj in zip(calls, sources, injections, strict=True):
        wait_injection(server, call, inj["id"], "finished")
        assert_arrived_exactly(call, source)


def test_stopping_mid_way_fades_without_a_click(telnyx, server):
    call = connected_call(telnyx, server)
    inj = inject(server, call, {"tone": {"frequency_hz": 440, "duration_ms": 5000, "level_dbfs": -3}})
    wait_injection(server, call, inj["id"], "playing")
    wait_until(lambda: len(non_silent(call.heard_pcm())) > 4000, what="audio")
    stopped = server.http.delete(f"/streams/{call.call_control_id}/injections/{inj['id']}")
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    wait_until(lambda: call.idle(), what="playout to drain")
    heard = non_silent(call.heard_pcm(), threshold=0)
    assert len(heard) < 5000 * 8
    # A 440 Hz sine at -3 dBFS steps at most ~2 * pi * 440 / 8000 * 0.71 * 32768 = 8000 per sample.
    assert max_jump(heard) <= 9000


def test_every_source_kind(telnyx, server, media_dir, tmp_path):
    call = connected_call(telnyx, server)
    tone = (0.3 * np.sin(2 * np.pi * 500 * np.arange(4410) / 44100)).astype(np.float32)
    sf.write(media_dir / "chime.ogg", tone, 44100, format="OGG", subtype="VORBIS")
    flac = wav_bytes(np.stack([tone, tone], axis=1), rate=44100, subtype="PCM_16", fmt="FLAC")

    made = [
        inject(server, call, {"clip": "chime", "label": "clip"}),
        inject(server, call, {"dtmf": "12#", "label": "dtmf"}),
        inject(server, call, {"text": "hello", "label": "speech"}),
        inject(server, call, {"audio_base64": base64.b64encode(flac).decode(), "gain_db": -6}),
    ]
    upload = server.http.post(f"/streams/{call.call_control_id}/inject",
                              files={"file": ("stereo.flac", flac, "audio/flac")},
                              data={"gain_db": "-3", "loop": "false", "label": "upload"})
    assert upload.status_code == 201, upload.text
    made.append(upload.json())
    kinds = [m["source"]["kind"] for m in made]
    assert kinds == ["clip", "dtmf", "text", "audio_base64", "file"]
    assert made[4]["gain_db"] == -3 and made[4]["label"] == "upload"
    for m in made:
        assert m["duration_ms"] > 0
        wait_injection(server, call, m["id"], "finished", timeout=30)


def test_audio_url_and_playback_mode(telnyx, make_server_, audio_http):
    server = make_server_(AUDIO_URL_ALLOW_PRIVATE=True)
    call = connected_call(telnyx, server)
    url = audio_http.serve("beep.wav", wav_bytes((np.ones(800) * 1000).astype(np.int16)))
    mixed = inject(server, call, {"audio_url": url})
    assert mixed["source"] == {"kind": "audio_url", "url": url} and mixed["duration_ms"] == 100
    wait_injection(server, call, mixed["id"], "finished")

    played = inject(server, call, {"audio_url": url, "mode": "playback", "loop": True})
    assert played["mode"] == "playback"
    wait_injection(server, call, played["id"], "playing")
    command = next(c for c in telnyx.commands if c.action == "playback_start")
    assert command.body["audio_url"] == url and command.body["loop"] == "infinity"


def test_patch_delete_and_clear(telnyx, server):
    call = connected_call(telnyx, server)
    ccid = call.call_control_id
    music = inject(server, call, {"tone": {"frequency_hz": 300, "duration_ms": 2000}, "loop": True})
    assert music["duration_ms"] is None
    patched = server.http.patch(f"/streams/{ccid}/injections/{music['id']}", json={"gain_db": -20})
    assert patched.status_code == 200 and patched.json()["gain_db"] == -20
    other = inject(server, call, {"tone": {"frequency_hz": 700, "duration_ms": 3000}})
    wait_injection(server, call, other["id"], "playing")
    cleared = server.http.post(f"/streams/{ccid}/clear")
    assert cleared.json() == {"stopped": 2}
    wait_until(lambda: call.clears_received >= 1, what="clear frame")
    for inj in (music, other):
        view = server.http.get(f"/streams/{ccid}/injections/{inj['id']}").json()
        assert view["status"] == "stopped" and view["played_ms"] > 0
    again = server.http.delete(f"/streams/{ccid}/injections/{music['id']}")
    assert again.status_code == 200 and again.json()["status"] == "stopped"


def test_marks_confirm_the_end_of_each_injection(telnyx, server):
    call = connected_call(telnyx, server)
    first = inject(server, call, {"tone": {"frequency_hz": 600, "duration_ms": 200}})
    second = inject(server, call, {"dtmf": "5"})
    for inj in (first, second):
        wait_injection(server, call, inj["id"], "finished")
    assert {first["id"], second["id"]} <= set(call.marks_echoed)


def test_caller_dtmf_is_logged(telnyx, server):
    call = connected_call(telnyx, server)
    call.send_dtmf("7")
    call.send_dtmf("#")

    def digits():
        items = server.http.get("/stream-log", params={"event": "dtmf"}).json()["items"]
        return [e["data"]["digit"] for e in items] if len(items) == 2 else None

    assert wait_until(digits, what="dtmf events") == ["7", "#"]


def test_reconnect_keeps_the_session_and_its_injections(telnyx, server):
    call = connected_call(telnyx, server)
    ccid = call.call_control_id
    music = inject(server, call, {"tone": {"frequency_hz": 400, "duration_ms": 1000}, "loop": True})
    wait_injection(server, call, music["id"], "playing")
    call.drop_socket()
    wait_until(lambda: server.http.get(f"/streams/{ccid}").json()["status"] == "disconnected",
               what="disconnected")
    heard_before = len(call.heard_pcm())
    call.reconnect()
    wait_until(lambda: server.http.get(f"/streams/{ccid}").json()["status"] == "streaming",
               what="streaming again")
    wait_until(lambda: len(call.heard_pcm()) > heard_before + 8000, what="audio after reconnect")
    view = server.http.get(f"/streams/{ccid}/injections/{music['id']}").json()
    assert view["status"] == "playing"
    events = [e["event"] for e in server.http.get("/stream-log", params={"call_control_id": ccid,
                                                                          "limit": 1000}).json()["items"]]
    assert "stream.disconnected" in events and "stream.reconnected" in events


def test_restart_keeps_history_and_marks_live_calls_interrupted(telnyx, tmp_path, media_dir):
    # With RESUME_WINDOW_S=0: a restart does not ask Telnyx for the calls again (test_failover.py).
    first = start_server(telnyx, tmp_path / "db.sqlite3", media_dir, RESUME_WINDOW_S=0)
    ended = connected_call(telnyx, first)
    ended.hangup()
    wait_until(lambda: first.http.get(f"/streams/{ended.call_control_id}").json()["status"] == "ended",
               what="ended")
    live = connected_call(telnyx, first)
    first.crash()

    second = start_server(telnyx, tmp_path / "db.sqlite3", media_dir, RESUME_WINDOW_S=0)
    try:
        items = {s["call_control_id"]: s["status"]
                 for s in second.http.get("/streams", params={"status": "all"}).json()["items"]}
        assert items == {ended.call_control_id: "ended", live.call_control_id: "interrupted"}
        assert second.http.get("/streams").json()["items"] == []
        gone = second.http.post(f"/streams/{live.call_control_id}/inject", json={"dtmf": "1"})
        assert gone.status_code == 409 and gone.json()["error"]["code"] == "stream_not_active"
    finally:
        second.stop()
        first.app.extensions["mixer_runtime"].registry.shutdown()


def test_health_and_metrics(telnyx, server):
    health = server.http.get("/health").json()
    assert health["status"] == "ok" and health["active_sessions"] == 0 and health["version"]
    call = connected_call(telnyx, server)
    inj = inject(server, call, {"tone": {"frequency_hz": 800, "duration_ms": 200}})
    wait_injection(server, call, inj["id"], "finished")
    assert server.http.get("/health").json()["active_sessions"] == 1
    text = server.http.get("/metrics").text
    assert 'mixer_webhooks_total{outcome="handled"}' in text
    assert 'mixer_telnyx_commands_total{action="answer",outcome="ok"} 1.0\n' in text
    assert 'mixer_injections_total{status="finished"} 1.0\n' in text
    sent = float(next(line.split()[-1] for line in text.splitlines()
                      if line.startswith("mixer_frames_sent_total")))
    assert sent >= 10  # 200 ms of tone is 10 frames
    assert 'mixer_clock_tick_lateness_seconds_bucket{le="+Inf"}' in text and "mixer_active_sessions 1.0" in text


def test_health_turns_degraded_when_the_event_log_cannot_write(server):
    log = server.app.extensions["mixer_runtime"].log
    log.last_error = "database or disk is full"  # what the writer records when a commit fails
    response = server.http.get("/health")
    assert response.status_code == 503
    assert response.json()["status"] == "degraded" and "disk is full" in response.json()["reason"]
    log.last_error = None


def test_the_wsgi_app_alone_has_no_second_stream_door(telnyx, tmp_path, media_dir):
    """Under another WSGI server the app serves REST and webhooks; /stream is only the front door's."""
    live = start_server(telnyx, tmp_path / "db.sqlite3", media_dir, transport="werkzeug")
    try:
        assert live.http.get("/health").status_code == 200
        response = live.http.get("/stream", headers={"Upgrade": "websocket", "Connection": "Upgrade",
                                                     "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                                                     "Sec-WebSocket-Version": "13"})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"
    finally:
        live.stop()
