"""Recordings of whole calls through the simulator: each channel bit-exact with the other side.

The caller channel must hold exactly what the simulator sent (decoded with the simulator's own
G.711, not the server's), the "sent" channel exactly what the simulator received, both on one
timeline; a download while the call runs is a valid WAV and a prefix of the final file.
"""

from __future__ import annotations

import base64
import io
import threading

import numpy as np
import pytest
import soundfile as sf

from livecall import LiveServer, connected_call, inject, wait_injection, wait_until, wav_bytes
from mixer.geometry import FRAME_MS
from simulator import CallerAudio, FakeTelnyx, SimCall, g711

RATE = 8000
SLOT = RATE * FRAME_MS // 1000  # one frame at 8 kHz


def noise(seed: int, samples: int, level: float = 3000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pcm = (rng.standard_normal(samples) * level).clip(-20000, 20000).astype(np.int16)
    pcm[0] = 1500  # never silent at the start: the tests align on it
    return pcm


def caller_noise() -> CallerAudio:
    return CallerAudio.from_pcm(noise(11, 3 * RATE, 2500).astype(np.float32) / 32768, RATE, loop=True)


def media(call: SimCall) -> tuple[str, int]:
    """The call's encoding and rate, as the simulator streams them."""
    params = call.stream_params
    assert params is not None
    return params.media_encoding, params.media_rate


def slot(call: SimCall) -> int:
    return media(call)[1] * FRAME_MS // 1000


def download(server: LiveServer, call: SimCall) -> tuple[bytes, np.ndarray]:
    answer = server.http.get(f"/streams/{call.call_control_id}/recording")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "audio/wav"
    assert answer.headers["content-disposition"].startswith('attachment; filename="recording-')
    pcm, rate = sf.read(io.BytesIO(answer.content), dtype="int16", always_2d=True)
    assert rate == media(call)[1] and pcm.shape[1] == 2
    return answer.content, pcm


def sent_frames(pcm: np.ndarray, size: int = SLOT) -> np.ndarray:
    """The "sent" channel's frames that carry sound, in order (we send nothing when idle)."""
    frames = pcm[: len(pcm) // size * size, 1].reshape(-1, size)
    return frames[frames.any(axis=1)].reshape(-1)


def round_trip(pcm: np.ndarray, encoding: str) -> np.ndarray:
    """`pcm` through the wire codec and back, by the simulator's own implementation."""
    return g711.decode(g711.encode(pcm, encoding), encoding)


def received(call: SimCall) -> np.ndarray:
    """What the simulator received from the server, decoded by the simulator."""
    return g711.decode(b"".join(payload for _, payload in call.received), media(call)[0])


def caller_sent(call: SimCall) -> np.ndarray:
    """What the simulator sent as the caller, decoded by the simulator."""
    return round_trip(call.caller_pcm(), media(call)[0])


def assert_caller_channel(pcm: np.ndarray, call: SimCall, *, at_least: int) -> None:
    """The caller channel is silence, then the caller's audio from its first frame on, unbroken
    (no frame missing, none moved), then silence."""
    channel = pcm[:, 0]
    loud = np.flatnonzero(channel)
    assert len(loud), "no caller audio recorded"
    start, end = int(loud[0]), int(loud[-1]) + 1
    assert start % slot(call) == 0  # the first frame sits on a media clock slot
    expected = caller_sent(call)
    assert end - start >= at_least
    assert np.array_equal(channel[start:end], expected[: end - start])


def recording_of(server: LiveServer, call: SimCall) -> dict:
    return server.http.get(f"/streams/{call.call_control_id}").json()["recording"]


@pytest.mark.parametrize(("codec", "rate"), [("PCMU", 8000), ("L16", 16000)])
def test_both_channels_are_bit_exact_and_a_download_during_the_call_is_a_prefix(telnyx: FakeTelnyx, make_server_,
                                                                                 codec: str, rate: int) -> None:
    server = make_server_(RECORDING=True, STREAM_CODEC=codec, STREAM_SAMPLE_RATE=rate)
    call = telnyx.place_call(caller_audio=caller_noise())
    call.wait_streaming(timeout=10)
    wait_until(lambda: server.http.get(f"/streams/{call.call_control_id}").json().get("status") == "streaming",
               what="streaming")
    assert media(call) == (codec, rate)
    assert recording_of(server, call)["status"] == "recording"
    size = slot(call)
    source = noise(7, rate)
    inj = inject(server, call, {"audio_base64": base64.b64encode(wav_bytes(source, rate)).decode()})
    wait_injection(server, call, inj["id"], "finished")

    # While the call runs: a valid WAV of what is written so far, once the injection is in it.
    def partial_with_the_injection() -> tuple[bytes, np.ndarray] | None:
        data, pcm = download(server, call)
        return (data, pcm) if len(sent_frames(pcm, size)) >= len(source) else None

    during, during_pcm = wait_until(partial_with_the_injection, timeout=20, what="the injection in the file")
    so_far = sent_frames(during_pcm, size)
    assert np.array_equal(so_far, received(call)[: len(so_far)])
    assert_caller_channel(during_pcm, call, at_least=rate)

    call.hangup()
    wait_until(lambda: recording_of(server, call)["status"] == "complete", timeout=15, what="recording complete")
    final, pcm = download(server, call)
    info = recording_of(server, call)
    assert info["duration_ms"] == len(pcm) * 1000 // rate and info["gaps"] == 0 and info["frames_dropped"] == 0
    assert info["channels"] == ["caller", "sent"] and info["sample_rate"] == rate

    # Sent: every frame the simulator received, in order, bit for bit, and nothing else.
    arrived = received(call)
    assert np.array_equal(sent_frames(pcm, size), arrived)
    assert np.array_equal(arrived[: len(source)], round_trip(source, codec))
    # Caller: everything the simulator sent while the call was recorded.
    assert_caller_channel(pcm, call, at_least=len(during_pcm))
    # The download during the call is the start of the final file.
    assert final[44:].startswith(during[44:])
    events = [e["event"] for e in server.http.get(
        "/stream-log", params={"call_control_id": call.call_control_id, "event": "recording"}).json()["items"]]
    assert events == ["recording.started", "recording.completed"]


def test_no_recording_is_a_404_in_the_api_shape(telnyx: FakeTelnyx, server: LiveServer) -> None:
    call = connected_call(telnyx, server)
    answer = server.http.get(f"/streams/{call.call_control_id}/recording")
    assert answer.status_code == 404
    assert answer.json() == {"error": {"code": "recording_not_found",
                                       "message": f"Call {call.call_control_id} has no recording."}}
    assert recording_of(server, call) is None
    unknown = server.http.get("/streams/v3:nope/recording")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "stream_not_found"
    call.hangup()
    wait_until(lambda: server.http.get(f"/streams/{call.call_control_id}").json()["status"] == "ended",
               what="ended")
    assert server.http.get(f"/streams/{call.call_control_id}/recording").status_code == 404


def test_the_per_call_switch_records_and_pauses(telnyx: FakeTelnyx, server: LiveServer) -> None:
    call = connected_call(telnyx, server)
    ccid = call.call_control_id
    on = server.http.patch(f"/streams/{ccid}", json={"recording": True})
    assert on.status_code == 200, on.text
    assert on.json()["recording"]["status"] == "recording"
    first = noise(3, RATE // 2)
    inj = inject(server, call, {"audio_base64": base64.b64encode(wav_bytes(first)).decode()})
    wait_injection(server, call, inj["id"], "finished")
    heard_before_pause = len(call.received)

    off = server.http.patch(f"/streams/{ccid}", json={"recording": False})
    assert off.status_code == 200 and off.json()["recording"]["status"] == "paused"
    second = noise(4, RATE // 2)
    inj = inject(server, call, {"audio_base64": base64.b64encode(wav_bytes(second)).decode()})
    wait_injection(server, call, inj["id"], "finished")
    assert server.http.patch(f"/streams/{ccid}", json={"recording": True}).json()["recording"]["status"] == \
        "recording"

    call.hangup()
    wait_until(lambda: recording_of(server, call)["status"] == "complete", timeout=15, what="recording complete")
    _, pcm = download(server, call)
    # Only what was sent before the pause is in it; the paused time is silence.
    before = g711.decode(b"".join(p for _, p in call.received[:heard_before_pause]), "PCMU")
    assert np.array_equal(sent_frames(pcm), before)
    assert not pcm[:, 0].any()  # the simulated caller was silent
    names = [e["event"] for e in server.http.get(
        "/stream-log", params={"call_control_id": ccid, "event": "recording"}).json()["items"]]
    assert names == ["recording.started", "recording.paused", "recording.resumed", "recording.completed"]


@pytest.mark.parametrize(("body", "status", "code", "field"), [
    ({"recording": "yes"}, 422, "invalid_field", "recording"),
    ({"recording": 1}, 422, "invalid_field", "recording"),
    ({"recording": None}, 422, "invalid_field", "recording"),
    ({}, 422, "invalid_field", "recording"),
    ({"recording": True, "gain_db": 0}, 422, "unknown_field", "gain_db"),
    ([True], 422, "invalid_field", None),
])
def test_the_switch_is_validated(telnyx: FakeTelnyx, server: LiveServer, body, status, code, field) -> None:
    call = connected_call(telnyx, server)
    answer = server.http.patch(f"/streams/{call.call_control_id}", json=body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and error.get("field") == field
    assert recording_of(server, call) is None  # nothing was switched


def test_the_switch_refuses_bad_bodies_unknown_and_ended_calls(telnyx: FakeTelnyx, server: LiveServer) -> None:
    call = connected_call(telnyx, server)
    url = f"/streams/{call.call_control_id}"
    bad_json = server.http.patch(url, content=b"{nope", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400 and bad_json.json()["error"]["code"] == "invalid_json"
    text = server.http.patch(url, content=b"recording=true", headers={"content-type": "text/plain"})
    assert text.status_code == 415 and text.json()["error"]["code"] == "unsupported_media_type"
    unknown = server.http.patch("/streams/v3:nope", json={"recording": True})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "stream_not_found"
    call.hangup()
    wait_until(lambda: server.http.get(url).json()["status"] == "ended", what="ended")
    ended = server.http.patch(url, json={"recording": True})
    assert ended.status_code == 409 and ended.json()["error"]["code"] == "stream_not_active"


def test_a_disk_that_cannot_keep_up_leaves_a_hole_not_a_slower_call(telnyx: FakeTelnyx, make_server_) -> None:
    # A buffer of 0.1 s (5 frames a channel) and a writer held at its next write: the call goes
    # on, the frames that find the buffer full are dropped, and the recording says so.
    server = make_server_(RECORDING=True, RECORDING_BUFFER_S=0.1)
    recordings = server.app.extensions["mixer_runtime"].recordings
    held, release = threading.Event(), threading.Event()

    def slow_disk() -> None:
        if not release.is_set():
            held.set()
            release.wait(30)

    recordings.before_write = slow_disk
    call = telnyx.place_call(caller_audio=caller_noise())
    call.wait_streaming(timeout=10)
    wait_until(held.is_set, timeout=15, what="the writer held at its first write")
    sent_while_held = call.media.caller_pos
    # 50 caller frames go by while the writer is held: far more than the buffer holds.
    wait_until(lambda: call.media.caller_pos - sent_while_held >= 50 * SLOT, what="50 more caller frames")
    source = noise(5, RATE // 2)
    inj = inject(server, call, {"audio_base64": base64.b64encode(wav_bytes(source)).decode()})
    wait_injection(server, call, inj["id"], "finished")  # the call played on meanwhile
    release.set()
    wait_until(lambda: recording_of(server, call)["gaps"] >= 1, timeout=15, what="the gap reported")
    after_gap = call.media.caller_pos
    wait_until(lambda: call.media.caller_pos - after_gap >= 25 * SLOT, what="25 caller frames after the hole")

    call.hangup()
    wait_until(lambda: recording_of(server, call)["status"] == "complete", timeout=15, what="recording complete")
    info = recording_of(server, call)
    events = server.http.get("/stream-log", params={"call_control_id": call.call_control_id,
                                                     "event": "recording.gap"}).json()["items"]
    assert len(events) == info["gaps"] >= 1
    assert sum(e["data"]["frames"] for e in events) == info["frames_dropped"] >= 50
    assert all(e["data"]["duration_ms"] >= 20 for e in events)
    assert sum(e["data"]["duration_ms"] for e in events) == info["gap_ms"]
    metrics = server.http.get("/metrics").text
    assert f"mixer_recording_gaps_total {float(info['gaps'])}" in metrics
    assert f"mixer_recording_frames_dropped_total {float(info['frames_dropped'])}" in metrics

    # The caller channel: the caller's audio where it was kept, silence in the hole, nothing else.
    _, pcm = download(server, call)
    channel = pcm[:, 0]
    start = int(np.flatnonzero(channel)[0])
    expected = caller_sent(call)
    got = channel[start:]
    n = min(len(got), len(expected)) // SLOT * SLOT
    frames, want = got[:n].reshape(-1, SLOT), expected[:n].reshape(-1, SLOT)
    same = (frames == want).all(axis=1)
    silent = ~frames.any(axis=1)
    assert (same | silent).all()  # every frame is the caller's own or silence
    hole = longest_run(silent & ~same)
    assert hole[1] - hole[0] >= 40  # the hole (the buffer kept a few of the 50 frames)...
    assert same[hole[1]:].sum() >= 20  # ...and after it, the caller again, in place


def longest_run(mask: np.ndarray) -> tuple[int, int]:
    """[start, end) of the longest run of True in `mask`."""
    best, start = (0, 0), None
    for i, value in enumerate([*mask.tolist(), False]):
        if value and start is None:
            start = i
        elif not value and start is not None:
            best = max(best, (start, i), key=lambda run: run[1] - run[0])
            start = None
    return best


def test_stopping_the_server_finishes_its_recordings(telnyx: FakeTelnyx, tmp_path, media_dir) -> None:
    from livecall import start_server
    from streams.recording import read_wav

    server = start_server(telnyx, tmp_path / "db.sqlite3", media_dir, RECORDING=True)
    call = telnyx.place_call(caller_audio=caller_noise())
    call.wait_streaming(timeout=10)
    wait_until(lambda: call.media.caller_pos >= 50 * SLOT, what="a second of the caller")
    path = server.app.extensions["mixer_runtime"].recordings.path(call.call_control_id)
    server.stop()  # SIGTERM's path: the call is interrupted, its recording finished
    data = path.read_bytes()
    assert read_wav(path) == data  # the header has its final sizes
    pcm, rate = sf.read(io.BytesIO(data), dtype="int16", always_2d=True)
    assert rate == RATE
    assert_caller_channel(pcm, call, at_least=40 * SLOT)


def test_the_server_sweeps_recordings_past_their_retention(telnyx: FakeTelnyx, make_server_, tmp_path) -> None:
    import os
    import time

    from streams.recording import file_name, wav_header

    directory = tmp_path / "recordings"
    directory.mkdir()
    old, recent = directory / file_name("v3:old"), directory / file_name("v3:recent")
    for path, days in ((old, 3), (recent, 1)):
        path.write_bytes(wav_header(RATE, 0))
        stamp = time.time() - days * 86400 - 60
        os.utime(path, (stamp, stamp))
    server = make_server_(RECORDING_DIR=str(directory), RECORDING_RETENTION_DAYS=2)
    wait_until(lambda: not old.exists(), what="the sweep at start-up")
    assert recent.exists()
    events = server.http.get("/stream-log", params={"event": "recording.deleted"}).json()["items"]
    assert [e["data"] for e in events] == [{"count": 1, "retention_days": 2.0}]


def test_a_g722_call_is_recorded_as_the_caller_heard_it(telnyx: FakeTelnyx, make_server_) -> None:
    # G.722 keeps state from frame to frame: the recording must decode our frames in the order
    # they went out, with a decoder of its own. Judged against the simulator's G.722 (libg722).
    from simulator.wideband import G722Decoder

    server = make_server_(RECORDING=True, STREAM_CODEC="G722", STREAM_SAMPLE_RATE=16000)
    call = telnyx.place_call(caller_audio=caller_noise())
    call.wait_streaming(timeout=10)
    assert media(call) == ("G722", 16000)
    source = noise(9, 16000)
    inj = inject(server, call, {"audio_base64": base64.b64encode(wav_bytes(source, 16000)).decode()})
    wait_injection(server, call, inj["id"], "finished")
    wait_until(lambda: call.idle(), what="playout to drain")
    call.hangup()
    wait_until(lambda: recording_of(server, call)["status"] == "complete", timeout=15, what="recording complete")
    _, pcm = download(server, call)
    decoder = G722Decoder()
    heard = np.concatenate([decoder.decode(payload) for _, payload in call.received])
    sent = sent_frames(pcm, 320)
    assert len(sent) == len(heard)
    assert np.array_equal(sent, heard)
