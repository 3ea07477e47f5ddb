"""Domain errors: stable codes for the API, human sentences for str()."""

from __future__ import annotations

import pytest

from mixer import errors


@pytest.mark.parametrize(("cls", "code"), [
    (errors.UndecodableAudio, "undecodable_audio"),
    (errors.EmptyAudio, "undecodable_audio"),
    (errors.AudioTooLong, "audio_too_long"),
    (errors.UnknownClip, "unknown_clip"),
    (errors.UnknownVoice, "unknown_voice"),
    (errors.SpeechUnavailable, "speech_unavailable"),
    (errors.UnsupportedCodec, "unsupported_codec"),
])
def test_codes_and_messages(cls, code):
    exc = cls("the reason, and what to do.")
    assert isinstance(exc, errors.AudioError)
    assert exc.code == code
    assert str(exc) == exc.message == "the reason, and what to do."


def test_empty_is_a_kind_of_undecodable():
    assert issubclass(errors.EmptyAudio, errors.UndecodableAudio)
