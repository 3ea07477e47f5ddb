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
