"""Request-body validation for the Call Control actions the product uses.

Field names, types and enums come from the OpenAPI spec (AnswerRequest, StartStreamingRequest,
StopStreamingRequest, PlayAudioUrlRequest, HangupRequest) and the SDK's params types. Telnyx's
own strictness on unknown fields is undocumented; the simulator rejects them (422) so that a
typo in a field name fails loudly here instead of being silently ignored in production.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

STREAM_TRACKS = ("inbound_track", "outbound_track", "both_tracks")
STREAM_CODECS = ("PCMU", "PCMA", "G722", "OPUS", "AMR-WB", "L16", "default")
BIDIRECTIONAL_CODECS = ("PCMU", "PCMA", "G722", "OPUS", "AMR-WB", "L16")
BIDIRECTIONAL_MODES = ("mp3", "rtp")
SAMPLING_RATES = (8000, 16000, 22050, 24000, 48000)
TARGET_LEGS = ("both", "self", "opposite")
STREAM_AUTH_TOKEN_MAX = 4000


class ValidationFailed(Exception):
    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field
        self.detail = detail


Check = Callable[[str, Any], None]


def _string(max_length: int | None = None) -> Check:
    def check(name: str, value: Any) -> None:
        if not isinstance(value, str):
            raise ValidationFailed(name, f"'{name}' must be a string.")
        if max_length is not None and len(value) > max_length:
            raise ValidationFailed(name, f"'{name}' must be at most {max_length} characters long.")
    return check


def _enum(*allowed: Any) -> Check:
    def check(name: str, value: Any) -> None:
        # bool is an int in Python; keep True out of integer enums.
        if isinstance(value, bool) or value not in allowed:
            raise ValidationFailed(name, f"'{name}' must be one of {', '.join(map(str, allowed))}.")
    return check


def _boolean(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise ValidationFailed(name, f"'{name}' must be a boolean.")


def _integer(minimum: int | None = None, maximum: int | None = None) -> Check:
    def check(name: str, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValidationFailed(name, f"'{name}' must be an integer.")
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            raise ValidationFailed(name, f"'{name}' must be between {minimum} and {maximum}.")
    return check


def _object(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        raise ValidationFailed(name, f"'{name}' must be an object.")


def _name_value_list(name: str, value: Any) -> None:
    if not isinstance(value, list):
        raise ValidationFailed(name, f"'{name}' must be an array of {{name, value}} objects.")
    for i, item in enumerate(value):
        if not isinstance(item, dict) or set(item) - {"name", "value"} or "name" not in item:
            raise ValidationFailed(f"{name}/{i}", f"'{name}[{i}]' must be an object with 'name' and 'value'.")
        for key in ("name", "value"):
            if key in item and not isinstance(item[key], str):
                raise ValidationFailed(f"{name}/{i}/{key}", f"'{name}[{i}].{key}' must be a string.")


def _loop(name: str, value: Any) -> None:
    if value == "infinity":
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 100:
        raise ValidationFailed(name, f"'{name}' must be an integer between 1 and 100 or 'infinity'.")


_COMMON: dict[str, Check] = {"client_state": _string(), "command_id": _string()}

_STREAMING: dict[str, Check] = {
    "stream_url": _string(),
    "stream_track": _enum(*STREAM_TRACKS),
    "stream_codec": _enum(*STREAM_CODECS),
    "stream_bidirectional_mode": _enum(*BIDIRECTIONAL_MODES),
    "stream_bidirectional_codec": _enum(*BIDIRECTIONAL_CODECS),
    "stream_bidirectional_target_legs": _enum(*TARGET_LEGS),
}

SCHEMAS: dict[str, dict[str, Check]] = {
    "answer": {
        **_COMMON, **_STREAMING,
        "send_silence_when_idle": _boolean,
        "billing_group_id": _string(),
        "webhook_url": _string(),
        "webhook_url_method": _enum("POST", "GET"),
        "webhook_urls": _object,
        "webhook_urls_method": _enum("POST", "GET"),
        "webhook_retries_policies": _object,
        "custom_headers": _name_value_list,
        "sip_headers": _name_value_list,
        "preferred_codecs": _enum("G722,PCMU,PCMA,G729,OPUS,VP8,H264"),
        "record": _enum("record-from-answer"),
        "record_channels": _enum("single", "dual"),
        "record_format": _enum("wav", "mp3"),
        "record_max_length": _integer(0, 43200),
        "record_timeout_secs": _integer(0),
        "record_track": _enum("both", "inbound", "outbound"),
        "record_trim": _enum("trim-silence"),
        "record_custom_file_name": _string(40),
        "transcription": _boolean,
        "transcription_config": _object,
        "sound_modifications": _object,
        "assistant": _object,
        "conversation_relay_config": _object,
        "deepfake_detection": _object,
        # Not in AnswerRequest (spec or SDK signature), but the SDK can send them through
        # extra_body and whether Telnyx accepts them there is unconfirmed: accept and honour.
        "stream_auth_token": _string(STREAM_AUTH_TOKEN_MAX),
        "stream_bidirectional_sampling_rate": _enum(*SAMPLING_RATES),
    },
    "streaming_start": {
        **_COMMON, **_STREAMING,
        "stream_bidirectional_sampling_rate": _enum(*SAMPLING_RATES),
        "stream_auth_token": _string(STREAM_AUTH_TOKEN_MAX),
        "custom_parameters": _name_value_list,
        "enable_dialogflow": _boolean,
        "dialogflow_config": _object,
    },
    "streaming_stop": {**_COMMON, "stream_id": _string()},
    "playback_start": {
        **_COMMON,
        "audio_url": _string(),
        "media_name": _string(),
        "playback_content": _string(),
        "audio_type": _enum("mp3", "wav"),
        "loop": _loop,
        "overlay": _boolean,
        "target_legs": _enum("self", "opposite", "both"),
        "stop": _enum("current", "all"),
        "cache_audio": _boolean,
    },
    "playback_stop": {**_COMMON, "overlay": _boolean, "stop": _string()},
    "hangup": {**_COMMON, "custom_headers": _name_value_list, "reason": _string()},
}


def validate(action: str, body: Any) -> dict[str, Any]:
    """Return the body if it is valid for `action`, else raise ValidationFailed naming the field."""
    if not isinstance(body, dict):
        raise ValidationFailed("", "The request body must be a JSON object.")
    schema = SCHEMAS[action]
    for name, value in body.items():
        check = schema.get(name)
        if check is None:
            raise ValidationFailed(name, f"'{name}' is not a valid parameter for {action}.")
        if value is None:
            continue  # explicit null = not given, as the SDK treats omitted optionals
        check(name, value)
    if action == "playback_start":
        sources = [k for k in ("audio_url", "media_name", "playback_content") if body.get(k) is not None]
        if len(sources) != 1:
            raise ValidationFailed("audio_url", "Exactly one of 'audio_url', 'media_name' or 'playback_content' "
                                                "must be provided.")
    return body
