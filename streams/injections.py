"""POST /streams/<id>/inject: validate the request, then decode its source once.

Validation names the offending field (422); decoding failures carry the decoder's reason.
Both run on the request thread, never on a pacer.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from werkzeug.datastructures import FileStorage

from errors import ApiError
from mixer import sources, speech
from mixer.errors import AudioError
from streams.fetch import fetch_audio

SOURCES = ("audio_url", "audio_base64", "clip", "tone", "dtmf", "text", "file")
OPTIONS = ("gain_db", "loop", "fade_in_ms", "fade_out_ms", "duck", "label", "mode", "voice",
           "language")
TONE_FIELDS = ("frequency_hz", "duration_ms", "level_dbfs")
DTMF_CHARS = frozenset("0123456789*#ABCD")
MAX_TEXT_CHARS = 5000
MAX_LABEL_CHARS = 200


@dataclass(frozen=True)
class InjectRequest:
    kind: str
    value: Any  # str, dict (tone) or FileStorage
    gain_db: float = 0.0
    loop: bool = False
    fade_in_ms: int = 0
    fade_out_ms: int = 0
    duck: bool = False
    label: str | None = None
    mode: str = "mix"
    voice: str | None = None
    language: str | None = None


@dataclass(frozen=True)
class Limits:
    sample_rate: int
    max_seconds: float
    max_bytes: int
    media_dir: Path
    url_timeout_s: float
    url_allow_private: bool


def _invalid(field: str, message: str, code: str = "invalid_field") -> ApiError:
    return ApiError(422, code, message, field)


def number(field: str, value: Any, low: float, high: float, *, integer: bool = False) -> float:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _invalid(field, f"{field} must be a number.") from None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _invalid(field, f"{field} must be a number.")
    if integer and value != int(value):
        raise _invalid(field, f"{field} must be a whole number.")
    if not low <= value <= high:
        raise _invalid(field, f"{field} must be between {low:g} and {high:g}.", "out_of_range")
    return value


def _boolean(field: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise _invalid(field, f"{field} must be true or false.")


def _text(field: str, value: Any, max_chars: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _invalid(field, f"{field} must be a non-empty string.")
    if len(value) > max_chars:
        raise _invalid(field, f"{field} is limited to {max_chars} characters.", "out_of_range")
    return value


def parse_request(fields: dict[str, Any], files: dict[str, FileStorage]) -> InjectRequest:
    """`fields` is the JSON object or the form; `files` the multipart files."""
    for name in files:
        if name != "file":
            raise _invalid(name, f"Unknown file field {name!r}; upload the sound as 'file'.",
                           "unknown_field")
    for name in fields:
        if name not in SOURCES and name not in OPTIONS:
            raise _invalid(name, f"Unknown field {name!r}.", "unknown_field")
    given = [name for name in SOURCES if name in fields or name in files]
    if not given:
        raise ApiError(422, "missing_source",
                       "Give exactly one source: " + ", ".join(SOURCES) + ".", "source")
    if len(given) > 1:
        raise ApiError(422, "multiple_sources",
                       f"Give exactly one source, not {' and '.join(given)}.", given[1])
    kind = given[0]
    value: Any = files[kind] if kind == "file" else fields[kind]

    if kind in ("audio_url", "clip"):
        value = _text(kind, value, 1 << 30)
    elif kind == "audio_base64":
        # An empty string is empty audio, answered as an empty upload is (undecodable_audio, by
        # load_samples), not as a malformed field.
        if not isinstance(value, str):
            raise _invalid(kind, "audio_base64 must be a string: the audio file in base64.")
    elif kind == "text":
        value = _text(kind, value, MAX_TEXT_CHARS)
    elif kind == "dtmf":
        value = _text(kind, value, 100).upper()
        bad = sorted(set(value) - DTMF_CHARS)
        if bad:
            raise _invalid("dtmf", f"dtmf digits must be 0-9, *, #, A-D (not {''.join(bad)!r}).")
    elif kind == "tone":
        value = _parse_tone(value)

    mode = fields.get("mode", "mix")
    if mode not in ("mix", "playback"):
        raise _invalid("mode", "mode must be 'mix' or 'playback'.")
    if mode == "playback":
        if kind != "audio_url":
            raise _invalid("mode", "mode 'playback' hands an audio_url to Telnyx; it needs audio_url.")
        for name in ("gain_db", "fade_in_ms", "fade_out_ms", "duck"):
            if name in fields:
                raise _invalid(name, f"{name} applies to mode 'mix' only; Telnyx plays the file as is.")
    for name in ("voice", "language"):
        if name in fields and kind != "text":
            raise _invalid(name, f"{name} applies to a text source only.")

    return InjectRequest(
        kind=kind,
        value=value,
        gain_db=number("gain_db", fields.get("gain_db", 0.0), -60, 12),
        loop=_boolean("loop", fields.get("loop", False)),
        fade_in_ms=int(number("fade_in_ms", fields.get("fade_in_ms", 0), 0, 10000, integer=True)),
        fade_out_ms=int(number("fade_out_ms", fields.get("fade_out_ms", 0), 0, 10000, integer=True)),
        duck=_boolean("duck", fields.get("duck", False)),
        label=_text("label", fields["label"], MAX_LABEL_CHARS) if "label" in fields else None,
        mode=mode,
        voice=_text("voice", fields["voice"], 100) if "voice" in fields else None,
        language=_text("language", fields["language"], 35) if "language" in fields else None,
    )


def _parse_tone(value: Any) -> dict[str, float]:
    if isinstance(value, str):  # multipart forms carry the tone as JSON text
        try:
            value = json.loads(value)
        except ValueError:
            raise _invalid("tone", "tone must be an object.") from None
    if not isinstance(value, dict):
        raise _invalid("tone", "tone must be an object.")
    for name in value:
        if name not in TONE_FIELDS:
            raise _invalid(f"tone.{name}", f"Unknown field 'tone.{name}'.", "unknown_field")
    if "frequency_hz" not in value:
        raise _invalid("tone.frequency_hz", "tone.frequency_hz is required.")
    return {
        "frequency_hz": number("tone.frequency_hz", value["frequency_hz"], 20, 20000),
        "duration_ms": number("tone.duration_ms", value.get("duration_ms", 1000), 1, 3_600_000,
                               integer=True),
        "level_dbfs": number("tone.level_dbfs", value.get("level_dbfs", -10.0), -60, 0),
    }


def describe(req: InjectRequest) -> dict[str, Any]:
    """The `source` object of the Injection view: what was asked for, not the bytes."""
    if req.kind == "audio_url":
        return {"kind": "audio_url", "url": req.value}
    if req.kind == "audio_base64":
        return {"kind": "audio_base64", "bytes": len(req.value) * 3 // 4}
    if req.kind == "file":
        return {"kind": "file", "filename": req.value.filename}
    if req.kind == "tone":
        return {"kind": "tone", **req.value}
    if req.kind == "dtmf":
        return {"kind": "dtmf", "digits": req.value}
    if req.kind == "text":
        return {"kind": "text", "text": req.value[:200], "voice": req.voice, "language": req.language}
    return {"kind": req.kind, "name": req.value}


def load_samples(req: InjectRequest, limits: Limits) -> np.ndarray:
    """Decode the source to float32 mono at the stream rate; ApiError with the reason if not."""
    rate, max_s = limits.sample_rate, limits.max_seconds
    try:
        if req.kind == "audio_url":
            data = fetch_audio(req.value, timeout_s=limits.url_timeout_s, max_bytes=limits.max_bytes,
                               allow_private=limits.url_allow_private)
            return sources.decode_audio(data, rate, max_seconds=max_s)
        if req.kind == "audio_base64":
            try:
                # Whitespace is dropped first: `base64` tools wrap their output in lines.
                data = base64.b64decode("".join(req.value.split()), validate=True)
            except (binascii.Error, ValueError):
                raise _invalid("audio_base64", "audio_base64 is not valid base64.") from None
            return sources.decode_audio(data, rate, max_seconds=max_s)
        if req.kind == "file":
            data = req.value.read(limits.max_bytes + 1)
            if len(data) > limits.max_bytes:
                raise ApiError(413, "payload_too_large",
                               f"file is larger than the limit of {limits.max_bytes} bytes.", "file")
            return sources.decode_audio(data, rate, max_seconds=max_s)
        if req.kind == "clip":
            return sources.load_clip(limits.media_dir, req.value, rate, max_seconds=max_s)
        if req.kind == "tone":
            if req.value["frequency_hz"] >= rate / 2:
                raise ApiError(422, "out_of_range",
                               f"tone.frequency_hz must be below {rate // 2} Hz on a {rate} Hz call.",
                               "tone.frequency_hz")
            if req.value["duration_ms"] > max_s * 1000:
                raise ApiError(422, "audio_too_long",
                               f"tone is longer than the limit of {max_s:g} s.", "tone.duration_ms")
            return sources.tone(req.value["frequency_hz"], int(req.value["duration_ms"]), rate,
                                level_dbfs=req.value["level_dbfs"])
        if req.kind == "dtmf":
            return sources.dtmf(req.value, rate)
        return speech.speak(req.value, rate, voice=req.voice, language=req.language or "en",
                            max_seconds=max_s)
    except AudioError as exc:
        field = "voice" if exc.code == "unknown_voice" else req.kind
        raise ApiError(422, exc.code, str(exc), field) from None
