"""The simulator speaks and plays G.722 and OPUS (simulator.wideband), with codecs of its own."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from audio_checks import dominant_hz, non_silent, sine_peak_dbfs
from simulator import CallerAudio, wideband
from tests.simulator.conftest import rtp_params, wait_until


def tone(freq: float, rate: int, ms: int, level_dbfs: float = -6.0) -> np.ndarray:
    t = np.arange(rate * ms // 1000) / rate
    return np.rint(10 ** (level_dbfs / 20) * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def start_call(fake, client, url, codec, rate, caller_audio=None):
    call = fake.place_call(caller_audio=caller_audio)
    client.calls.actions.answer(call.call_control_id)
    client.calls.actions.start_streaming(call.call_control_id, **rtp_params(
        url, stream_bidirectional_codec=codec, stream_bidirectional_sampling_rate=rate,
        stream_track="inbound_track"))
    call.wait_streaming()
    return call


@pytest.mark.parametrize(("codec", "nominal", "rate", "freq"),
                         [("G722", 8000, 16000, 5000.0), ("G722", 16000, 16000, 5000.0),
                          ("OPUS", 16000, 16000, 5000.0), ("OPUS", 8000, 8000, 1000.0)])
def test_the_simulator_plays_what_the_app_sends(fake, client, stream_server, codec, nominal, rate, freq):
    call = start_call(fake, client, stream_server.url, codec, nominal)
    [start] = stream_server.wait_frames("start")
    assert start["start"]["media_format"] == {"encoding": codec, "sample_rate": nominal, "channels": 1}
    encoder = wideband.new_encoder(codec, rate)
    pcm = tone(freq, rate, 600)
    n = rate // 50
    for i in range(30):
        payload = encoder.encode(pcm[i * n:(i + 1) * n])
        stream_server.send({"event": "media", "media": {"payload": base64.b64encode(payload).decode()}})
    stream_server.send({"event": "mark", "media": None, "mark": {"name": "end"}})
    call.wait_mark("end")
    assert call.sample_rate == rate
    heard = non_silent(call.heard_pcm(), threshold=300)
    assert abs(len(heard) - len(pcm)) <= n
    middle = heard[5 * n:-5 * n]
    assert abs(sine_peak_dbfs(middle) - -6.0) <= 1.0
    assert abs(dominant_hz(middle, rate) - freq) <= 3
    assert not call.errors_sent


@pytest.mark.parametrize(("codec", "nominal", "rate", "size"),
                         [("G722", 8000, 16000, 160), ("OPUS", 16000, 16000, None)])
def test_the_caller_speaks_the_codec(fake, client, stream_server, codec, nominal, rate, size):
    start_call(fake, client, stream_server.url, codec, nominal, CallerAudio.tone(1000.0, level_dbfs=-10.0))
    frames = stream_server.wait_frames("media", 25)[:25]
    payloads = [base64.b64decode(f["media"]["payload"]) for f in frames]
    if size is not None:
        assert {len(p) for p in payloads} == {size}
    else:
        assert {wideband.opus_packet_ms(p) for p in payloads} == {20.0}
    decoder = wideband.new_decoder(codec, rate)
    pcm = np.concatenate([decoder.decode(p) for p in payloads])[rate // 10:]
    assert abs(dominant_hz(pcm, rate) - 1000) <= 3
    assert abs(sine_peak_dbfs(pcm) - -10.0) <= 1.0


def test_garbage_opus_from_the_app_is_refused_as_invalid_media(fake, client, stream_server):
    call = start_call(fake, client, stream_server.url, "OPUS", 16000)
    stream_server.send({"event": "media", "media": {"payload": base64.b64encode(bytes([0x0B, 0x00])).decode()}})
    stream_server.send({"event": "media", "media": {"payload": base64.b64encode(bytes([16 << 3, 1, 2])).decode()}})
    wait_until(lambda: len(call.errors_sent) == 2, what="two error frames")
    assert [e["payload"]["code"] for e in call.errors_sent] == [100004, 100004]
    assert "does not decode" in call.errors_sent[0]["payload"]["detail"]
    assert "20 ms to 30 s" in call.errors_sent[1]["payload"]["detail"]  # a 2.5 ms CELT packet


@pytest.mark.parametrize(("packet", "ms"), [
    (bytes([0x08 << 3]), 10.0),        # SILK NB 10 ms, one frame
    (bytes([(9 << 3) | 0]), 20.0),     # SILK MB 20 ms
    (bytes([(11 << 3) | 1]), 120.0),   # SILK 60 ms, two frames
    (bytes([(13 << 3) | 2]), 40.0),    # hybrid 20 ms, two frames
    (bytes([(16 << 3) | 3, 5]), 12.5),  # CELT 2.5 ms, five frames
    (bytes([(31 << 3) | 0]), 20.0),
])
def test_opus_packet_length_from_its_toc(packet, ms):
    assert wideband.opus_packet_ms(packet) == ms


@pytest.mark.parametrize("packet", [b"", bytes([3]), bytes([3, 0]), bytes([(11 << 3) | 3, 3])])
def test_malformed_opus_tocs(packet):
    with pytest.raises(wideband.DecodeError):
        wideband.opus_packet_ms(packet)


def test_the_decimator_keeps_the_band_and_removes_what_would_alias():
    rate_in, ratio = 48000, 3
    for freq, expected_db in ((1000, 0.0), (6000, 0.0), (10000, None), (20000, None)):
        dec = wideband.Decimator(ratio)
        x = 0.5 * np.sin(2 * np.pi * freq * np.arange(rate_in) / rate_in)
        y = np.concatenate([dec(x[i * 960:(i + 1) * 960]) for i in range(50)])
        assert len(y) == rate_in // ratio  # nothing held back
        level = 20 * np.log10(np.sqrt(2 * np.mean(y[2000:] ** 2)) / 0.5 + 1e-12)
        if expected_db is None:
            assert level < -70, freq
        else:
            assert abs(level - expected_db) < 0.1, freq


def test_an_amr_wb_stream_sends_no_media_it_cannot_encode(fake, client, stream_server):
    call = start_call(fake, client, stream_server.url, "AMR-WB", 16000, CallerAudio.tone(440.0))
    [start] = stream_server.wait_frames("start")
    assert start["start"]["media_format"]["encoding"] == "AMR-WB"
    stream_server.send({"event": "media", "media": {"payload": base64.b64encode(b"\x3c" * 61).decode()}})
    wait_until(lambda: call.media.stats.media_ignored == 1, what="the app's frame ignored")
    stream_server.send({"event": "mark", "mark": {"name": "m"}})
    call.wait_mark("m")  # the socket is alive and the playout clock runs
    assert stream_server.frames("media") == []
    assert not call.errors_sent
