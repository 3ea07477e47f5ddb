"""Every codec end to end on real sockets: what the simulated caller heard, decoded by the
simulator's own codecs (libg722, FFmpeg's native Opus decoder), and what the server made of the
caller's audio."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from audio_checks import dominant_hz, max_jump, non_silent, sine_peak_dbfs
from livecall import connected_call, inject, wait_injection, wait_until
from simulator import CallerAudio

# (codec, Telnyx's rate, PCM rate, test tone, level tolerance dB, largest departure from the
# fitted sine). Wideband calls get a ~5 kHz tone: it only arrives if the codec carries 4-7 kHz.
# No tone is a multiple of 50 Hz: a whole number of cycles per 20 ms frame would hide a lost or
# repeated frame from the sine fit.
# G.722 codes 4-8 kHz with a 2-bit ADPCM, hence its wide departure there (measured 0.27); a lost
# or repeated frame, or a click, departs by the whole amplitude or more (3x for a lost frame).
CASES = [
    ("G722", 16000, 16000, 4970, 0.5, 0.4),
    ("G722", 8000, 16000, 4970, 0.5, 0.4),  # the nominal RTP rate of G.722: still 16 kHz audio
    ("OPUS", 16000, 16000, 4970, 1.5, 0.3),
    ("OPUS", 8000, 8000, 1030, 1.5, 0.3),
    ("L16", 22050, 22050, 4970, 0.1, 0.001),
    ("L16", 24000, 24000, 4970, 0.1, 0.001),
    ("L16", 48000, 48000, 4970, 0.1, 0.001),
]


def sine_residual(pcm: np.ndarray, freq: float, rate: int) -> float:
    """Largest difference between pcm and the sine of `freq` that fits it best, as a fraction of
    that sine's amplitude: a click or a dropped frame stands out of it whatever the frequency."""
    t = np.arange(len(pcm)) / rate
    basis = np.stack([np.sin(2 * np.pi * freq * t), np.cos(2 * np.pi * freq * t)], axis=1)
    x = pcm.astype(np.float64)
    coef, *_ = np.linalg.lstsq(basis, x, rcond=None)
    return float(np.max(np.abs(x - basis @ coef)) / np.hypot(*coef))


def log_events(server, **params):
    return server.http.get("/stream-log", params={"limit": 1000, **params}).json()["items"]


@pytest.mark.parametrize(("codec", "nominal", "rate", "tone_hz", "tolerance_db", "departure"), CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_tone_arrives_through_the_codec_at_its_frequency_and_level(
        telnyx, make_server_, codec, nominal, rate, tone_hz, tolerance_db, departure):
    server = make_server_(STREAM_CODEC=codec, STREAM_SAMPLE_RATE=nominal)
    call = connected_call(telnyx, server)
    start = next(c for c in telnyx.commands if c.action == "streaming_start")
    assert (start.body["stream_bidirectional_codec"], start.body["stream_codec"],
            start.body["stream_bidirectional_sampling_rate"]) == (codec, codec, nominal)
    view = server.http.get(f"/streams/{call.call_control_id}").json()
    assert (view["codec"], view["sample_rate"]) == (codec, rate)

    inj = inject(server, call, {"tone": {"frequency_hz": tone_hz, "duration_ms": 800, "level_dbfs": -6}})
    wait_injection(server, call, inj["id"], "finished")
    assert call.sample_rate == rate
    frame = rate // 50
    # What the simulator decoded, chunk after chunk as they came, without the playout's timing: a
    # server held up by a loaded machine leaves holes in the playout, not in what it sent.
    decoded = non_silent(np.concatenate([pcm for _, pcm in call.media.recorder.segments]), threshold=200)
    assert abs(len(decoded) - 800 * rate // 1000) <= 2 * frame
    middle = decoded[4 * frame:-4 * frame]
    assert abs(sine_peak_dbfs(middle) - -6.0) <= tolerance_db
    assert abs(dominant_hz(middle, rate) - tone_hz) <= 3
    # No click at the seams of 20 ms frames: no step much above a sine's own largest step, and
    # nothing far off the sine anywhere.
    sine_step = 2 * np.sin(np.pi * tone_hz / rate) * 0.5 * 32768
    assert max_jump(middle) <= 1.25 * sine_step
    assert sine_residual(middle, tone_hz, rate) <= departure
    # And the caller heard it, at that frequency: all of it but, maybe, the codec's tail in the
    # frame after the injection's mark (OPUS's 6.5 ms look-ahead), not yet played when it finished.
    heard = non_silent(call.heard_pcm(), threshold=200)
    assert len(heard) >= len(decoded) - frame and abs(dominant_hz(heard, rate) - tone_hz) <= 3
    assert not log_events(server, event="stream.frame_error", call_control_id=call.call_control_id)


@pytest.mark.parametrize(("codec", "nominal"), [("PCMU", 8000), ("G722", 16000), ("OPUS", 16000), ("OPUS", 8000)])
def test_the_server_decodes_the_callers_audio(telnyx, make_server_, codec, nominal):
    # Ducking listens to the decoded caller (while the clock runs, i.e. while something plays):
    # it only hears the caller speak if decoding works, and only then.
    server = make_server_(STREAM_CODEC=codec, STREAM_SAMPLE_RATE=nominal)
    calls = {}
    for name, audio in (("talking", CallerAudio.tone(440.0, level_dbfs=-12.0)), ("quiet", CallerAudio.silence())):
        call = calls[name] = telnyx.place_call(caller_audio=audio)
        call.wait_streaming(timeout=10)
        wait_until(lambda call=call: server.http.get(f"/streams/{call.call_control_id}").json()["status"]
                   == "streaming", what="streaming")
        inject(server, call, {"tone": {"frequency_hz": 300, "duration_ms": 1000, "level_dbfs": -30}, "loop": True})

    def view(name):
        return server.http.get(f"/streams/{calls[name].call_control_id}").json()

    wait_until(lambda: view("talking")["caller_speaking"], what="the caller's decoded voice")
    wait_until(lambda: view("quiet")["frames"]["received"] > 50, what="a second of silence")
    assert not view("quiet")["caller_speaking"]
    assert not log_events(server, event="stream.frame_error")


def test_garbage_opus_payloads_are_silence_and_the_call_goes_on(telnyx, make_server_):
    server = make_server_(STREAM_CODEC="OPUS", STREAM_SAMPLE_RATE=16000)
    call = connected_call(telnyx, server)
    inj = inject(server, call, {"tone": {"frequency_hz": 700, "duration_ms": 1000}, "loop": True})
    # A packet whose TOC says code 3 with zero frames, random bytes, and one byte too few.
    for payload in (bytes([0x0B, 0x00]), bytes([0xFF]) * 7, bytes([0x4B, 0x41, 0x01]), b"\x03"):
        media = {"event": "media", "sequence_number": "9", "stream_id": call.stream_id,
                 "media": {"track": "inbound", "chunk": "9", "timestamp": "180",
                           "payload": base64.b64encode(payload).decode()}}
        call.send_raw(json.dumps(media))
    wait_until(lambda: log_events(server, event="stream.frame_error", call_control_id=call.call_control_id),
               what="the decoder error in the log")
    errors = log_events(server, event="stream.frame_error", call_control_id=call.call_control_id)
    assert all(e["data"]["reason"] == "undecodable_media" for e in errors)
    assert 'mixer_websocket_errors_total{reason="undecodable_media"}' in server.http.get("/metrics").text
    wait_injection(server, call, inj["id"], "playing")
    wait_until(lambda: len(call.heard_pcm()) > 16000, what="the call's audio after the garbage")
    assert server.http.get(f"/streams/{call.call_control_id}").json()["status"] == "streaming"
