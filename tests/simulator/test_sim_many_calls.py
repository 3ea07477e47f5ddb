"""Many simultaneous calls from one process share one loop and one ticker."""

from __future__ import annotations

import threading

import pytest
import telnyx
from websockets.sync.server import ServerConnection, serve

from simulator import CallerAudio, FakeTelnyx
from simulator.engine import PHASES, MediaEngine
from tests.simulator.conftest import WebhookReceiver, rtp_params, wait_until

CALLS = 24


def test_many_calls_stream_concurrently(receiver: WebhookReceiver):
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def handler(ws: ServerConnection) -> None:
        key = str(id(ws))
        for _ in ws:
            with lock:
                counts[key] = counts.get(key, 0) + 1

    server = serve(handler, "127.0.0.1", 0, compression=None)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"ws://127.0.0.1:{server.socket.getsockname()[1]}/stream"
    caller = CallerAudio.speech_like(seed=3)
    try:
        with FakeTelnyx("K", webhook_url=receiver.url, max_calls=CALLS) as fake:
            client = telnyx.Telnyx(api_key="K", base_url=fake.base_url, max_retries=0)
            calls = [fake.place_call(caller_audio=caller) for _ in range(CALLS)]
            with pytest.raises(RuntimeError, match="max_calls"):
                fake.place_call()
            for call in calls:
                client.calls.actions.answer(call.call_control_id)
                client.calls.actions.start_streaming(call.call_control_id, **rtp_params(url))
            for call in calls:
                call.wait_streaming()
            # Streams add no threads: one loop thread serves them all (the app side here has one per socket).
            sim_threads = sorted(t.name for t in threading.enumerate() if t.name.startswith("sim-"))
            assert sim_threads == ["sim-media-loop", "sim-rest"] + [f"sim-webhooks-{i}" for i in range(4)]
            wait_until(lambda: len(counts) == CALLS and min(counts.values()) >= 12, what="media on every call")
            for call in calls:
                call.hangup()
            assert all(c.state == "ended" for c in calls)
            client.close()
    finally:
        server.shutdown()
        thread.join(5)


def test_calls_end_at_the_time_limit(receiver):
    with FakeTelnyx("K", webhook_url=receiver.url, max_call_seconds=0.05) as fake:
        call = fake.place_call()
        call.wait_state("ended")
        hangup = receiver.wait_for("call.hangup")[0]["data"]["payload"]
        assert hangup["hangup_cause"] == "time_limit"


def test_streams_are_spread_over_the_send_offsets_and_leave_them():
    class Stream:
        phase = -1

    engine = MediaEngine()
    streams = [Stream() for _ in range(2 * PHASES + 1)]
    for stream in streams:
        engine.join(stream)  # type: ignore[arg-type]
    assert {s.phase for s in streams} == set(range(PHASES))
    for stream in streams[::3]:
        engine.leave(stream)  # type: ignore[arg-type]
        engine.leave(stream)  # type: ignore[arg-type]  # twice: a close after a failed send
    kept = set(streams) - set(streams[::3])
    assert engine.active == kept
    assert [set(due) for due in engine._phases] == [{s for s in kept if s.phase == p} for p in range(PHASES)]
