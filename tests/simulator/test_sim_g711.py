"""The simulator's own G.711 tables agree with audioop over the whole domain."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from simulator import g711

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop

ALL_PCM = np.arange(-32768, 32768, dtype=np.int16)
ALL_BYTES = bytes(range(256))


@pytest.mark.parametrize(("encoding", "lin2", "to_lin"), [
    ("PCMU", audioop.lin2ulaw, audioop.ulaw2lin),
    ("PCMA", audioop.lin2alaw, audioop.alaw2lin),
])
def test_matches_audioop(encoding, lin2, to_lin):
    assert g711.encode(ALL_PCM, encoding) == lin2(ALL_PCM.tobytes(), 2)
    assert g711.decode(ALL_BYTES, encoding).tobytes() == to_lin(ALL_BYTES, 2)


def test_silence_bytes_and_l16_byte_order():
    assert g711.encode(np.zeros(2, np.int16), "PCMU") == b"\xff\xff"
    assert g711.encode(np.zeros(2, np.int16), "PCMA") == b"\xd5\xd5"
    assert g711.encode(np.array([1, -2], np.int16), "L16") == b"\x00\x01\xff\xfe"
    assert g711.encode(np.array([1], np.int16), "L16", l16_byteorder="little") == b"\x01\x00"
    assert g711.decode(b"\x00\x01\xff\xfe", "L16").tolist() == [1, -2]
