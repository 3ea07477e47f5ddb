"""Text to speech through espeak-ng: speech-like audio at the stream's rate, voices, errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from mixer import speech
from mixer.errors import AudioTooLong, EmptyAudio, SpeechUnavailable, UnknownVoice

TEXT = "Hello, thank you for calling. Please hold the line."


@pytest.fixture(scope="module")
def engine() -> speech.EspeakEngine:
    return speech.default_engine()


def frame_rms(x: np.ndarray, n: int) -> np.ndarray:
    usable = len(x) // n * n
    return np.sqrt(np.mean(x[:usable].astype(np.float64).reshape(-1, n) ** 2, axis=1))


@pytest.mark.parametrize("rate", [8000, 16000])
def test_speech_is_speech_like_at_the_stream_rate(engine, rate):
    x = speech.speak(TEXT, rate, max_seconds=30)
    raw, raw_rate = engine.synthesize(TEXT, None, "en")
    assert raw_rate == engine.sample_rate == 22050
    assert x.dtype == np.float32 and x.ndim == 1
    # Resampled, same duration (espeak itself varies by a few ms from one run to the next).
    assert abs(len(x) / rate - len(raw) / raw_rate) < 0.02
    seconds = len(x) / rate
    assert 1.5 < seconds < 6  # ten words at a speaking pace
    assert np.max(np.abs(x)) <= 1.0
    # Syllables and pauses: the 20 ms level swings by more than 30 dB across the utterance.
    levels = 20 * np.log10(frame_rms(x, rate // 50) + 1e-9)
    assert levels.max() > -30 and levels.max() - np.percentile(levels, 10) > 30
    # Voice band: most of the energy lies between 80 Hz and 3.4 kHz.
    spectrum = np.abs(np.fft.rfft(x.astype(np.float64))) ** 2
    freqs = np.fft.rfftfreq(len(x), 1 / rate)
    assert spectrum[(freqs > 80) & (freqs < 3400)].sum() > 0.8 * spectrum.sum()


def test_voices_and_languages(engine):
    voices = engine.voices()
    assert {"en", "en-us", "de", "fr"} <= set(voices)
    us = speech.speak("Good morning", 8000, voice="en-us", max_seconds=10)
    gb = speech.speak("Good morning", 8000, language="en", max_seconds=10)
    de = speech.speak("Guten Morgen", 8000, language="de", max_seconds=10)
    female = speech.speak("Good morning", 8000, voice="en-us+f3", max_seconds=10)
    assert not np.array_equal(us, gb) and len(de) > 0
    assert not np.array_equal(us, female)
    assert engine.resolve("English (America)", "en") == engine.resolve("EN-US", "en")


@pytest.mark.parametrize(("voice", "language", "message"), [
    ("bogus", "en", "voice 'bogus' is not available"),
    (None, "xx-nowhere", "language 'xx-nowhere' is not available"),
    ("en+nobody", "en", "voice variant 'nobody' is not available"),
])
def test_unknown_voice(voice, language, message):
    with pytest.raises(UnknownVoice) as info:
        speech.speak("hello", 8000, voice=voice, language=language, max_seconds=10)
    assert str(info.value).startswith(message)
    assert info.value.code == "unknown_voice"


def test_empty_text():
    with pytest.raises(EmptyAudio, match="the text is empty"):
        speech.speak("   ", 8000, max_seconds=10)


def test_too_long_speech_is_cut_short_and_refused():
    with pytest.raises(AudioTooLong) as info:
        speech.speak("This sentence goes on. " * 40, 8000, max_seconds=2)
    assert info.value.code == "audio_too_long"


def test_unavailable_library():
    with pytest.raises(SpeechUnavailable) as info:
        speech.EspeakEngine(library_path="/nonexistent/libespeak-ng.so", data_path="/nonexistent")
    assert str(info.value).startswith("text to speech is not available: espeak-ng could not be loaded")
    assert info.value.code == "speech_unavailable"


def test_concurrent_requests_are_serialised(engine):
    # Interleaved synthesis would mix two utterances' chunks into one result (twice as long).
    expected = len(speech.speak(TEXT, 8000, max_seconds=30))
    results: list[np.ndarray] = []
    lock = threading.Lock()

    def work() -> None:
        out = speech.speak(TEXT, 8000, max_seconds=30)
        with lock:
            results.append(out)

    threads = [threading.Thread(target=work, name=f"tts-{i}") for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 4
    assert all(abs(len(r) - expected) < 0.01 * expected for r in results)


class ToneEngine:
    """A pluggable engine: says everything as a 24 kHz beep."""

    name = "beep"

    def voices(self) -> list[str]:
        return ["beep"]

    def synthesize(self, text, voice, language, *, max_seconds=None):
        if voice not in (None, "beep"):
            raise UnknownVoice(f"voice {voice!r} is not available")
        t = np.arange(24000 // 10 * len(text.split())) / 24000
        return (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 24000


def test_pluggable_engine_is_resampled():
    x = speech.speak("one two three", 8000, engine=ToneEngine(), max_seconds=10)
    assert len(x) == 2400
    with pytest.raises(UnknownVoice):
        speech.speak("one", 8000, voice="other", engine=ToneEngine(), max_seconds=10)
    with pytest.raises(AudioTooLong, match=r"lasts 0\.3 s"):
        speech.speak("one two three", 8000, engine=ToneEngine(), max_seconds=0.2)
