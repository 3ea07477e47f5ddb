"""Sources through POST /inject, end to end: a format we do not decode is named, with the formats
we do, whatever carries it; empty audio gets one answer whatever carries it; a file cut
mid-waveform reaches the caller without a click."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from audio_checks import max_jump
from livecall import connected_call, inject, wait_injection, wav_bytes
from mixer.codecs import ulaw_decode

ACCEPTED = "WAV, FLAC, MP3 or OGG (Vorbis or Opus)"

# The start of an .m4a as iTunes and ffmpeg write it: an MP4 'ftyp' box, then 'moov'.
M4A = (b"\x00\x00\x00\x1cftypM4A \x00\x00\x02\x00M4A isomiso2" + b"\x00\x00\x00\x08free"
       + b"\x00\x00\x01\x00moov" + bytes(248))


def undecodable(response, field: str) -> str:
    """The message of a 422 undecodable_audio naming `field`."""
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "undecodable_audio" and error["field"] == field, error
    return error["message"]


@pytest.fixture
def allowed(make_server_):
    return make_server_(AUDIO_URL_ALLOW_PRIVATE=True)  # audio_url may point at the loopback server


def test_m4a_is_refused_by_every_source_kind_with_the_reason_and_the_formats_we_take(
        telnyx, allowed, media_dir, audio_http):
    call = connected_call(telnyx, allowed)
    url = f"/streams/{call.call_control_id}/inject"
    (media_dir / "renamed.mp3").write_bytes(M4A)
    (media_dir / "hold.m4a").write_bytes(M4A)
    messages = {
        "file": undecodable(allowed.http.post(url, files={"file": ("voice.m4a", M4A, "audio/mp4")}), "file"),
        "audio_base64": undecodable(allowed.http.post(url, json={"audio_base64": base64.b64encode(M4A).decode()}),
                                    "audio_base64"),
        "audio_url": undecodable(allowed.http.post(url, json={"audio_url": audio_http.serve("voice.m4a", M4A)}),
                                 "audio_url"),
        "clip": undecodable(allowed.http.post(url, json={"clip": "renamed"}), "clip"),
        "clip in the library": undecodable(allowed.http.post(url, json={"clip": "hold"}), "clip"),
    }
    sniffed = ("the audio could not be decoded (Format not recognised): it looks like M4A/MP4 (AAC or ALAC), "
               f"which is not supported; send {ACCEPTED} audio.")
    assert messages.pop("clip in the library") == (
        f"clip 'hold' is hold.m4a, a format this server does not decode; convert it to {ACCEPTED} audio "
        "(.wav, .flac, .mp3 or .ogg).")
    assert messages == dict.fromkeys(messages, sniffed)
    assert allowed.http.get(f"/streams/{call.call_control_id}").json()["injections"] == []


def test_undecodable_messages_never_show_a_python_repr(telnyx, server):
    call = connected_call(telnyx, server)
    url = f"/streams/{call.call_control_id}/inject"
    for junk in (b"RIFF\x00\x00\x00\x00WAVEjunk", bytes(1000), b"not audio at all" * 8):
        for message in (undecodable(server.http.post(url, files={"file": ("x.wav", junk)}), "file"),
                        undecodable(server.http.post(url, json={"audio_base64": base64.b64encode(junk).decode()}),
                                    "audio_base64")):
            assert message.startswith("the audio could not be decoded (") and message.endswith(f"{ACCEPTED} audio.")
            assert "<" not in message and "0x" not in message and "BytesIO" not in message


def test_empty_audio_is_one_answer_whatever_carries_it(telnyx, allowed, media_dir, audio_http):
    call = connected_call(telnyx, allowed)
    url = f"/streams/{call.call_control_id}/inject"
    (media_dir / "blank.wav").write_bytes(b"")
    empty = f"the audio is empty (0 bytes); send {ACCEPTED} audio."
    assert undecodable(allowed.http.post(url, files={"file": ("empty.wav", b"", "audio/wav")}), "file") == empty
    assert undecodable(allowed.http.post(url, json={"audio_base64": ""}), "audio_base64") == empty
    assert undecodable(allowed.http.post(url, json={"audio_base64": " \n"}), "audio_base64") == empty
    form_field = {"audio_base64": (None, b"")}  # a multipart part without a file name is a form field
    assert undecodable(allowed.http.post(url, files=form_field), "audio_base64") == empty
    assert undecodable(allowed.http.post(url, json={"audio_url": audio_http.serve("empty.wav", b"")}),
                       "audio_url") == empty
    assert undecodable(allowed.http.post(url, json={"clip": "blank"}), "clip") == empty


def test_base64_wrapped_in_lines_is_accepted(telnyx, server):
    call = connected_call(telnyx, server)
    encoded = base64.encodebytes(wav_bytes((np.ones(800) * 1000).astype(np.int16))).decode()  # 76-char lines
    assert "\n" in encoded
    inj = inject(server, call, {"audio_base64": encoded})
    assert inj["duration_ms"] == 100


def test_a_file_that_begins_and_ends_at_full_scale_reaches_the_caller_without_a_click(telnyx, server):
    call = connected_call(telnyx, server)
    t = np.arange(2400) / 8000
    source = (32767 * np.cos(2 * np.pi * 20 * t)).astype(np.int16)  # starts and ends near its peak
    inj = inject(server, call, {"audio_base64": base64.b64encode(wav_bytes(source)).decode()})
    wait_injection(server, call, inj["id"], "finished")
    arrived = ulaw_decode(b"".join(payload for _, payload in call.received))
    start = int(np.flatnonzero(arrived)[0])
    assert start % 160 == 0 and not arrived[start + len(source):].any()
    heard = np.concatenate([[0], arrived[start:start + len(source)], [0]])  # with the silence around it
    # Without the edge ramps the first and last steps were ~29,000 (the limiter's -1 dBFS).
    assert max_jump(heard[:161]) < 0.11 * 32768
    assert max_jump(heard[-161:]) < 0.11 * 32768
    assert abs(int(heard[1])) < 600 and abs(int(heard[-2])) < 600
