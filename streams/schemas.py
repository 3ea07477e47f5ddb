"""The REST API's request and response schemas, and the OpenAPI document generated from them.

Requests are parsed by these models (extra fields forbidden), and pydantic's errors are mapped
onto the API's own error codes (DESIGN §6): `unknown_field`, `invalid_field`, `out_of_range`,
each naming the field, dotted when nested (`tone.frequency_hz`). The answers are described by
the response models; a test fuzzes the app against the document, so neither can drift.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from flask import Flask
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
)
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue, models_json_schema
from pydantic_core import PydanticCustomError, core_schema

from errors import ApiError
from streams.status import CallStatus, InjectionStatus

# The codes an error of a single field can have; any other pydantic error is `invalid_field`.
FIELD_CODES = frozenset({"invalid_field", "out_of_range", "unknown_field"})
DTMF_CHARS = frozenset("0123456789*#ABCD")
MAX_TEXT_CHARS = 5000
MAX_LABEL_CHARS = 200
SQLITE_MAX_INT = 2**63 - 1


# -- field types: each check raises the API's code, and documents itself in the JSON Schema ------


def _invalid(message: str) -> PydanticCustomError:
    """`message` follows the field's name: "must be a number" reads "gain_db must be a number."."""
    return PydanticCustomError("invalid_field", message)


def _out_of_range(message: str) -> PydanticCustomError:
    return PydanticCustomError("out_of_range", message)


def _number(low: float, high: float, whole: bool) -> Callable[[Any], float | int]:
    def check(value: Any) -> float | int:
        if isinstance(value, str):  # a multipart form sends every option as text
            try:
                value = float(value)
            except ValueError:
                raise _invalid("must be a number") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _invalid("must be a number")
        if isinstance(value, float) and not math.isfinite(value):
            raise _invalid("must be a number")
        if whole and value != int(value):
            raise _invalid("must be a whole number")
        if not low <= value <= high:  # ints compared exactly: 10**400 is out of range, not a crash
            raise _out_of_range(f"must be between {low:g} and {high:g}")
        return int(value) if whole else float(value)

    return check


def _bounds(low: float, high: float) -> Any:
    return Field(json_schema_extra={"minimum": low, "maximum": high})


GainDb = Annotated[float, BeforeValidator(_number(-60, 12, False)), _bounds(-60, 12)]
FadeMs = Annotated[int, BeforeValidator(_number(0, 10000, True)), _bounds(0, 10000)]


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    raise _invalid("must be true or false")


Flag = Annotated[bool, BeforeValidator(_flag)]


def _text(max_chars: int | None) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            raise _invalid("must be a non-empty string")
        if max_chars is not None and len(value) > max_chars:
            raise _out_of_range(f"is limited to {max_chars} characters")
        return value

    return check


def _text_schema(max_chars: int | None = None, **schema: Any) -> Any:
    limits = {"maxLength": max_chars} if max_chars is not None else {}
    return Field(json_schema_extra={"minLength": 1, "pattern": r"\S", **limits, **schema})


Name = Annotated[str | None, BeforeValidator(_text(100)), _text_schema(100)]
Language = Annotated[str | None, BeforeValidator(_text(35)), _text_schema(35)]
Label = Annotated[str | None, BeforeValidator(_text(MAX_LABEL_CHARS)), _text_schema(MAX_LABEL_CHARS)]
Speech = Annotated[str | None, BeforeValidator(_text(MAX_TEXT_CHARS)), _text_schema(MAX_TEXT_CHARS)]
AudioUrl = Annotated[str | None, BeforeValidator(_text(None)), _text_schema(format="uri")]
Clip = Annotated[str | None, BeforeValidator(_text(None)), _text_schema()]


def _dtmf(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.upper()
    bad = sorted(set(value) - DTMF_CHARS)
    if bad:
        raise _invalid(f"digits must be 0-9, *, #, A-D (not {''.join(bad)!r})")
    return value


def _base64_text(value: Any) -> str:
    # An empty string is empty audio, answered as an empty upload is (undecodable_audio), not
    # as a malformed field.
    if not isinstance(value, str):
        raise _invalid("must be a string: the audio file in base64")
    return value


def _object(value: Any) -> Any:
    if isinstance(value, str):  # multipart forms carry the tone as JSON text
        try:
            value = json.loads(value)
        except ValueError:
            raise _invalid("must be an object") from None
    if not isinstance(value, dict):
        raise _invalid("must be an object")
    return value


class Strict(BaseModel):
    """A request part: unknown fields are refused, by name."""

    model_config = ConfigDict(extra="forbid")
    unknown_message: ClassVar[str] = "Unknown field {name!r}."
    missing_message: ClassVar[str] = "{name} is required."


class Tone(Strict):
    frequency_hz: Annotated[float, BeforeValidator(_number(20, 20000, False)), _bounds(20, 20000)] = Field(
        description="Hz; below half the call's sample rate.")
    duration_ms: Annotated[int, BeforeValidator(_number(1, 3_600_000, True)), _bounds(1, 3_600_000)] = 1000
    level_dbfs: Annotated[float, BeforeValidator(_number(-60, 0, False)), _bounds(-60, 0)] = Field(
        -10.0, description="Peak level.")


class InjectBody(Strict):
    """POST /streams/{key}/inject as JSON: exactly one source (or a multipart `file`), options."""

    # Sources, in the order a request is checked. `None` only when absent: an explicit null is
    # a bad value, as it always was.
    audio_url: AudioUrl = Field(None, description="http(s) URL of a WAV/MP3/FLAC/OGG file.")
    audio_base64: Annotated[str | None, BeforeValidator(_base64_text)] = Field(
        None, description="An audio file (WAV/MP3/FLAC/OGG) in base64.")
    clip: Clip = Field(None, description="A file name in MEDIA_DIR.")
    tone: Annotated[Tone | None, BeforeValidator(_object)] = None
    dtmf: Annotated[str | None, BeforeValidator(_text(100)), AfterValidator(_dtmf),
                    _text_schema(100, pattern="^[0-9*#A-Da-d]+$")] = Field(None)
    text: Speech = Field(None, description="Synthesized locally, offline.")
    # Options
    mode: Literal["mix", "playback"] = Field(
        "mix", description="'playback' hands an audio_url to Telnyx's playback_start.")
    gain_db: GainDb = 0.0
    loop: Flag = False
    fade_in_ms: FadeMs = 0
    fade_out_ms: FadeMs = 0
    duck: Flag = Field(False, description="Lower this source while the caller speaks.")
    label: Label = Field(None)
    voice: Name = Field(None, description="For a text source only.")
    language: Language = Field(None, description="For a text source only.")
    callback_url: AudioUrl = Field(None, description="http(s) URL: a signed POST when this injection "
                                   "finishes, stops or fails.")

    model_config = ConfigDict(json_schema_extra={
        "description": "Exactly one source: audio_url, audio_base64, clip, tone, dtmf or text "
                       "(or a multipart file).",
        "oneOf": [{"required": [s]} for s in ("audio_url", "audio_base64", "clip", "tone", "dtmf", "text")]})
    SOURCES: ClassVar[tuple[str, ...]] = ("audio_url", "audio_base64", "clip", "tone", "dtmf", "text",
                                          "file")


def _json_flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _invalid("must be true or false")
    return value


class StreamPatch(Strict):
    """PATCH /streams/{key}: the call's own switches."""

    recording: Annotated[bool, BeforeValidator(_json_flag)] = Field(
        description="true: record the call (from now, or from its media stream if it has none yet); "
                    "false: pause the recording (the paused time is silence in it).")

    unknown_message: ClassVar[str] = "Only recording can change on a call, not {name!r}."
    missing_message: ClassVar[str] = "Send {name}: true or false."


class ConsoleLogin(Strict):
    """POST /console/login: the API token, for the console's session cookie."""

    token: Annotated[str, BeforeValidator(_text(4096)), _text_schema(4096)]

    missing_message: ClassVar[str] = "Send the API token as {name}."


class GainPatch(Strict):
    """PATCH /streams/{key}/injections/{inj_id}: a live gain change, ramped."""

    gain_db: GainDb

    unknown_message: ClassVar[str] = "Only gain_db can change on a playing injection, not {name!r}."
    missing_message: ClassVar[str] = "Send the new {name}."


def _limit(value: Any) -> int:
    # ASCII digits only, and few of them: int() of '²' or of 5000 digits raises.
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value.lstrip("0")) <= 4:
        value = int(value.lstrip("0") or "0")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
        raise _out_of_range("must be a whole number from 1 to 1000")
    return value


def _cursor(value: Any) -> int:
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value.lstrip("0")) <= 19:
        value = int(value.lstrip("0") or "0")
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= SQLITE_MAX_INT:
        raise _invalid("must be a next_cursor value from a previous page")
    return value


def _since(value: Any) -> str:
    """An ISO 8601 time, as the log writes its times: UTC, milliseconds, `Z`."""
    try:
        moment = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        moment = moment.astimezone(UTC)  # OverflowError at the edges of the calendar
    except (ValueError, OverflowError):
        raise _invalid("must be an ISO 8601 UTC time like 2026-01-31T12:00:00Z") from None
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


LIST_STATUSES = ("active", "all", *CallStatus)


def _status(value: Any) -> str:
    if value not in LIST_STATUSES:
        raise _invalid(f"must be one of {', '.join(LIST_STATUSES)}")
    return str(value)


def _only_paging_history(value: Any, info: ValidationInfo) -> Any:
    if info.data.get("status") == "active":
        raise _invalid("pages the call history: use it with status=all or a call status")
    return value


Limit = Annotated[int, BeforeValidator(_limit), Field(json_schema_extra={"minimum": 1, "maximum": 1000})]
Cursor = Annotated[int, BeforeValidator(_cursor), Field(
    json_schema_extra={"minimum": 0, "description": "next_cursor of the previous page"})]


class Query(Strict):
    unknown_message: ClassVar[str] = "Unknown query parameter {name!r}."


class StreamsQuery(Query):
    status: Annotated[str, BeforeValidator(_status)] = Field(
        "active", json_schema_extra={"enum": list(LIST_STATUSES)},
        description="active: the live calls; all (or one call status): pages of every call ever.")
    limit: Annotated[Limit, BeforeValidator(_only_paging_history)] = 100
    cursor: Annotated[Cursor, BeforeValidator(_only_paging_history)] = 0


class StreamLogQuery(Query):
    call_control_id: str | None = None
    event: str | None = Field(None, description="An event name, or a prefix such as 'injection'.")
    since: Annotated[str | None, BeforeValidator(_since), Field(json_schema_extra={"format": "date-time"})] = None
    limit: Limit = 100
    cursor: Cursor = 0


class EventsQuery(Query):
    call_control_id: str | None = None
    event: str | None = Field(None, description="An event name, or a prefix such as 'injection'.")
    cursor: Cursor | None = Field(None, description="Send the events after this id (a next_cursor of "
                                  "/stream-log, or the id of the last event seen); without it, or a "
                                  "Last-Event-ID header, only events from now on.")


def last_event_id(value: str) -> int:
    """The Last-Event-ID header a reconnecting EventSource sends, as a cursor."""
    try:
        return _cursor(value.strip())
    except PydanticCustomError:
        raise ApiError(422, "invalid_field", "Last-Event-ID must be the id of an event.", "Last-Event-ID") from None


M = TypeVar("M", bound=Strict)


def parse(model: type[M], data: Mapping[str, Any]) -> M:
    """`data` as `model`, or the ApiError (422) of its first bad field."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        raise first_error(model, exc) from None


def first_error(model: type[Strict], exc: ValidationError) -> ApiError:
    """The error a client sees first: an unknown field, else the first bad field in model order."""
    errors = exc.errors(include_url=False, include_input=False)
    # pydantic lists unknown fields after the bad ones; a request is checked for them first.
    errors.sort(key=lambda e: (len(e["loc"]), e["type"] != "extra_forbidden"))
    return to_api_error(model, errors[0])


def to_api_error(model: type[Strict], error: Mapping[str, Any]) -> ApiError:
    name = ".".join(str(part) for part in error["loc"])
    kind = error["type"]
    if kind == "extra_forbidden":
        owner = model if len(error["loc"]) == 1 else Strict
        return ApiError(422, "unknown_field", owner.unknown_message.format(name=name), name)
    if kind == "missing":
        owner = model if len(error["loc"]) == 1 else Strict
        return ApiError(422, "invalid_field", owner.missing_message.format(name=name), name)
    if kind in FIELD_CODES:
        return ApiError(422, kind, f"{name} {error['msg']}.", name)
    if kind == "literal_error":
        return ApiError(422, "invalid_field", f"{name} must be {error['ctx']['expected']}.", name)
    return ApiError(422, "invalid_field", f"{name}: {error['msg']}.", name)


# -- answers -----------------------------------------------------------------------------------


class Answer(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ErrorDetail(Answer):
    code: str = Field(description="snake_case, stable: e.g. invalid_field, stream_not_found")
    message: str = Field(description="A human sentence.")
    field: str | None = Field(None, description="The request field at fault, dotted when nested.")


class Error(Answer):
    error: ErrorDetail


class Health(Answer):
    status: Literal["ok", "degraded", "draining"]
    uptime_seconds: float
    active_sessions: int
    version: str
    reason: str | None = Field(None, description="Why the server is degraded or draining.")
    node: str | None = Field(None, description="Scaled mode: this node's id.")
    nodes: list[str] | None = Field(None, description="Scaled mode: the nodes alive (null while Redis is "
                                    "unreachable).")


class UrlSource(Answer):
    kind: Literal["audio_url"]
    url: str


class Base64Source(Answer):
    kind: Literal["audio_base64"]
    bytes: int


class FileSource(Answer):
    kind: Literal["file"]
    filename: str | None


class ToneSource(Answer):
    kind: Literal["tone"]
    frequency_hz: float
    duration_ms: int
    level_dbfs: float


class DtmfSource(Answer):
    kind: Literal["dtmf"]
    digits: str


class TextSource(Answer):
    kind: Literal["text"]
    text: str
    voice: str | None
    language: str | None


class ClipSource(Answer):
    kind: Literal["clip"]
    name: str


Source = Annotated[UrlSource | Base64Source | FileSource | ToneSource | DtmfSource | TextSource | ClipSource,
                   Field(discriminator="kind")]


class Injection(Answer):
    id: str
    call_control_id: str
    stream_id: str | None
    status: InjectionStatus
    created_at: str
    started_at: str | None
    ended_at: str | None
    source: Source
    duration_ms: int | None = Field(description="null while looping")
    gain_db: float
    loop: bool
    fade_in_ms: int
    fade_out_ms: int
    duck: bool
    label: str | None
    mode: Literal["mix", "playback"]
    played_ms: int
    error: str | None
    callback_url: str | None = None


class Frames(Answer):
    sent: int
    received: int


class RecordingInfo(Answer):
    status: Literal["waiting", "recording", "paused", "complete", "failed"] = Field(
        description="waiting: switched on, the media stream has not started yet")
    format: Literal["wav"]
    channels: list[str] = Field(description='["caller", "sent"]: left the caller, right what we sent')
    sample_rate: int | None
    started_at: str | None
    ended_at: str | None
    duration_ms: int = Field(description="Written to the file so far.")
    gaps: int = Field(description="Holes where the disk did not keep up (silence; see recording.gap events).")
    gap_ms: int
    frames_dropped: int
    frames_late: int = Field(description="Caller frames that arrived too late for their place.")
    error: str | None
    node: str | None = Field(None, description="Scaled mode: the node whose disk holds the file.")


class Levels(Answer):
    caller_dbfs: float = Field(description="RMS level of the caller's last 300 ms; -96 for silence or none.")
    sent_dbfs: float = Field(description="RMS level of what the server sent in the last 300 ms; -96 for none.")


class Stream(Answer):
    model_config = ConfigDict(populate_by_name=True)

    call_control_id: str
    stream_id: str | None
    status: CallStatus
    from_: str | None = Field(alias="from")
    to: str | None
    direction: str | None
    codec: Literal["PCMU", "PCMA", "G722", "OPUS", "L16"] = Field(
        description="The call's codec as Telnyx names it (media_format.encoding of the last `start`, "
                    "or STREAM_CODEC before it).")
    sample_rate: Literal[8000, 16000, 22050, 24000, 48000] = Field(
        description="The rate of the call's audio and mixer, Hz: 8000 for PCMU and PCMA, 16000 for G722 "
                    "(whatever nominal rate Telnyx names), 8000 or 16000 for OPUS, any of these for L16.")
    created_at: str
    started_at: str | None
    ended_at: str | None
    end_reason: str | None
    caller_speaking: bool
    frames: Frames
    injections: list[Injection]
    node: str | None = Field(None, description="Scaled mode: the node that plays the call.")
    recording: RecordingInfo | None = Field(None, description="null when the call is not recorded.")
    levels: Levels | None = Field(None, description="Live calls only: the caller's level and ours, now.")


class StreamPage(Answer):
    items: list[Stream]
    next_cursor: str | None = Field(description="Pass as cursor for the next page; null on the last.")


class Cleared(Answer):
    stopped: int = Field(description="How many injections were stopped.")


class Event(Answer):
    id: int
    at: str
    call_control_id: str | None
    event: str
    data: dict[str, Any]


class EventPage(Answer):
    items: list[Event]
    next_cursor: str | None


class LibraryClip(Answer):
    name: str = Field(description="What to send as `clip`.")
    filename: str
    bytes: int
    duration_ms: int | None = Field(description="null when the file's header does not tell it.")


class ClipList(Answer):
    items: list[LibraryClip]


class VoiceList(Answer):
    items: list[str] = Field(description="Names to send as `voice` (language codes; `+f1`..`+f5`, "
                             "`+m1`..`+m7` pick a variant).")


class CallbackKey(Answer):
    public_key: str = Field(description="base64 Ed25519 public key that signs every callback.")
    persistent: bool = Field(description="false: made at start-up, a restart changes it (set "
                             "CALLBACK_SIGNING_KEY).")


class ConsoleAnswer(Answer):
    status: Literal["ok"]


class WebhookAck(Answer):
    status: Literal["ok", "ignored", "duplicate"]


# -- the OpenAPI document --------------------------------------------------------------------------


JSON = "application/json"
MULTIPART = "multipart/form-data"


@dataclass(frozen=True)
class Operation:
    summary: str
    ok: tuple[int, type[BaseModel] | str]  # a model (JSON) or a media type (text)
    errors: tuple[int | str, ...] = ()
    query: type[Query] | None = None
    body: type[Strict] | None = None
    multipart: bool = False
    raw_body: str | None = None  # a body not parsed by a model here: its description
    extra: dict[int, type[BaseModel]] = field(default_factory=dict)


_ERRORS: dict[int | str, str] = {
    400: "Malformed JSON (invalid_json).",
    401: "Missing or wrong credentials (unauthorized; invalid_signature for webhooks).",
    404: "Unknown call, stream, injection or recording (stream_not_found, injection_not_found, "
         "recording_not_found).",
    409: "The call or injection is no longer active (stream_not_active, injection_not_active, "
         "injection_not_mixed).",
    413: "The body or file is larger than MAX_UPLOAD_BYTES (payload_too_large).",
    415: "Neither JSON nor multipart/form-data (unsupported_media_type).",
    422: "A field is unknown, invalid or out of range, or the audio cannot be used; `field` names it.",
    429: "Too many active injections on the call (too_many_injections).",
    500: "An unexpected error; it is logged (internal_error).",
    502: "The audio_url could not be fetched (audio_url_unreachable, audio_url_timeout, audio_url_failed).",
    503: "The event log cannot write: the server is degraded.",
    "401-login": "Not the API token (unauthorized).",
    "429-login": "Too many wrong tokens from this address in the last minute (too_many_requests).",
    "503-speech": "Text to speech is not available on this server (speech_unavailable).",
    "503-feeds": "Every event feed slot is taken (too_many_feeds), or the event log cannot be read "
                 "(database_unavailable).",
}

# Keyed by (Flask rule, method): the document covers exactly the routes the app serves that are
# listed here; tests compare it with app.url_map.
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("/health", "GET"): Operation("Liveness and the event log's health", (200, Health), extra={503: Health}),
    ("/streams", "GET"): Operation("The live calls, or pages of every call ever", (200, StreamPage), (422,),
                                   query=StreamsQuery),
    ("/streams/<key>", "GET"): Operation("One call, live or from the log", (200, Stream), (404,)),
    ("/streams/<key>", "PATCH"): Operation(
        "Switch the call's recording on or off", (200, Stream), (400, 404, 409, 415, 422), body=StreamPatch),
    ("/streams/<key>/recording", "GET"): Operation(
        "The call's recording as a stereo WAV (caller left, what we sent right), so far while it runs",
        (200, "audio/wav"), (404,)),
    ("/streams/<key>/inject", "POST"): Operation(
        "Mix a sound into the call", (201, Injection), (400, 404, 409, 413, 415, 422, 429, 502),
        body=InjectBody, multipart=True),
    ("/streams/<key>/injections/<inj_id>", "GET"): Operation("One injection", (200, Injection), (404,)),
    ("/streams/<key>/injections/<inj_id>", "PATCH"): Operation(
        "Change a playing injection's gain (ramped)", (200, Injection), (400, 404, 409, 415, 422),
        body=GainPatch),
    ("/streams/<key>/injections/<inj_id>", "DELETE"): Operation(
        "Stop an injection with a short fade-out", (200, Injection), (404, 409)),
    ("/streams/<key>/clear", "POST"): Operation("Stop every injection on the call", (200, Cleared), (404, 409)),
    ("/stream-log", "GET"): Operation("The event log, oldest first", (200, EventPage), (422,),
                                      query=StreamLogQuery),
    ("/events", "GET"): Operation(
        "The event log live, as Server-Sent Events (each message's data is one /stream-log item)",
        (200, "text/event-stream"), (422, "503-feeds"), query=EventsQuery),
    ("/clips", "GET"): Operation("The media library: the names a `clip` may take", (200, ClipList)),
    ("/callbacks/public-key", "GET"): Operation("The key callbacks are signed with", (200, CallbackKey)),
    ("/voices", "GET"): Operation("The voices a `text` injection may name", (200, VoiceList), ("503-speech",)),
    ("/metrics", "GET"): Operation("Prometheus metrics", (200, "text/plain")),
    ("/console", "GET"): Operation("The operator console (the sign-in page until signed in)", (200, "text/html")),
    ("/console/console.js", "GET"): Operation("The console's script", (200, "text/javascript")),
    ("/console/console.css", "GET"): Operation("The console's style sheet", (200, "text/css")),
    ("/console/login.js", "GET"): Operation("The sign-in page's script", (200, "text/javascript")),
    ("/console/login", "POST"): Operation(
        "Sign the console in: the API token for a session cookie (HttpOnly, SameSite=Strict)",
        (200, ConsoleAnswer), (400, "401-login", 422, "429-login"), body=ConsoleLogin),
    ("/console/logout", "POST"): Operation("Sign the console out (drop its cookie)", (200, ConsoleAnswer)),
    ("/openapi.json", "GET"): Operation("This document", (200, JSON)),
    ("/webhooks/voice", "POST"): Operation(
        "Telnyx Call Control webhooks, signed (Ed25519)", (200, WebhookAck), (400, 401, 413, 422),
        raw_body="A Telnyx webhook event; checked against the telnyx-signature-ed25519 and "
                 "telnyx-timestamp headers."),
}

_PATH_DOC = {
    "key": "The call_control_id or the Telnyx stream_id.",
    "inj_id": "The injection's id (inj_…).",
}


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _openapi_path(rule: str) -> tuple[str, list[str]]:
    parts, names = [], []
    for part in rule.split("/"):
        if part.startswith("<") and part.endswith(">"):
            name = part[1:-1].split(":")[-1]
            names.append(name)
            part = "{" + name + "}"
        parts.append(part)
    return "/".join(parts), names


def _query_parameters(model: type[Query], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    schema = schemas[model.__name__]
    params = []
    for name, prop in schema["properties"].items():
        prop = {k: v for k, v in prop.items() if k != "title"}
        description = prop.pop("description", None)
        if "anyOf" in prop:  # `X | None`: absent is the None; on the wire it is X
            prop = next(p for p in prop["anyOf"] if p.get("type") != "null") | (
                {"default": prop["default"]} if prop.get("default") is not None else {})
        param: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": prop}
        if description:
            param["description"] = description
        params.append(param)
    return params


def _multipart_schema(schemas: dict[str, Any]) -> dict[str, Any]:
    """The JSON body's fields as form fields, `tone` as JSON text, plus the `file` part."""
    form = json.loads(json.dumps(schemas[InjectBody.__name__]))
    form["title"] = "InjectForm"
    form["properties"]["tone"] = {"type": "string", "contentMediaType": JSON,
                                  "description": "The tone object as JSON text."}
    form["properties"]["file"] = {"type": "string", "contentMediaType": "application/octet-stream",
                                  "description": "The sound file (WAV/MP3/FLAC/OGG)."}
    return form


def _responses(op: Operation, protected: bool) -> dict[str, Any]:
    status, answer = op.ok
    if isinstance(answer, str):
        content = {answer: {"schema": {"type": "object"} if answer == JSON else {"type": "string"}}}
    else:
        content = {JSON: {"schema": _ref(answer)}}
    responses: dict[str, Any] = {str(status): {"description": "Success.", "content": content}}
    for code, model in op.extra.items():
        responses[str(code)] = {"description": _ERRORS[code], "content": {JSON: {"schema": _ref(model)}}}
    codes: set[int | str] = set(op.errors) | {500} | ({401} if protected else set())
    for error in sorted(codes, key=str):
        # "503-feeds": a 503 with its own description
        responses[str(error).split("-")[0]] = {"description": _ERRORS[error],
                                               "content": {JSON: {"schema": _ref(Error)}}}
    return dict(sorted(responses.items()))


class _RequestSchema(GenerateJsonSchema):
    """Request fields are `X | None` only so that absent reads as None: on the wire a null is as
    bad as any other wrong value, so the document says X, with no null default."""

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json_schema = super().default_schema(schema)
        if json_schema.get("default", 0) is None:
            del json_schema["default"]
        return json_schema


REQUESTS: tuple[type[Strict], ...] = (InjectBody, GainPatch, StreamPatch, StreamsQuery, StreamLogQuery, EventsQuery,
                                      ConsoleLogin)
ANSWERS: tuple[type[Answer], ...] = (Error, Health, Stream, StreamPage, Injection, Cleared, EventPage, WebhookAck,
                                     ClipList, VoiceList, ConsoleAnswer, CallbackKey)


def _components() -> dict[str, Any]:
    ref = "#/components/schemas/{model}"
    _, requests = models_json_schema([(m, "validation") for m in REQUESTS], ref_template=ref,
                                     schema_generator=_RequestSchema)
    _, answers = models_json_schema([(m, "serialization") for m in ANSWERS], ref_template=ref)
    return dict(sorted({**requests["$defs"], **answers["$defs"]}.items()))


def openapi(app: Flask, version: str) -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route in OPERATIONS that `app` serves."""
    schemas = _components()
    paths: dict[str, dict[str, Any]] = {}
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            op = OPERATIONS.get((rule.rule, method))
            if op is None:
                continue
            path, names = _openapi_path(rule.rule)
            public = getattr(app.view_functions[rule.endpoint], "public", False)
            doc: dict[str, Any] = {
                "operationId": rule.endpoint.split(".")[-1] + ("" if method == "GET" else f"_{method.lower()}"),
                "summary": op.summary,
                "parameters": [{"name": n, "in": "path", "required": True, "description": _PATH_DOC[n],
                                "schema": {"type": "string", "minLength": 1}} for n in names],
                "responses": _responses(op, protected=not public),
            }
            if op.query is not None:
                doc["parameters"] += _query_parameters(op.query, schemas)
            if public:
                doc["security"] = []
            if op.body is not None:
                content: dict[str, Any] = {JSON: {"schema": _ref(op.body)}}
                if op.multipart:
                    content[MULTIPART] = {"schema": _multipart_schema(schemas),
                                          "encoding": {"file": {"contentType": "application/octet-stream"}}}
                doc["requestBody"] = {"required": True, "content": content}
            elif op.raw_body is not None:
                doc["requestBody"] = {"required": True, "description": op.raw_body,
                                      "content": {JSON: {"schema": {"type": "object"}}}}
            if not doc["parameters"]:
                del doc["parameters"]
            paths.setdefault(path, {})[method.lower()] = doc
    return {
        "openapi": "3.1.0",
        "info": {"title": "Media Stream Custom Audio Mixer", "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer",
                                           "description": "API_TOKEN, when it is set."}},
        },
        "security": [{"bearer": []}],
    }
