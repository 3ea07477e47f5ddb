"""Domain errors of the audio library.

Each carries a stable snake_case `code` (what an API client matches on) and a message that
tells a user what went wrong and what to do about it (what `str(error)` returns).
"""

from __future__ import annotations


class AudioError(Exception):
    """A source could not become audio, or a stream asked for something we cannot do."""

    code = "audio_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UndecodableAudio(AudioError):
    code = "undecodable_audio"


class EmptyAudio(UndecodableAudio):
    """Decoded fine but holds no samples; same code as undecodable (inherited), the message says empty."""


class AudioTooLong(AudioError):
    code = "audio_too_long"


class UnknownClip(AudioError):
    code = "unknown_clip"


class UnknownVoice(AudioError):
    code = "unknown_voice"


class SpeechUnavailable(AudioError):
    code = "speech_unavailable"


class UnsupportedCodec(AudioError):
    code = "unsupported_codec"


class CorruptPayload(AudioError):
    """A media payload from the wire that its codec cannot decode (garbage, truncated, wrong codec)."""

    code = "corrupt_payload"
