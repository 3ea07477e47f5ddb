"""Telnyx media-streaming WebSocket frames: the only module that knows their JSON field names.

Inbound frames (Telnyx -> us) parse into frozen dataclasses (media, 50 a second per call, into
a NamedTuple, which builds several times faster); anything malformed raises
ProtocolError with a precise reason. Outbound frames (us -> Telnyx) are built here too.
Shapes follow the Telnyx media streaming guide: top-level `stream_id`, string
`sequence_number`/`chunk`/`timestamp`, `start.media_format`, error body under `payload`.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

AUTH_TOKEN_HEADER = "x-telnyx-streaming-auth-token"


class ProtocolError(ValueError):
    """A frame that is not valid Telnyx media-streaming JSON; the message says why."""


@dataclass(frozen=True)
class Connected:
    version: str
    auth_token: str | None


@dataclass(frozen=True)
class MediaFormat:
    encoding: str
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class Start:
    stream_id: str
    call_control_id: str
    media_format: MediaFormat
    call_session_id: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    client_state: str | None = None
    custom_parameters: dict[str, Any] = field(default_factory=dict)


class Media(NamedTuple):
    payload: bytes
    track: str  # "inbound" or "outbound"
    chunk: int | None
    stream_id: str | None


@dataclass(frozen=True)
class Dtmf:
    digit: str
    occurred_at: str | None
    stream_id: str | None


@dataclass(frozen=True)
class Mark:
    name: str
    stream_id: str | None


@dataclass(frozen=True)
class Error:
    code: int | None
    title: str
    detail: str
    stream_id: str | None


@dataclass(frozen=True)
class Stop:
    call_control_id: str | None
    stream_id: str | None


Frame = Connected | Start | Media | Dtmf | Mark | Error | Stop

DTMF_DIGITS = frozenset("0123456789*#ABCDabcd")
MAX_CHUNK_DIGITS = 18  # longer "chunk" strings are not read (int() refuses over 4300 digits)


# A media frame exactly as Telnyx writes it (the example in its media streaming guide), 50 a
# second per call. A full match is that one JSON object and nothing else: no whitespace, escapes
# or repeated keys, every string free of the characters JSON would reject, so json.loads would
# read the same fields. It skips building two dicts per frame; any other spelling takes the
# general path below.
_EXACT_MEDIA = re.compile(
    r'\{"event":"media","sequence_number":"\d+","media":\{"track":"(inbound|outbound)(?:_track)?",'
    r'"chunk":"(\d{1,' + str(MAX_CHUNK_DIGITS) + r'})","timestamp":"\d+","payload":"([A-Za-z0-9+/=]*)"\},'
    r'"stream_id":"([^"\\\x00-\x1f]*)"\}', re.ASCII)


def parse_frame(text: str | bytes) -> Frame:
    """Parse one WebSocket message from Telnyx."""
    if isinstance(text, bytes):
        raise ProtocolError("binary frame: Telnyx sends JSON text frames only")
    exact = _EXACT_MEDIA.fullmatch(text)
    if exact is not None:
        track, chunk, payload, stream_id = exact.groups()
        return Media(_decode_payload(payload), track, int(chunk), stream_id)
    try:
        msg = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    if not isinstance(msg, dict):
        raise ProtocolError("frame is not a JSON object")
    event = msg.get("event")
    parser = _PARSERS.get(event) if isinstance(event, str) else None
    if parser is None:
        raise ProtocolError(f"unknown event {event!r}")
    return parser(msg)


def _obj(msg: dict[str, Any], key: str) -> dict[str, Any]:
    value = msg.get(key)
    if not isinstance(value, dict):
        raise ProtocolError(f"{msg.get('event')}: '{key}' must be an object")
    return value


def _str(obj: dict[str, Any], key: str, where: str, *, required: bool = True) -> str | None:
    value = obj.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise ProtocolError(f"{where}: '{key}' must be a non-empty string")
    return value


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    value = obj.get(key)
    return value if isinstance(value, str) else None


def _parse_connected(msg: dict[str, Any]) -> Connected:
    version = msg.get("version")
    return Connected(version=str(version) if version is not None else "",
                     auth_token=_opt_str(msg, AUTH_TOKEN_HEADER))


def _parse_start(msg: dict[str, Any]) -> Start:
    start = _obj(msg, "start")
    fmt = start.get("media_format")
    if not isinstance(fmt, dict):
        raise ProtocolError("start: 'start.media_format' must be an object")
    encoding = fmt.get("encoding")
    rate = fmt.get("sample_rate")
    channels = fmt.get("channels", 1)
    if not isinstance(encoding, str) or not encoding:
        raise ProtocolError("start: 'media_format.encoding' must be a string")
    if isinstance(rate, str) and rate.isdigit():
        rate = int(rate)
    if not isinstance(rate, int) or isinstance(rate, bool) or rate <= 0:
        raise ProtocolError("start: 'media_format.sample_rate' must be a positive number")
    if not isinstance(channels, int) or isinstance(channels, bool) or channels <= 0:
        raise ProtocolError("start: 'media_format.channels' must be a positive number")
    params = start.get("custom_parameters")
    return Start(
        stream_id=_str(msg, "stream_id", "start") or "",
        call_control_id=_str(start, "call_control_id", "start") or "",
        media_format=MediaFormat(encoding.upper(), rate, channels),
        call_session_id=_opt_str(start, "call_session_id"),
        from_number=_opt_str(start, "from"),
        to_number=_opt_str(start, "to"),
        client_state=_opt_str(start, "client_state"),
        custom_parameters=params if isinstance(params, dict) else {},
    )


def _parse_media(msg: dict[str, Any]) -> Media:
    media = _obj(msg, "media")
    payload = media.get("payload")
    if not isinstance(payload, str):
        raise ProtocolError("media: 'media.payload' must be a base64 string")
    audio = _decode_payload(payload)
    track = media.get("track", "inbound")
    if not isinstance(track, str):
        raise ProtocolError("media: 'media.track' must be a string")
    chunk = media.get("chunk")
    # A chunk number we cannot read is dropped, not an error: nothing here depends on it.
    number = int(chunk) if isinstance(chunk, str) and chunk.isascii() and chunk.isdigit() \
        and len(chunk) <= MAX_CHUNK_DIGITS else None
    return Media(audio, track.removesuffix("_track"), number, _opt_str(msg, "stream_id"))


def _decode_payload(payload: str) -> bytes:
    try:
        return binascii.a2b_base64(payload, strict_mode=True)  # base64.b64decode(validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("media: 'media.payload' is not valid base64") from None


def _parse_dtmf(msg: dict[str, Any]) -> Dtmf:
    digit = _obj(msg, "dtmf").get("digit")
    if not isinstance(digit, str) or len(digit) != 1 or digit not in DTMF_DIGITS:
        raise ProtocolError(f"dtmf: 'dtmf.digit' must be one of 0-9 * # A-D (got {digit!r})")
    return Dtmf(digit=digit.upper(), occurred_at=_opt_str(msg, "occurred_at"),
                stream_id=_opt_str(msg, "stream_id"))


def _parse_mark(msg: dict[str, Any]) -> Mark:
    return Mark(name=_str(_obj(msg, "mark"), "name", "mark") or "", stream_id=_opt_str(msg, "stream_id"))


def _parse_error(msg: dict[str, Any]) -> Error:
    body = msg.get("payload")
    if not isinstance(body, dict):
        body = {}
    code = body.get("code")
    return Error(
        code=code if isinstance(code, int) and not isinstance(code, bool) else None,
        title=str(body.get("title", "")),
        detail=str(body.get("detail", "")),
        stream_id=_opt_str(msg, "stream_id"),
    )


def _parse_stop(msg: dict[str, Any]) -> Stop:
    stop = msg.get("stop")
    ccid = _opt_str(stop, "call_control_id") if isinstance(stop, dict) else None
    return Stop(call_control_id=ccid, stream_id=_opt_str(msg, "stream_id"))


_PARSERS: dict[str, Callable[[dict[str, Any]], Frame]] = {
    "connected": _parse_connected,
    "start": _parse_start,
    "media": _parse_media,
    "dtmf": _parse_dtmf,
    "mark": _parse_mark,
    "error": _parse_error,
    "stop": _parse_stop,
}


# -- outbound frames (bidirectional RTP mode) -------------------------------------------------

_MEDIA_PREFIX = '{"event":"media","media":{"payload":"'
_MEDIA_SUFFIX = '"}}'


def media_frame(payload: bytes) -> str:
    """Our audio for the caller: raw codec bytes, base64, no RTP header, no stream_id needed."""
    # Built by concatenation: base64 needs no JSON escaping and this runs 50 times a second per call.
    return _MEDIA_PREFIX + base64.b64encode(payload).decode("ascii") + _MEDIA_SUFFIX


_MEDIA_HEAD = np.frombuffer(_MEDIA_PREFIX.encode(), dtype=np.uint8)
_MEDIA_TAIL = np.frombuffer(_MEDIA_SUFFIX.encode(), dtype=np.uint8)


def media_messages(frames: np.ndarray) -> list[bytes]:
    """media_frame() of every row of `frames` (uint8, one encoded frame per row), UTF-8 encoded.

    The media clock sends hundreds of these per tick; built together they cost one base64 pass
    and a few numpy operations instead of a base64 call and three string joins per call. Rows
    padded with zero bytes to a whole number of base64 groups encode in one b2a_base64, cut
    every 4/3 row; a zero byte of padding encodes as what base64 writes before its `=`, so
    overwriting one character per padding byte with `=` gives each row's own base64.
    """
    count, size = frames.shape
    groups = -(-size // 3)
    padded = np.zeros((count, 3 * groups), dtype=np.uint8)
    padded[:, :size] = frames
    start, body = len(_MEDIA_HEAD), 4 * groups
    width = start + body + len(_MEDIA_TAIL)
    out = np.empty((count, width), dtype=np.uint8)
    out[:, :start] = _MEDIA_HEAD
    out[:, start + body:] = _MEDIA_TAIL
    if count and size:
        text = binascii.b2a_base64(padded.tobytes(), newline=False)
        out[:, start:start + body] = np.frombuffer(text, dtype=np.uint8).reshape(count, body)
        out[:, start + body - (3 * groups - size):start + body] = ord("=")
    data = out.tobytes()
    return [data[i:i + width] for i in range(0, len(data), width)]


def mark_frame(name: str) -> str:
    return json.dumps({"event": "mark", "mark": {"name": name}}, separators=(",", ":"))


def clear_frame() -> str:
    return '{"event":"clear"}'
