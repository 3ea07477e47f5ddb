"""Speech runs in a worker process: a crash or a hang there fails one request, clearly, and the
next request gets a new worker. The faults come from tests/speech_hooks.py."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
import speech_hooks

from mixer import speech
from mixer.errors import AudioTooLong, SpeechUnavailable, UnknownVoice


@pytest.fixture
def engine():
    worker = speech.IsolatedEngine(serve=speech_hooks.faulty_serve)
    yield worker
    worker.close()


def test_speech_is_made_in_another_process(engine):
    out = speech.speak("Good morning", 8000, engine=engine, max_seconds=10)
    assert engine.pid not in (None, os.getpid())
    here = speech.speak("Good morning", 8000, engine=speech.default_engine(), max_seconds=10)
    assert out.dtype == np.float32 and abs(len(out) - len(here)) < 8000 * 0.02  # espeak varies by a few ms


def test_speak_uses_the_worker_by_default():
    assert speech.isolated_engine() is speech.isolated_engine()
    speech.speak("hello", 8000, max_seconds=10)
    assert speech.isolated_engine().pid not in (None, os.getpid())


@pytest.mark.parametrize("fault", [speech_hooks.EXIT, speech_hooks.SEGFAULT])
def test_a_worker_that_dies_fails_that_request_and_the_next_one_works(engine, fault):
    speech.speak("one", 8000, engine=engine, max_seconds=10)
    first = engine.pid
    with pytest.raises(SpeechUnavailable) as info:
        speech.speak(fault, 8000, engine=engine, max_seconds=10)
    assert str(info.value) == ("text to speech failed: the speech engine crashed on this request; "
                               "try again, or with another text.")
    assert info.value.code == "speech_unavailable"
    assert engine.pid is None
    again = speech.speak("two", 8000, engine=engine, max_seconds=10)
    assert np.any(again) and engine.pid not in (None, first, os.getpid())


def test_a_hung_worker_is_killed_at_the_timeout_and_the_next_request_works(engine):
    speech.speak("one", 8000, engine=engine, max_seconds=10)  # the worker's start is not timed below
    hung = engine.pid
    engine.timeout_s = 0.5
    start = time.monotonic()
    with pytest.raises(SpeechUnavailable, match=r"^text to speech took longer than 0\.5 s and was stopped"):
        speech.speak(speech_hooks.HANG, 8000, engine=engine, max_seconds=10)
    assert time.monotonic() - start < 5
    assert engine.pid is None
    engine.timeout_s = speech.SYNTHESIS_TIMEOUT_S
    assert np.any(speech.speak("two", 8000, engine=engine, max_seconds=10))
    assert engine.pid != hung


def test_domain_errors_come_back_as_themselves_and_the_worker_stays(engine):
    speech.speak("one", 8000, engine=engine, max_seconds=10)
    worker = engine.pid
    with pytest.raises(UnknownVoice, match=r"^voice 'bogus' is not available"):
        speech.speak("hello", 8000, voice="bogus", engine=engine, max_seconds=10)
    with pytest.raises(AudioTooLong):
        speech.speak("This sentence goes on. " * 40, 8000, engine=engine, max_seconds=2)
    assert {"en", "en-us", "de", "fr"} <= set(engine.voices())
    assert engine.pid == worker
