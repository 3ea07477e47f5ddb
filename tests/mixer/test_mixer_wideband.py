"""G.722, OPUS and L16 at every rate, by analysis: tones keep their frequency and level, wideband
codecs carry 4-7 kHz and narrowband ones put nothing there, frame seams do not click, state is
per stream, and hostile payloads are errors the caller can turn into silence.

Where a decoder other than the server's exists, it is used too (simulator.wideband: Sippy's
libg722; FFmpeg's native Opus decoder), so that both ends cannot share one mistake.
"""

from __future__ import annotations

import io

import av
import numpy as np
import pytest
import soundfile as sf

from audio_checks import dominant_hz, max_jump, sine_peak_dbfs
from mixer.codecs import Codec, get_codec
from mixer.errors import CorruptPayload
from mixer.sources import decode_audio
from simulator import wideband as independent

# (codec, Telnyx's nominal rate, level tolerance in dB for a steady tone)
TONE_CASES = [
    ("PCMU", 8000, 0.1), ("PCMA", 8000, 0.1),
    ("G722", 8000, 0.3), ("G722", 16000, 0.3),
    ("OPUS", 8000, 1.0), ("OPUS", 16000, 1.0),
    ("L16", 8000, 0.01), ("L16", 16000, 0.01), ("L16", 22050, 0.01), ("L16", 24000, 0.01), ("L16", 48000, 0.01),
]
WIDEBAND = [("G722", 16000), ("OPUS", 16000)]


def tone(freq: float, rate: int, seconds: float, level_dbfs: float = -6.0) -> np.ndarray:
    t = np.arange(round(rate * seconds)) / rate
    return np.rint(10 ** (level_dbfs / 20) * 32767 * np.sin(2 * np.pi * freq * t)).astype(np.int16)


def band_noise(rate: int, seconds: float, lo: float, hi: float, seed: int = 3) -> np.ndarray:
    """Seeded noise with a flat spectrum between lo and hi Hz, peak 0.5 of full scale."""
    n = round(rate * seconds)
    spectrum = np.fft.rfft(np.random.default_rng(seed).standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / rate)
    spectrum[(freqs < lo) | (freqs > hi)] = 0
    x = np.fft.irfft(spectrum, n)
    return np.rint(x / np.max(np.abs(x)) * 0.5 * 32767).astype(np.int16)


def band_db(x: np.ndarray, rate: int, lo: float, hi: float) -> float:
    power = np.abs(np.fft.rfft(x.astype(np.float64) * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    return float(10 * np.log10(power[(freqs >= lo) & (freqs < hi)].sum() + 1e-20))


def decoder_for(kind: str, encoding: str, nominal: int) -> Codec | independent.Decoder:
    if kind == "server" or encoding not in independent.CODECS:
        return get_codec(encoding, nominal)
    return independent.new_decoder(encoding, get_codec(encoding, nominal).sample_rate)


def through(encoding: str, nominal: int, pcm: np.ndarray, decoder: str = "server") -> np.ndarray:
    """pcm, frame by frame through one encoder (as a call does) and one decoder."""
    enc = get_codec(encoding, nominal)
    dec = decoder_for(decoder, encoding, nominal)
    n = enc.sample_rate // 50
    return np.concatenate([dec.decode(enc.encode(pcm[i * n:(i + 1) * n])) for i in range(len(pcm) // n)])


@pytest.mark.parametrize("decoder", ["server", "independent"])
@pytest.mark.parametrize(("encoding", "nominal", "tolerance_db"), TONE_CASES,
                         ids=[f"{c[0]}-{c[1]}" for c in TONE_CASES])
def test_a_tone_keeps_its_frequency_and_level(encoding, nominal, tolerance_db, decoder):
    rate = get_codec(encoding, nominal).sample_rate
    for freq in (440.0, 1000.0, 3000.0) + ((6000.0,) if rate >= 16000 else ()):
        out = through(encoding, nominal, tone(freq, rate, 1.0), decoder)
        steady = out[rate // 5:]  # past the codec's start-up (OPUS: 6.5 ms look-ahead, resampler)
        assert abs(sine_peak_dbfs(steady) - -6.0) <= tolerance_db, (freq, sine_peak_dbfs(steady))
        assert abs(dominant_hz(steady, rate) - freq) <= 2.0, freq


@pytest.mark.parametrize("decoder", ["server", "independent"])
@pytest.mark.parametrize(("encoding", "nominal", "loss_db"), [("G722", 16000, 2.0), ("OPUS", 16000, 6.0)])
def test_wideband_codecs_carry_4_to_7_khz(encoding, nominal, loss_db, decoder):
    x = band_noise(16000, 2.0, 50, 7500)
    y = through(encoding, nominal, x, decoder)
    skip = 4000  # 250 ms: past start-up, and the codec delay does not matter to a band's energy
    n = min(len(x), len(y))
    assert band_db(y[skip:n], 16000, 4000, 7000) >= band_db(x[skip:n], 16000, 4000, 7000) - loss_db
    assert band_db(y[skip:n], 16000, 100, 4000) >= band_db(x[skip:n], 16000, 100, 4000) - loss_db


def test_g722_puts_nothing_in_4_to_7_khz_of_its_own():
    # Telephone-band input: the upper sub-band's ADPCM must stay quiet, not fill it with noise.
    x = band_noise(16000, 2.0, 100, 3400)
    for decoder in ("server", "independent"):
        y = through("G722", 16000, x, decoder)[4000:]
        assert band_db(y, 16000, 4000, 7000) <= band_db(y, 16000, 100, 4000) - 35


def test_narrowband_opus_carries_nothing_above_4_khz():
    # Decoded at 48 kHz by FFmpeg's own decoder, before any resampling of ours could hide it.
    enc = get_codec("OPUS", 8000)
    x = band_noise(8000, 2.0, 100, 3900)
    ctx = av.CodecContext.create("opus", "r")
    ctx.sample_rate, ctx.layout = 48000, "mono"
    ctx.open()
    parts = [frame.to_ndarray().reshape(-1).astype(np.float64)
             for i in range(len(x) // 160) for frame in ctx.decode(av.Packet(enc.encode(x[i * 160:(i + 1) * 160])))]
    y = np.concatenate(parts)[9600:]
    assert band_db(y, 48000, 4500, 7000) <= band_db(y, 48000, 100, 4000) - 25


@pytest.mark.parametrize(("encoding", "nominal"), [("PCMU", 8000), ("OPUS", 8000)])
def test_narrowband_calls_do_not_alias_wideband_sources(encoding, nominal):
    # A 6 kHz tone in a 16 kHz file, played on an 8 kHz call: the source resampler must remove
    # it, or it folds down to 2 kHz, right in the voice band.
    buf = io.BytesIO()
    sf.write(buf, tone(6000.0, 16000, 1.0), 16000, format="WAV", subtype="PCM_16")
    source = decode_audio(buf.getvalue(), 8000, max_seconds=10)
    pcm = np.rint(source * 32767).astype(np.int16)
    out = through(encoding, nominal, pcm)[1600:]
    assert band_db(out, 8000, 1800, 2200) <= band_db(tone(1000.0, 8000, 0.8), 8000, 800, 1200) - 60


@pytest.mark.parametrize(("encoding", "nominal"), [("PCMU", 8000), ("G722", 16000), ("OPUS", 8000),
                                                   ("OPUS", 16000), ("L16", 22050), ("L16", 48000)])
def test_no_click_at_frame_seams(encoding, nominal):
    rate = get_codec(encoding, nominal).sample_rate
    freq = 1000.0
    out = through(encoding, nominal, tone(freq, rate, 1.0, level_dbfs=-3.0))[rate // 5:]
    sine_step = 2 * np.sin(np.pi * freq / rate) * 10 ** (-3 / 20) * 32767
    assert max_jump(out) <= 1.2 * sine_step


def test_the_seam_check_sees_lost_codec_state():
    # The same tone with a new G.722 encoder every frame, as a shared or reset codec would do:
    # every seam restarts the ADPCM predictors, and the check above catches it.
    x = tone(1000.0, 16000, 0.5, level_dbfs=-3.0)
    dec = get_codec("G722", 16000)
    out = np.concatenate([dec.decode(get_codec("G722", 16000).encode(x[i * 320:(i + 1) * 320])) for i in range(25)])
    sine_step = 2 * np.sin(np.pi * 1000 / 16000) * 10 ** (-3 / 20) * 32767
    assert max_jump(out[3200:]) > 1.2 * sine_step


def test_g722_matches_an_independent_implementation():
    # FFmpeg's encoder, Sippy's libg722 decoder, and the other way round: both are ITU G.722.
    x = band_noise(16000, 1.0, 50, 7500)
    ours = through("G722", 16000, x)
    theirs = through("G722", 16000, x, "independent")
    assert len(ours) == len(theirs) == len(x)
    assert np.max(np.abs(ours.astype(np.int32) - theirs)) <= 2
    payload = independent.new_encoder("G722", 16000).encode(x[:320])
    assert len(payload) == 160
    back = get_codec("G722", 16000).decode(payload)
    assert len(back) == 320


@pytest.mark.parametrize("frame_ms", [20, 40, 60, 100])
@pytest.mark.parametrize("nominal", [8000, 16000])
def test_opus_sends_one_packet_per_frame(nominal, frame_ms):
    enc = get_codec("OPUS", nominal, frame_ms=frame_ms)
    n = nominal * frame_ms // 1000
    x = band_noise(nominal, 1.0, 100, nominal * 0.45)
    for i in range(len(x) // n):
        packet = enc.encode(x[i * n:(i + 1) * n])
        assert independent.opus_packet_ms(packet) == frame_ms


def test_opus_bit_rate_stays_near_its_target():
    for nominal, target in ((8000, 16000), (16000, 32000)):
        enc = get_codec("OPUS", nominal)
        n = nominal // 50
        x = band_noise(nominal, 4.0, 100, nominal * 0.45)
        sizes = [len(enc.encode(x[i * n:(i + 1) * n])) for i in range(len(x) // n)]
        kbps = np.mean(sizes[10:]) * 8 * 50
        assert 0.6 * target <= kbps <= 1.1 * target, kbps


@pytest.mark.parametrize("encoding", ["G722", "OPUS"])
def test_each_stream_starts_from_fresh_state(encoding):
    x = band_noise(16000, 0.2, 100, 7000)
    first, second = get_codec(encoding, 16000), get_codec(encoding, 16000)
    a = [first.encode(x[i * 320:(i + 1) * 320]) for i in range(10)]
    b = [second.encode(x[i * 320:(i + 1) * 320]) for i in range(10)]
    assert a == b  # deterministic from a fresh state
    again = [first.encode(x[i * 320:(i + 1) * 320]) for i in range(10)]
    assert again != a  # the first encoder remembers where it was


@pytest.mark.parametrize("payload", [bytes([0xFF]) * 7, bytes([0x0B, 0x00]), b"\x03", bytes([0x4B, 0x41, 0x01]),
                                     bytes(range(256)) * 20])
def test_garbage_opus_is_a_corrupt_payload_and_the_decoder_recovers(payload):
    enc, dec = get_codec("OPUS", 16000), get_codec("OPUS", 16000)
    x = tone(1000.0, 16000, 0.6)
    for i in range(10):
        dec.decode(enc.encode(x[i * 320:(i + 1) * 320]))
    with pytest.raises(CorruptPayload) as info:
        dec.decode(payload)
    assert info.value.code == "corrupt_payload" and "OPUS payload" in str(info.value)
    after = np.concatenate([dec.decode(enc.encode(x[i * 320:(i + 1) * 320])) for i in range(10, 30)])
    assert abs(dominant_hz(after[1600:], 16000) - 1000) <= 2


def test_g722_takes_any_payload_size():
    dec = get_codec("G722", 16000)
    assert dec.decode(b"").tolist() == []
    assert len(dec.decode(bytes(range(7)))) == 14  # each byte is two 16 kHz samples
    assert len(dec.decode(bytes(16000))) == 32000


def test_encoders_want_int16():
    with pytest.raises(TypeError, match="int16"):
        get_codec("G722", 16000).encode(np.zeros(320, dtype=np.float32))
