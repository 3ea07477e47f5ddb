"""Sources: file decoding in every format, resampling quality, tones, DTMF, clips, error paths."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from mixer import sources
from mixer.errors import AudioTooLong, EmptyAudio, UndecodableAudio, UnknownClip
from mixer.geometry import FrameGeometry


def sine(freq: float, seconds: float, rate: int, amp: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return amp * np.sin(2 * np.pi * freq * t)


def dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), n=16 * len(x)))
    return float(np.argmax(spectrum) * rate / (16 * len(x)))


def band_level_db(x: np.ndarray, rate: int, lo: float, hi: float) -> float:
    """Energy in [lo, hi] Hz relative to the total, in dB."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    band = spectrum[(freqs >= lo) & (freqs <= hi)].sum()
    return float(10 * np.log10(band / spectrum.sum() + 1e-30))


def encode(x: np.ndarray, rate: int, fmt: str, subtype: str | None = None) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, rate, format=fmt, subtype=subtype)
    return buf.getvalue()


# -- decoding ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("fmt", "subtype", "rate"), [("WAV", "PCM_16", 44100), ("WAV", "FLOAT", 44100),
                                                      ("FLAC", None, 44100), ("OGG", "VORBIS", 44100),
                                                      ("OGG", "OPUS", 48000), ("MP3", "MPEG_LAYER_III", 44100)])
def test_decode_each_format_to_float32_mono_at_stream_rate(fmt, subtype, rate, tmp_path):
    stereo = np.stack([sine(440, 1.0, rate), sine(440, 1.0, rate)], axis=1)
    path = tmp_path / f"tone.{fmt.lower()}"
    sf.write(path, stereo, rate, format=fmt, subtype=subtype)
    out = sources.decode_audio(path.read_bytes(), 8000, max_seconds=10)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - 8000) <= 8000 * 0.06  # lossy codecs pad a little
    middle = out[2000:6000]
    assert abs(dominant_hz(middle, 8000) - 440) < 2
    rms = float(np.sqrt(np.mean(middle.astype(np.float64) ** 2)))
    assert abs(20 * np.log10(rms * np.sqrt(2)) - 20 * np.log10(0.5)) < 0.5


def test_downmix_averages_channels():
    left, right = sine(300, 0.5, 8000, 0.4), np.zeros(4000)
    out = sources.decode_audio(encode(np.stack([left, right], axis=1), 8000, "WAV", "FLOAT"), 8000,
                               max_seconds=10)
    assert np.allclose(out, (left / 2).astype(np.float32), atol=1e-7)


def test_same_rate_wav_is_exact():
    pcm = (sine(1000, 0.1, 8000) * 32768).astype(np.int16)
    out = sources.decode_audio(encode(pcm, 8000, "WAV", "PCM_16"), 8000, max_seconds=10)
    assert np.array_equal(out, pcm.astype(np.float32) / 32768)


def test_resampled_tone_lands_on_its_frequency_and_aliases_are_removed():
    # 1 kHz (wanted) + 5 kHz (above the 4 kHz Nyquist of an 8 kHz call, must not fold to 3 kHz).
    x = sine(1000, 2.0, 44100, 0.4) + sine(5000, 2.0, 44100, 0.4)
    out = sources.decode_audio(encode(x, 44100, "WAV", "FLOAT"), 8000, max_seconds=10)
    assert len(out) == 16000
    body = out[2000:-2000].astype(np.float64)
    assert abs(dominant_hz(body, 8000) - 1000) <= 1.0
    assert band_level_db(body, 8000, 2900, 3100) < -60
    assert band_level_db(body, 8000, 1100, 4000) < -60


def test_upsampling_from_8k_to_16k():
    out = sources.decode_audio(encode(sine(440, 1.0, 8000), 8000, "WAV", "FLOAT"), 16000, max_seconds=5)
    assert len(out) == 16000
    assert abs(dominant_hz(out[4000:12000].astype(np.float64), 16000) - 440) <= 1.0


def test_out_of_range_float_files_are_clipped():
    x = np.array([0.0, 1.7, -3.0, np.nan, 0.25], dtype=np.float32)
    out = sources.decode_audio(encode(x, 8000, "WAV", "FLOAT"), 8000, max_seconds=5)
    assert out.tolist() == [0.0, 1.0, -1.0, 0.0, 0.25]


ACCEPTED = "WAV, FLAC, MP3 or OGG (Vorbis or Opus)"

# The start of an .m4a as iTunes and ffmpeg write it: an MP4 'ftyp' box, then 'moov'.
M4A = (b"\x00\x00\x00\x1cftypM4A \x00\x00\x02\x00M4A isomiso2" + b"\x00\x00\x00\x08free"
       + b"\x00\x00\x01\x00moov" + bytes(248))


def test_accepted_formats_are_what_this_libsndfile_decodes():
    # Each of these decodes in test_decode_each_format_to_float32_mono_at_stream_rate.
    assert sources.accepted_formats() == ACCEPTED


def test_garbage_is_undecodable_with_the_decoders_reason():
    with pytest.raises(UndecodableAudio) as info:
        sources.decode_audio(b"this is not audio at all" * 10, 8000, max_seconds=5)
    assert str(info.value) == f"the audio could not be decoded (Format not recognised); send {ACCEPTED} audio."
    assert info.value.code == "undecodable_audio"


@pytest.mark.parametrize(
    ("data", "kind"),
    [(M4A, "M4A/MP4 (AAC or ALAC)"), (b"\xff\xf1\x50\x80\x02\x1f\xfc" + bytes(400), "raw AAC (ADTS)"),
     (b"\x1aE\xdf\xa3" + bytes(400), "WebM/Matroska"), (b"#!AMR\n" + bytes(400), "AMR")],
    ids=["m4a", "adts", "webm", "amr"],
)
def test_a_format_we_do_not_decode_is_named_with_the_formats_we_do(data, kind):
    with pytest.raises(UndecodableAudio) as info:
        sources.decode_audio(data, 8000, max_seconds=5)
    assert str(info.value) == (f"the audio could not be decoded (Format not recognised): it looks like {kind}, "
                               f"which is not supported; send {ACCEPTED} audio.")


@pytest.mark.parametrize(
    "data",
    [M4A, b"RIFF\x00\x00\x00\x00WAVEjunk", bytes(1000), b"\x00",
     encode(sine(440, 0.5, 8000), 8000, "FLAC")[:30], encode(sine(440, 0.5, 8000), 8000, "WAV")[:30]],
    ids=["m4a", "broken-wav", "zeros", "one-byte", "truncated-flac", "truncated-wav"],
)
def test_undecodable_messages_say_why_and_what_to_send_never_a_python_repr(data):
    with pytest.raises(UndecodableAudio) as info:
        sources.decode_audio(data, 8000, max_seconds=5)
    message = str(info.value)
    assert message.startswith("the audio could not be decoded (")
    assert message.endswith(f"; send {ACCEPTED} audio.")
    assert "<" not in message and "0x" not in message and "BytesIO" not in message


def test_empty_bytes_and_empty_file():
    with pytest.raises(EmptyAudio) as info:
        sources.decode_audio(b"", 8000, max_seconds=5)
    assert str(info.value) == f"the audio is empty (0 bytes); send {ACCEPTED} audio."
    assert info.value.code == "undecodable_audio"
    with pytest.raises(EmptyAudio) as info:
        sources.decode_audio(encode(np.zeros(0), 8000, "WAV", "PCM_16"), 8000, max_seconds=5)
    assert "empty" in str(info.value)


def test_too_long():
    data = encode(np.zeros(8000 * 3), 8000, "WAV", "PCM_16")
    with pytest.raises(AudioTooLong) as info:
        sources.decode_audio(data, 8000, max_seconds=2)
    assert str(info.value) == "the audio lasts 3.0 s, longer than the limit of 2 s; trim it or raise the limit."
    assert info.value.code == "audio_too_long"
    assert len(sources.decode_audio(data, 8000, max_seconds=3)) == 24000


# -- clips --------------------------------------------------------------------------------------

def test_clip_by_name_with_or_without_extension(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    sf.write(media / "hold-music.flac", sine(440, 0.2, 16000), 16000)
    a = sources.load_clip(media, "hold-music", 8000, max_seconds=5)
    b = sources.load_clip(media, "hold-music.flac", 8000, max_seconds=5)
    assert len(a) == 1600 and np.array_equal(a, b)


@pytest.mark.parametrize("name", ["../secret", "..", "/etc/passwd", "sub/clip", ".hidden", "a\\b", "", "x" * 200])
def test_clip_names_cannot_escape_the_media_dir(tmp_path, name):
    media = tmp_path / "media"
    media.mkdir()
    sf.write(tmp_path / "secret.wav", np.zeros(80), 8000)
    with pytest.raises(UnknownClip) as info:
        sources.load_clip(media, name, 8000, max_seconds=5)
    assert info.value.code == "unknown_clip"
    assert "not a valid clip name" in str(info.value)


def test_symlink_out_of_the_media_dir_is_refused(tmp_path):
    media = tmp_path / "media"
    media.mkdir()
    sf.write(tmp_path / "secret.wav", np.zeros(80), 8000)
    (media / "link.wav").symlink_to(tmp_path / "secret.wav")
    with pytest.raises(UnknownClip, match="is not in the media library"):
        sources.load_clip(media, "link", 8000, max_seconds=5)


def test_unknown_clip(tmp_path):
    with pytest.raises(UnknownClip) as info:
        sources.load_clip(tmp_path, "nope", 8000, max_seconds=5)
    assert str(info.value) == ("clip 'nope' is not in the media library; add nope.wav (or .mp3, .flac, .ogg) "
                               "to the media directory or pick an existing clip.")


def test_broken_clip_is_undecodable(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF....WAVEfmt garbage")
    with pytest.raises(UndecodableAudio):
        sources.load_clip(tmp_path, "bad", 8000, max_seconds=5)


@pytest.mark.parametrize("name", ["hold", "hold.m4a"])
def test_a_clip_in_a_format_we_do_not_decode_is_named(tmp_path, name):
    (tmp_path / "hold.m4a").write_bytes(M4A)
    with pytest.raises(UndecodableAudio) as info:
        sources.load_clip(tmp_path, name, 8000, max_seconds=5)
    assert str(info.value) == (f"clip {name!r} is hold.m4a, a format this server does not decode; "
                               f"convert it to {ACCEPTED} audio (.wav, .flac, .mp3 or .ogg).")


def test_an_m4a_clip_says_so(tmp_path):
    (tmp_path / "jingle.mp3").write_bytes(M4A)  # renamed, as happens: the bytes decide
    with pytest.raises(UndecodableAudio, match=r"it looks like M4A/MP4 \(AAC or ALAC\)"):
        sources.load_clip(tmp_path, "jingle", 8000, max_seconds=5)


# -- synthetic sources ------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [8000, 16000])
def test_tone_frequency_length_and_peak_level(rate):
    x = sources.tone(1000, 500, rate, level_dbfs=-6.0)
    assert x.dtype == np.float32 and len(x) == rate // 2
    assert x[0] == 0.0
    assert abs(20 * np.log10(np.max(np.abs(x))) - -6.0) < 0.01
    assert abs(dominant_hz(x.astype(np.float64), rate) - 1000) < 1


def test_tone_ends_do_not_click():
    x = sources.tone(1000, 103, 8000, level_dbfs=0.0)  # stops mid-cycle
    assert x[0] == 0.0 and abs(x[-1]) < 0.01
    assert np.max(np.abs(np.diff(x))) <= np.max(np.abs(np.diff(x[100:700]))) + 1e-6


def test_tone_default_level_is_minus_10_dbfs_peak():
    x = sources.tone(400, 100, 8000)
    assert abs(20 * np.log10(np.max(np.abs(x))) + 10) < 0.01


def test_tone_rejects_frequencies_above_nyquist():
    with pytest.raises(ValueError, match="between 0 and 4000"):
        sources.tone(5000, 100, 8000)


def test_silence():
    assert np.array_equal(sources.silence(250, 16000), np.zeros(4000, dtype=np.float32))


def goertzel_power(x: np.ndarray, freq: float, rate: int) -> float:
    t = np.arange(len(x)) / rate
    return float(abs(np.dot(x, np.exp(-2j * np.pi * freq * t))) ** 2)


@pytest.mark.parametrize("digit", list("0123456789*#ABCD"))
def test_dtmf_pairs(digit):
    rate = 8000
    x = sources.dtmf(digit, rate).astype(np.float64)
    assert len(x) == (100 + 60) * 8
    burst = x[:800]
    rows, cols = [697, 770, 852, 941], [1209, 1336, 1477, 1633]
    row = max(rows, key=lambda f: goertzel_power(burst, f, rate))
    col = max(cols, key=lambda f: goertzel_power(burst, f, rate))
    assert (row, col) == (sources.DTMF_ROWS[digit], sources.DTMF_COLS[digit])
    assert np.all(x[800:] == 0)
    assert np.max(np.abs(burst)) <= 10 ** (-10 / 20) + 1e-6


def test_dtmf_string_timing():
    g = FrameGeometry(16000)
    x = sources.dtmf("12#", g.sample_rate, tone_ms=80, gap_ms=40)
    per = g.ms_to_samples(120)
    assert len(x) == 3 * per
    for i in range(3):
        assert np.any(x[i * per:i * per + g.ms_to_samples(80)] != 0)
        assert np.all(x[i * per + g.ms_to_samples(80):(i + 1) * per] == 0)


@pytest.mark.parametrize("digits", ["", "12E", "1 2"])
def test_dtmf_rejects_bad_digits(digits):
    with pytest.raises(ValueError, match="DTMF digits"):
        sources.dtmf(digits, 8000)
