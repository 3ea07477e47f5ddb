"""streams/protocol.py against the exact frames of the Telnyx media streaming guide."""

import base64
import json

import numpy as np
import pytest

from streams import protocol

START = {
    "event": "start",
    "sequence_number": "1",
    "stream_id": "32DE0DEA-53CB-4B21-89A4-9E1819C043BC",
    "start": {
        "user_id": "3E6F995F-85F7-4705-9741-53B116D28237",
        "call_control_id": "v2:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ",
        "call_session_id": "ff55a038-6f5d-11ef-9692-02420aeffb1f",
        "from": "+13122010094",
        "to": "+13122123456",
        "tags": ["TAG1", "TAG2"],
        "client_state": "aGF2ZSBhIG5pY2UgZGF5ID1d",
        "custom_parameters": {"customer_id": "customer_123"},
        "media_format": {"encoding": "PCMU", "sample_rate": 8000, "channels": 1},
    },
}


def test_start_frame_from_the_guide():
    frame = protocol.parse_frame(json.dumps(START))
    assert frame == protocol.Start(
        stream_id="32DE0DEA-53CB-4B21-89A4-9E1819C043BC",
        call_control_id="v2:T02llQxIyaRkhfRKxgAP8nY511EhFLizdvdUKJiSw8d6A9BborherQ",
        media_format=protocol.MediaFormat("PCMU", 8000, 1),
        call_session_id="ff55a038-6f5d-11ef-9692-02420aeffb1f",
        from_number="+13122010094",
        to_number="+13122123456",
        client_state="aGF2ZSBhIG5pY2UgZGF5ID1d",
        custom_parameters={"customer_id": "customer_123"},
    )


def test_media_frame_decodes_payload_and_string_fields():
    audio = bytes(range(160))
    text = json.dumps({"event": "media", "sequence_number": "4",
                       "media": {"track": "inbound", "chunk": "2", "timestamp": "5",
                                 "payload": base64.b64encode(audio).decode()},
                       "stream_id": "s1"})
    frame = protocol.parse_frame(text)
    assert frame == protocol.Media(payload=audio, track="inbound", chunk=2, stream_id="s1")


def _general(text):
    """What the JSON path makes of `text`: the frame, or the ProtocolError's message."""
    try:
        return protocol._parse_media(json.loads(text))
    except protocol.ProtocolError as exc:
        return str(exc)
    except ValueError as exc:
        return f"not JSON: {exc}"


def _either(text):
    try:
        return protocol.parse_frame(text)
    except protocol.ProtocolError as exc:
        return str(exc)


PAYLOAD = base64.b64encode(bytes(range(160))).decode()
EXACT = ('{"event":"media","sequence_number":"4","media":{"track":"inbound","chunk":"2","timestamp":"5",'
         '"payload":"%s"},"stream_id":"%s"}')


@pytest.mark.parametrize("text", [
    EXACT % (PAYLOAD, "32DE0DEA-53CB-4B21-89A4-9E1819C043BC"),  # Telnyx's own spelling: the fast path
    EXACT % ("", "s1"),
    EXACT % (PAYLOAD, r"\u00e9t\u00e9"),                       # escapes: the JSON path
    EXACT % (PAYLOAD, "été"),
    EXACT % (PAYLOAD, r"a\"b"),
    EXACT % ("@@@", "s1"),                                      # the fast path's shape, bad base64
    EXACT % ("/w=", "s1"),
    EXACT.replace('"inbound"', '"outbound_track"') % (PAYLOAD, "s1"),
    EXACT.replace('"2"', '"' + "9" * 18 + '"') % (PAYLOAD, "s1"),  # the longest chunk number read
    EXACT.replace('"2"', '"' + "9" * 19 + '"') % (PAYLOAD, "s1"),
    EXACT % (PAYLOAD, "a\x01b"),                                # a control character: not JSON
    EXACT % (PAYLOAD, r"\ud800"),                               # a lone surrogate, escaped
    EXACT.replace('"2"', '"٣"') % (PAYLOAD, "s1"),                # a digit, but not an ASCII one
    EXACT.replace(",", ", ") % (PAYLOAD, "s1"),
    EXACT.replace('"stream_id":"%s"}', '"stream_id":"%s","stream_id":"other"}') % (PAYLOAD, "s1"),
])
def test_media_frames_parse_alike_on_either_path(text):
    assert _either(text) == _general(text)


@pytest.mark.parametrize("chunk", ["²", "٣", "9" * 5000])
def test_unreadable_chunk_numbers_are_dropped_not_fatal(chunk):
    text = json.dumps({"event": "media", "media": {"chunk": chunk, "payload": "/w=="}})
    assert protocol.parse_frame(text) == protocol.Media(b"\xff", "inbound", None, None)


@pytest.mark.parametrize("size", [*range(0, 8), 160, 320, 640])
@pytest.mark.parametrize("count", [0, 1, 7])
def test_media_messages_are_media_frames_built_together(size, count):
    frames = np.random.default_rng(size).integers(0, 256, (count, size), dtype=np.uint8)
    assert protocol.media_messages(frames) == [protocol.media_frame(row.tobytes()).encode() for row in frames]


def test_track_suffix_is_tolerated():
    text = json.dumps({"event": "media", "media": {"track": "inbound_track", "payload": "/w=="}})
    frame = protocol.parse_frame(text)
    assert isinstance(frame, protocol.Media) and frame.track == "inbound"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        ('{"event": "hello"}', "unknown event 'hello'"),
        ('{"sequence_number": "1"}', "unknown event None"),
        ('{"event": "media"}', "'media' must be an object"),
        ('{"event": "media", "media": {"payload": 5}}', "must be a base64 string"),
        ('{"event": "media", "media": {"payload": "@@@"}}', "not valid base64"),
        ('{"event": "start", "stream_id": "s", "start": {"call_control_id": "c"}}', "media_format"),
        ('{"event": "start", "start": {"call_control_id": "c", "media_format": '
         '{"encoding": "PCMU", "sample_rate": 8000}}}', "'stream_id' must be a non-empty string"),
        ('{"event": "dtmf", "dtmf": {"digit": "12"}}', "dtmf.digit"),
        ('{"event": "mark", "mark": {}}', "'name' must be a non-empty string"),
        ("[" * 100000, "not JSON"),
    ],
)
def test_malformed_frames_say_why(text, reason):
    with pytest.raises(protocol.ProtocolError, match=None) as info:
        protocol.parse_frame(text)
    assert reason in str(info.value)


def test_binary_frames_are_rejected():
    with pytest.raises(protocol.ProtocolError, match="binary frame"):
        protocol.parse_frame(b"\x00\x01")


def test_other_frames_from_the_guide():
    stop = {"event": "stop", "sequence_number": "5",
            "stop": {"user_id": "u", "call_control_id": "v2:abc"}, "stream_id": "s"}
    assert protocol.parse_frame(json.dumps(stop)) == protocol.Stop("v2:abc", "s")
    mark = {"event": "mark", "stream_id": "s", "sequence_number": "5", "mark": {"name": "inj_1"}}
    assert protocol.parse_frame(json.dumps(mark)) == protocol.Mark("inj_1", "s")
    dtmf = {"event": "dtmf", "stream_id": "s", "occurred_at": "2025-06-05T08:54:19.698408Z",
            "sequence_number": "5", "dtmf": {"digit": "1"}}
    assert protocol.parse_frame(json.dumps(dtmf)) == protocol.Dtmf(
        "1", "2025-06-05T08:54:19.698408Z", "s")
    error = {"event": "error", "payload": {"code": 100002, "title": "unknown_error",
                                           "detail": "An unknown error occurred on the stream"},
             "stream_id": "uuid"}
    assert protocol.parse_frame(json.dumps(error)) == protocol.Error(
        100002, "unknown_error", "An unknown error occurred on the stream", "uuid")
    connected = {"event": "connected", "version": "1.0.0"}
    assert protocol.parse_frame(json.dumps(connected)) == protocol.Connected("1.0.0", None)


def test_outbound_frames_are_exactly_the_documented_shapes():
    payload = bytes([0xFF] * 160)
    assert json.loads(protocol.media_frame(payload)) == {
        "event": "media", "media": {"payload": base64.b64encode(payload).decode()}}
    assert json.loads(protocol.mark_frame("inj_1")) == {"event": "mark", "mark": {"name": "inj_1"}}
    assert json.loads(protocol.clear_frame()) == {"event": "clear"}


def test_telnyx_spelling_takes_the_fast_path():
    # The parity test above is only worth something if both paths really run.
    assert protocol._EXACT_MEDIA.fullmatch(EXACT % (PAYLOAD, "s1")) is not None
    assert protocol._EXACT_MEDIA.fullmatch(EXACT.replace(",", ", ") % (PAYLOAD, "s1")) is None
