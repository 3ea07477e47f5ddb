"""POST /streams/<id>/inject: validate the request (streams.schemas.InjectBody), then decode its
source once.

Validation names the offending field (422); decoding failures carry the decoder's reason.
Both run on the request thread, never on a pacer.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError
from pydantic_core import ErrorDetails
from werkzeug.datastructures import FileStorage

from errors import ApiError
from mixer import sources, speech
from mixer.errors import AudioError
from streams.fetch import fetch_audio
from streams.schemas import InjectBody, Tone, to_api_error

SOURCES = InjectBody.SOURCES


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
    callback_url: str | None = None


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


def parse_request(fields: dict[str, Any], files: dict[str, FileStorage]) -> InjectRequest:
    """`fields` is the JSON object or the form; `files` the multipart files.

    The fields are parsed by InjectBody; its errors are answered in the order a reader checks a
    request: an unknown name, the number of sources, the source, the mode, what the mode and
    the source allow, then the options.
    """
    for name in files:
        if name != "file":
            raise _invalid(name, f"Unknown file field {name!r}; upload the sound as 'file'.",
                           "unknown_field")
    body: InjectBody | None = None
    errors: list[ErrorDetails] = []
    try:
        body = InjectBody.model_validate({k: v for k, v in fields.items() if k != "file"})
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
    for error in errors:
        if error["type"] == "extra_forbidden" and len(error["loc"]) == 1:
            raise to_api_error(InjectBody, error)
    given = [name for name in SOURCES if name in fields or name in files]
    if not given:
        raise ApiError(422, "missing_source",
                       "Give exactly one source: " + ", ".join(SOURCES) + ".", "source")
    if len(given) > 1:
        raise ApiError(422, "multiple_sources",
                       f"Give exactly one source, not {' and '.join(given)}.", given[1])
    kind = given[0]
    if kind == "file" and "file" not in files:
        raise _invalid("file", "file must be an uploaded file: a multipart/form-data part.")
    # pydantic lists a model's fields in order (the source before mode), unknown names last.
    first = sorted((e for e in errors if e["loc"][0] in (kind, "mode")),
                   key=lambda e: (e["loc"][0] != kind, e["type"] != "extra_forbidden"))
    if first:
        raise to_api_error(InjectBody, first[0])
    if fields.get("mode") == "playback":
        if kind != "audio_url":
            raise _invalid("mode", "mode 'playback' hands an audio_url to Telnyx; it needs audio_url.")
        for name in ("gain_db", "fade_in_ms", "fade_out_ms", "duck"):
            if name in fields:
                raise _invalid(name, f"{name} applies to mode 'mix' only; Telnyx plays the file as is.")
    for name in ("voice", "language"):
        if name in fields and kind != "text":
            raise _invalid(name, f"{name} applies to a text source only.")
    if errors:
        raise to_api_error(InjectBody, errors[0])
    assert body is not None
    value: Any = files["file"] if kind == "file" else getattr(body, kind)
    return InjectRequest(
        kind=kind,
        value=value.model_dump() if isinstance(value, Tone) else value,
        gain_db=body.gain_db,
        loop=body.loop,
        fade_in_ms=body.fade_in_ms,
        fade_out_ms=body.fade_out_ms,
        duck=body.duck,
        label=body.label,
        mode=body.mode,
        voice=body.voice,
        language=body.language,
        callback_url=body.callback_url,
    )


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
