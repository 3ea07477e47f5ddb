"""playback_start / playback_stop: the call.playback.* webhooks Telnyx sends, and the server's use of them."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import soundfile as sf
import telnyx

from simulator import FakeTelnyx
from simulator.playback import Playbacks
from tests.simulator.conftest import WebhookReceiver, wait_until


class Timers:
    """A hand-driven clock for Playbacks: schedule() records, fire() runs what is due."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def schedule(self, delay: float, fn: Callable[[], None]) -> None:
        self.pending.append((self.now + delay, fn))

    def advance(self, seconds: float) -> None:
        self.now += seconds
        while due := sorted((p for p in self.pending if p[0] <= self.now), key=lambda p: p[0]):
            self.pending.remove(due[0])
            due[0][1]()


def make_playbacks(seconds_per_play: float = 2.0) -> tuple[Playbacks, list[tuple[str, dict[str, Any]]], Timers]:
    events: list[tuple[str, dict[str, Any]]] = []
    timers = Timers()
    playbacks = Playbacks("v3:test", lambda kind, fields: events.append((kind, fields)), timers.schedule,
                          seconds_per_play)
    return playbacks, events, timers


def test_a_playback_starts_at_once_and_ends_completed_after_its_duration():
    playbacks, events, timers = make_playbacks(2.0)
    playbacks.start({"audio_url": "https://example.com/a.mp3", "loop": 3})
    assert events == [("call.playback.started", {"media_url": "https://example.com/a.mp3", "overlay": False})]
    timers.advance(5.9)
    assert len(events) == 1
    timers.advance(0.1)
    assert events[1] == ("call.playback.ended", {"media_url": "https://example.com/a.mp3", "overlay": False,
                                                 "status": "completed"})
    assert [(p.state, p.status, p.seconds) for p in playbacks.history()] == [("ended", "completed", 6.0)]


def test_playbacks_queue_and_stop_current_moves_to_the_next():
    playbacks, events, timers = make_playbacks(1.0)
    playbacks.start({"media_name": "first"})
    playbacks.start({"media_name": "second"})
    playbacks.start({"media_name": "third"})
    assert [e[0] for e in events] == ["call.playback.started"]
    playbacks.stop({"stop": "current"})
    assert events[1:] == [("call.playback.ended", {"media_name": "first", "overlay": False, "status": "cancelled"}),
                          ("call.playback.started", {"media_name": "second", "overlay": False})]
    timers.advance(1.0)  # the first one's timer is spent on an ended playback: nothing happens twice
    assert [(kind, f["media_name"], f.get("status")) for kind, f in events[3:]] == [
        ("call.playback.ended", "second", "completed"), ("call.playback.started", "third", None)]


def test_stop_all_cancels_the_playing_and_the_queued_ones_and_infinity_never_ends_alone():
    playbacks, events, timers = make_playbacks(1.0)
    playbacks.start({"audio_url": "https://example.com/music.mp3", "loop": "infinity"})
    playbacks.start({"audio_url": "https://example.com/next.mp3"})
    timers.advance(3600)
    assert [e[0] for e in events] == ["call.playback.started"]
    playbacks.stop({})  # stop defaults to "all"
    assert [(kind, f["media_url"], f.get("status")) for kind, f in events[1:]] == [
        ("call.playback.ended", "https://example.com/music.mp3", "cancelled"),
        ("call.playback.ended", "https://example.com/next.mp3", "cancelled")]  # never started
    playbacks.stop({"stop": "current"})  # nothing playing: nothing to say
    assert len(events) == 3


def test_stop_on_playback_start_replaces_what_plays():
    playbacks, events, _ = make_playbacks()
    playbacks.start({"media_name": "a"})
    playbacks.start({"media_name": "b"})
    playbacks.start({"media_name": "c", "stop": "all"})
    assert [(kind, f["media_name"], f.get("status")) for kind, f in events] == [
        ("call.playback.started", "a", None), ("call.playback.ended", "a", "cancelled"),
        ("call.playback.ended", "b", "cancelled"), ("call.playback.started", "c", None)]


def test_overlay_needs_a_main_playback_and_plays_in_its_own_queue():
    playbacks, events, timers = make_playbacks(1.0)
    playbacks.start({"media_name": "alone", "overlay": True})
    assert events == [("call.playback.ended", {"media_name": "alone", "overlay": True, "status": "failed",
                                               "status_detail": "overlay: true needs a playback with overlay: false "
                                                                "playing"})]
    playbacks.start({"media_name": "bed", "loop": "infinity"})
    playbacks.start({"media_name": "chime", "overlay": True})
    timers.advance(1.0)
    assert [(kind, f["media_name"], f["overlay"], f.get("status")) for kind, f in events[1:]] == [
        ("call.playback.started", "bed", False, None), ("call.playback.started", "chime", True, None),
        ("call.playback.ended", "chime", True, "completed")]


def test_playback_content_plays_for_the_length_of_its_file_and_hangup_ends_everything():
    buf = io.BytesIO()
    sf.write(buf, np.zeros(12000, dtype=np.int16), 8000, format="WAV", subtype="PCM_16")  # 1.5 s
    playbacks, events, timers = make_playbacks(10.0)
    playbacks.start({"playback_content": base64.b64encode(buf.getvalue()).decode(), "audio_type": "wav"})
    playbacks.start({"playback_content": base64.b64encode(b"not audio").decode()})  # the fixed 10 s
    assert events[0] == ("call.playback.started", {"media_url": "", "media_name": "", "overlay": False})
    assert [p.seconds for p in playbacks.history()] == [1.5, 10.0]
    timers.advance(1.5)
    assert [kind for kind, _ in events] == ["call.playback.started", "call.playback.ended", "call.playback.started"]
    playbacks.hangup()
    playbacks.start({"media_name": "too late"})
    timers.advance(60)
    assert [(kind, f.get("status")) for kind, f in events[3:]] == [("call.playback.ended", "call_hangup")]


def test_the_fake_sends_playback_webhooks_with_the_calls_ids_and_client_state(receiver: WebhookReceiver):
    with FakeTelnyx("KEY123", webhook_url=receiver.url, playback_seconds=0.2) as fake:
        client = telnyx.Telnyx(api_key="KEY123", base_url=fake.base_url, max_retries=0)
        call = fake.place_call()
        ccid = call.call_control_id
        client.calls.actions.answer(ccid)
        client.calls.actions.start_playback(ccid, audio_url="https://example.com/a.wav", client_state="aW5qXzE=")
        ended = receiver.wait_for("call.playback.ended")[0]["data"]
        assert receiver.event_types(ccid)[-2:] == ["call.playback.started", "call.playback.ended"]
        assert ended["payload"] == {"call_control_id": ccid, "connection_id": "1684641123236054244",
                                    "call_leg_id": call.call_leg_id, "call_session_id": call.call_session_id,
                                    "client_state": "aW5qXzE=", "media_url": "https://example.com/a.wav",
                                    "overlay": False, "status": "completed"}
        client.calls.actions.start_playback(ccid, audio_url="https://example.com/b.wav", loop="infinity")
        receiver.wait_for("call.playback.started", 2)
        client.calls.actions.stop_playback(ccid, stop="current")
        cancelled = receiver.wait_for("call.playback.ended", 2)[1]["data"]["payload"]
        assert (cancelled["media_url"], cancelled["status"]) == ("https://example.com/b.wav", "cancelled")
        client.calls.actions.start_playback(ccid, audio_url="https://example.com/c.wav", loop="infinity")
        receiver.wait_for("call.playback.started", 3)
        client.calls.actions.hangup(ccid)
        receiver.wait_for("call.hangup")
        assert receiver.event_types(ccid)[-2:] == ["call.playback.ended", "call.hangup"]
        assert receiver.events()[-2]["data"]["payload"]["status"] == "call_hangup"
        assert [p.status for p in call.playbacks.history()] == ["completed", "cancelled", "call_hangup"]
        client.close()


def test_the_server_finishes_a_playback_injection_when_telnyx_says_it_ended(tmp_path):
    """End to end: mode "playback" goes from playing to finished on call.playback.ended."""
    # The one test here that runs the server: imported here so the rest need none of it.
    from livecall import API_KEY, connected_call, inject, start_server, wait_injection

    with FakeTelnyx(api_key=API_KEY, playback_seconds=0.3) as fake:
        server = start_server(fake, tmp_path / "mixer.sqlite3", tmp_path)
        try:
            call = connected_call(fake, server)
            url = "https://example.com/greeting.wav"  # nobody fetches it: Telnyx would, the simulator does not
            played = inject(server, call, {"audio_url": url, "mode": "playback"})
            view = wait_injection(server, call, played["id"], "finished")
            assert view["mode"] == "playback"
            command = next(c for c in fake.commands if c.action == "playback_start")
            assert base64.b64decode(command.body["client_state"]).decode() == played["id"]
            ended = next(e for e in call.webhooks if e.event_type == "call.playback.ended")
            assert (ended.data["payload"]["media_url"], ended.data["payload"]["status"]) == (url, "completed")

            looped = inject(server, call, {"audio_url": url, "mode": "playback", "loop": True})
            wait_injection(server, call, looped["id"], "playing")
            stopped = server.http.delete(f"/streams/{call.call_control_id}/injections/{looped['id']}")
            assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
            wait_until(lambda: [p.status for p in call.playbacks.history()] == ["completed", "cancelled"],
                       what="the looped playback cancelled")
        finally:
            server.stop()
