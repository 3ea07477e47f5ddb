"""G.711 and L16: bit-exact with the reference over the whole domain, golden values, codec lookup."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from mixer.codecs import (
    AMR_WB_REFUSAL,
    alaw_decode,
    alaw_encode,
    float_to_pcm16,
    get_codec,
    pcm16_to_float,
    ulaw_decode,
    ulaw_encode,
)
from mixer.errors import UnsupportedCodec

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # the oracle (Sun's g711.c); audioop-lts on 3.13+

GOLDEN = json.loads((Path(__file__).parent / "golden" / "g711.json").read_text())
EVERY_INT16 = np.arange(-32768, 32768, dtype=np.int16)
EVERY_CODE = bytes(range(256))


def test_ulaw_encode_matches_reference_for_every_int16():
    assert ulaw_encode(EVERY_INT16) == audioop.lin2ulaw(EVERY_INT16.tobytes(), 2)


def test_alaw_encode_matches_reference_for_every_int16():
    assert alaw_encode(EVERY_INT16) == audioop.lin2alaw(EVERY_INT16.tobytes(), 2)


def test_ulaw_decode_matches_reference_for_every_code():
    assert ulaw_decode(EVERY_CODE).tobytes() == audioop.ulaw2lin(EVERY_CODE, 2)


def test_alaw_decode_matches_reference_for_every_code():
    assert alaw_decode(EVERY_CODE).tobytes() == audioop.alaw2lin(EVERY_CODE, 2)


def test_round_trip_is_idempotent_after_one_pass():
    # Decoding then re-encoding a code gives it back: the quantiser is consistent. The one
    # exception is μ-law's "negative zero" (0x7F), which decodes to 0 and comes back as 0xFF.
    expected = bytearray(EVERY_CODE)
    expected[0x7F] = 0xFF
    assert ulaw_encode(ulaw_decode(EVERY_CODE)) == bytes(expected)
    assert alaw_encode(alaw_decode(EVERY_CODE)) == EVERY_CODE


def test_golden_values():
    pcm = np.array(GOLDEN["pcm"], dtype=np.int16)
    assert list(ulaw_encode(pcm)) == GOLDEN["ulaw"]
    assert list(alaw_encode(pcm)) == GOLDEN["alaw"]
    assert ulaw_decode(EVERY_CODE).tolist() == GOLDEN["ulaw_decoded"]
    assert alaw_decode(EVERY_CODE).tolist() == GOLDEN["alaw_decoded"]


def test_well_known_codes():
    assert ulaw_encode(np.array([0, 32767, -32768], dtype=np.int16)) == bytes([0xFF, 0x80, 0x00])
    assert alaw_encode(np.array([0, 32767, -32768], dtype=np.int16)) == bytes([0xD5, 0xAA, 0x2A])
    assert ulaw_decode(bytes([0xFF, 0x7F])).tolist() == [0, 0]
    assert alaw_decode(bytes([0xD5, 0x55])).tolist() == [8, -8]


def test_encode_rejects_other_dtypes():
    with pytest.raises(TypeError, match="int16"):
        ulaw_encode(np.zeros(4, dtype=np.int32))


def test_codecs_frame_sizes_and_silence():
    pcmu, pcma = get_codec("PCMU", 8000), get_codec("PCMA", 8000)
    frame = np.zeros(160, dtype=np.int16)
    assert pcmu.encode(frame) == bytes([0xFF]) * 160 and pcmu.silence_byte == 0xFF
    assert pcma.encode(frame) == bytes([0xD5]) * 160 and pcma.silence_byte == 0xD5
    assert (pcmu.name, pcma.name, pcmu.sample_rate, pcmu.bytes_per_sample) == ("PCMU", "PCMA", 8000, 1)
    assert get_codec("pcmu", 8000).name == "PCMU"  # media_format spelling varies in case


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 24000, 48000])
def test_l16_is_big_endian_by_default(rate):
    codec = get_codec("L16", rate)
    pcm = np.array([1, -2, 0x1234, -32768, 32767], dtype=np.int16)
    payload = codec.encode(pcm)
    assert payload == np.array(pcm, dtype=">i2").tobytes()
    assert payload[4:6] == bytes([0x12, 0x34])
    decoded = codec.decode(payload)
    assert decoded.dtype == np.int16 and decoded.tolist() == pcm.tolist()
    assert (codec.name, codec.sample_rate, codec.bytes_per_sample) == ("L16", rate, 2)


def test_l16_little_endian_and_odd_payload():
    codec = get_codec("L16", 16000, "little")
    pcm = np.array([0x1234, -1], dtype=np.int16)
    assert codec.encode(pcm) == bytes([0x34, 0x12, 0xFF, 0xFF])
    assert codec.decode(bytes([0x34, 0x12, 0xFF, 0xFF, 0x01])).tolist() == [0x1234, -1]


@pytest.mark.parametrize(("encoding", "rate", "order", "message"), [
    ("AMR-WB", 16000, "big", AMR_WB_REFUSAL),
    ("G729", 8000, "big", "codec 'G729' is not supported; use PCMU, PCMA, G722, OPUS or L16."),
    ("G722", 24000, "big", "G722 is sent at a nominal 8000 or 16000 Hz, not 24000 Hz."),
    ("OPUS", 48000, "big", "OPUS is supported at 8000 or 16000 Hz, not 48000 Hz."),
    ("PCMU", 16000, "big", "PCMU runs at 8000 Hz only, not 16000 Hz; choose a sample rate of 8000, "
                           "or G722, OPUS or L16 for wideband."),
    ("PCMA", 48000, "big", "PCMA runs at 8000 Hz only, not 48000 Hz; choose a sample rate of 8000, "
                           "or G722, OPUS or L16 for wideband."),
    ("L16", 32000, "big", "L16 is supported at 8000, 16000, 22050, 24000 or 48000 Hz, not 32000 Hz."),
    ("L16", 16000, "middle", "L16 byte order must be 'big' or 'little', not 'middle'."),
])
def test_unsupported_codecs(encoding, rate, order, message):
    with pytest.raises(UnsupportedCodec) as info:
        get_codec(encoding, rate, order)
    assert str(info.value) == message
    assert info.value.code == "unsupported_codec"


def test_one_codec_instance_per_format_however_it_is_spelled():
    # The media clock encodes calls together when they share a codec object.
    assert get_codec("PCMU", 8000) is get_codec(" pcmu ", 8000, "little") is get_codec("Pcmu", 8000, "big")
    assert get_codec("L16", 16000) is get_codec("l16", 16000, "big")
    assert get_codec("L16", 16000, "little") is not get_codec("L16", 16000, "big")
    assert get_codec("PCMA", 8000) is not get_codec("PCMU", 8000)


@pytest.mark.parametrize(("encoding", "rate"), [("G722", 8000), ("G722", 16000), ("OPUS", 8000), ("OPUS", 16000)])
def test_stateful_codecs_are_new_for_every_stream_and_direction(encoding, rate):
    # Each call direction keeps its own ADPCM / OPUS state: never shared, never batched.
    one, two = get_codec(encoding, rate), get_codec(encoding.lower(), rate)
    assert one is not two and one.stateful and two.stateful
    assert not get_codec("PCMU", 8000).stateful and not get_codec("L16", 48000).stateful
    assert one.name == encoding and one.bytes_per_sample == 0
    # G.722's audio is 16 kHz at either nominal rate (RFC 3551 4.5.2); OPUS runs at the rate asked.
    assert one.sample_rate == (16000 if encoding == "G722" else rate)


def test_float_to_pcm16_rounds_half_to_even_and_clips():
    x = np.array([0.5 / 32768, 1.5 / 32768, -0.5 / 32768, 1.0, -1.0, 2.0, -2.0, 32767 / 32768],
                 dtype=np.float32)
    assert float_to_pcm16(x).tolist() == [0, 2, 0, 32767, -32768, 32767, -32768, 32767]
    assert float_to_pcm16(x).dtype == np.int16


def test_pcm16_float_round_trip_is_exact():
    back = float_to_pcm16(pcm16_to_float(EVERY_INT16))
    assert np.array_equal(back, EVERY_INT16)
    assert pcm16_to_float(EVERY_INT16).dtype == np.float32
