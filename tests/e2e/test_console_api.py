"""The API behind the console, on the real front door: the /events feed (filters, resume, bounds,
stuck clients), /clips, /voices and the live levels of a call."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import numpy as np

from livecall import LiveServer, connected_call, inject, wait_injection, wait_until, wav_bytes
from simulator import FakeTelnyx
from simulator.audio import CallerAudio
from sse import SseReader


def test_the_feed_carries_a_calls_events_live_and_resumes_after_the_last_id(server: LiveServer,
                                                                            telnyx: FakeTelnyx) -> None:
    everything = SseReader(f"{server.url}/events")
    assert everything.status == 200 and everything.content_type.startswith("text/event-stream")
    call = connected_call(telnyx, server)
    other = connected_call(telnyx, server)
    mine = SseReader(f"{server.url}/events?call_control_id={call.call_control_id}&event=injection")
    injection = inject(server, call, {"dtmf": "1"})
    inject(server, other, {"dtmf": "2"})
    wait_injection(server, call, injection["id"], "finished")
    wait_until(lambda: "injection.finished" in mine.names(), what="the finished injection on the feed")
    assert mine.names() == ["injection.created", "injection.playing", "injection.finished"]
    assert {e["call_control_id"] for e in mine.events} == {call.call_control_id}
    assert mine.events[0]["data"]["injection_id"] == injection["id"]
    assert mine.retry is not None
    # The unfiltered feed saw both calls open and stream, in log order, ids as SSE ids.
    wait_until(lambda: everything.names().count("injection.finished") == 2, what="both injections")
    assert everything.ids == sorted(everything.ids) == [e["id"] for e in everything.events]
    assert {e["call_control_id"] for e in everything.events if e["event"] == "stream.started"} == \
        {call.call_control_id, other.call_control_id}
    # A client that reconnects with Last-Event-ID gets what came after it, and nothing twice.
    middle = everything.ids[len(everything.ids) // 2]
    resumed = SseReader(f"{server.url}/events", headers={"Last-Event-ID": str(middle)})
    wait_until(lambda: resumed.ids and resumed.ids[-1] >= everything.ids[-1], what="the resumed feed")
    assert resumed.ids[: len(everything.ids) - everything.ids.index(middle) - 1] == \
        everything.ids[everything.ids.index(middle) + 1:]
    for reader in (everything, mine, resumed):
        reader.close()


def test_feed_parameters_are_checked(server: LiveServer) -> None:
    for query, field in (("?token=x", "token"), ("?cursor=abc", "cursor"), ("?cursor=-1", "cursor")):
        answer = server.http.get(f"/events{query}")
        assert answer.status_code == 422 and answer.json()["error"]["field"] == field, query
    answer = server.http.get("/events", headers={"Last-Event-ID": "yesterday"})
    assert answer.status_code == 422 and answer.json()["error"]["field"] == "Last-Event-ID"


def test_feeds_are_bounded_and_a_client_that_never_reads_stalls_nobody(make_server_, telnyx: FakeTelnyx) -> None:
    server = make_server_(EVENT_FEEDS_MAX=2)
    stuck = socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])))
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.sendall(b"GET /events?cursor=0 HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads a byte
    reader = SseReader(f"{server.url}/events")
    wait_until(lambda: len(server.app.extensions["mixer_runtime"].feed) == 2, what="both feeds")
    refused = server.http.get("/events")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "too_many_feeds"
    # Plenty of events while the stuck client reads none: calls and requests go on.
    call = connected_call(telnyx, server)
    for _ in range(3):
        inj = inject(server, call, {"dtmf": "123"})
        wait_injection(server, call, inj["id"], "finished")
    wait_until(lambda: "injection.finished" in reader.names(), what="the reading client's events")
    assert server.http.get("/health").status_code == 200
    stuck.close()
    reader.close()
    wait_until(lambda: len(server.app.extensions["mixer_runtime"].feed) == 0, what="the feeds to go")
    again = SseReader(f"{server.url}/events")  # the slots are free again
    assert again.status == 200
    again.close()


def test_clips_and_voices_list_what_may_be_named(server: LiveServer, media_dir: Path) -> None:
    tone = 0.3 * np.sin(2 * np.pi * 440 * np.arange(4000) / 8000)
    (media_dir / "hold.wav").write_bytes(wav_bytes(tone))
    (media_dir / "twice.wav").write_bytes(wav_bytes(tone))
    (media_dir / "twice.flac").write_bytes(wav_bytes(tone, fmt="FLAC"))
    (media_dir / "notes.txt").write_text("not audio")
    (media_dir / ".hidden.wav").write_bytes(wav_bytes(tone))
    items = server.http.get("/clips").json()["items"]
    assert [(c["name"], c["filename"], c["duration_ms"]) for c in items] == [
        ("hold", "hold.wav", 500), ("twice.flac", "twice.flac", 500), ("twice.wav", "twice.wav", 500)]
    assert all(c["bytes"] > 0 for c in items)
    voices = server.http.get("/voices").json()["items"]
    assert "en" in voices and "de" in voices


def test_a_calls_levels_are_the_callers_and_ours_now(server: LiveServer, telnyx: FakeTelnyx) -> None:
    call = telnyx.place_call(caller_audio=CallerAudio.tone(440, level_dbfs=-12))
    call.wait_streaming(timeout=10)
    key = call.call_control_id

    def levels() -> dict[str, float]:
        return server.http.get(f"/streams/{key}").json()["levels"]

    # A sine peaking at -12 dBFS has an RMS 3 dB lower; nothing sent yet.
    wait_until(lambda: abs(levels()["caller_dbfs"] - -15.0) < 1.0, what="the caller's level")
    assert levels()["sent_dbfs"] == -96.0
    inject(server, call, {"tone": {"frequency_hz": 300, "duration_ms": 60000, "level_dbfs": -6}})
    wait_until(lambda: abs(levels()["sent_dbfs"] - -9.0) < 1.0, what="our level")
    call.hangup()
    wait_until(lambda: server.http.get(f"/streams/{key}").json()["status"] == "ended", what="the hang-up")
    assert server.http.get(f"/streams/{key}").json().get("levels") is None
    assert httpx.get(f"{server.url}/streams?status=all").json()["items"][0]["call_control_id"] == key


def test_a_rejected_injection_is_an_event_of_its_call_and_a_count_by_code(make_server_, telnyx: FakeTelnyx) -> None:
    server = make_server_(MAX_UPLOAD_BYTES=10_000)
    call = connected_call(telnyx, server)
    key = call.call_control_id
    bad = server.http.post(f"/streams/{key}/inject", json={"tone": {"frequency_hz": 5000}})
    assert bad.status_code == 422
    upload = server.http.post(f"/streams/{key}/inject", files={"file": ("big.wav", b"\0" * 9000)},
                              data={"gain_db": "0"})
    assert upload.status_code == 422  # under the body limit, and not audio
    unknown = server.http.post("/streams/v3:nobody/inject", json={"dtmf": "1"})
    assert unknown.status_code == 404
    server.http.post(f"/streams/{key}/inject", json={"dtmf": "1", "gain_db": 99})
    rejected = server.http.get("/stream-log", params={"event": "injection.rejected"}).json()["items"]
    assert [(e["call_control_id"], e["data"]["status"], e["data"]["code"], e["data"]["field"]) for e in rejected] == [
        (key, 422, "out_of_range", "tone.frequency_hz"),
        (key, 422, "undecodable_audio", "file"),
        (None, 404, "stream_not_found", None),
        (key, 422, "out_of_range", "gain_db"),
    ]
    assert rejected[0]["data"]["message"] == bad.json()["error"]["message"]
    assert rejected[2]["data"]["key"] == "v3:nobody"
    text = server.http.get("/metrics").text
    assert 'mixer_injections_rejected_total{code="out_of_range"} 2.0' in text
    assert 'mixer_injections_rejected_total{code="stream_not_found"} 1.0' in text
    assert 'mixer_injections_rejected_total{code="audio_url_timeout"} 0.0' in text  # present from zero


def test_without_the_token_a_rejection_is_counted_but_not_logged(make_server_, telnyx: FakeTelnyx) -> None:
    server = make_server_(API_TOKEN="s3cret")
    answer = httpx.post(f"{server.url}/streams/v3:x/inject", json={"dtmf": "1"})
    assert answer.status_code == 401
    auth = {"Authorization": "Bearer s3cret"}
    assert server.http.get("/stream-log", params={"event": "injection.rejected"}, headers=auth).json()["items"] == []
    assert 'mixer_injections_rejected_total{code="unauthorized"} 1.0' in server.http.get("/metrics",
                                                                                          headers=auth).text
